"""The campaign and job state machines (spec §3): the allowed transitions, in one place.
Code that changes a state asks here first; a forbidden transition is a bug, not data."""

from __future__ import annotations

from cigri.errors import StateError

# ---------------------------------------------------------------- campaigns
CAMPAIGN_STATES = ("in_treatment", "paused", "terminated", "cancelled")

CAMPAIGN_TRANSITIONS: dict[str, frozenset[str]] = {
    "in_treatment": frozenset({"paused", "terminated", "cancelled"}),
    "paused": frozenset({"in_treatment", "cancelled"}),
    "terminated": frozenset({"in_treatment", "cancelled"}),  # tasks added / cancel
    "cancelled": frozenset(),
}

# ---------------------------------------------------------------- jobs
JOB_STATES = ("to_launch", "launching", "submitted", "running", "remote_waiting",
              "batch_waiting", "terminated", "event")

#: states in which a job occupies (or may occupy) the cluster: "active" (spec §3.1),
#: plus batch_waiting which CiGri3 forgot (spec §15.2 #1).
ACTIVE_JOB_STATES = ("to_launch", "submitted", "running", "remote_waiting", "batch_waiting")
#: states the runner polls on the cluster.
POLLED_JOB_STATES = ("submitted", "remote_waiting", "running", "batch_waiting")
FINAL_JOB_STATES = ("terminated", "event")

JOB_TRANSITIONS: dict[str, frozenset[str]] = {
    "to_launch": frozenset({"launching", "submitted", "event"}),
    "launching": frozenset({"submitted", "event"}),
    "submitted": frozenset({"remote_waiting", "running", "batch_waiting", "terminated", "event"}),
    "remote_waiting": frozenset({"remote_waiting", "running", "batch_waiting", "terminated", "event"}),
    "running": frozenset({"running", "batch_waiting", "terminated", "event", "remote_waiting"}),
    "batch_waiting": frozenset({"batch_waiting", "running", "terminated", "event"}),
    "terminated": frozenset({"event"}),  # exit status > 0 analysed after the terminated update
    "event": frozenset(),
}

# OAR job states -> CiGri job state while the job lives (spec §7.2).
OAR_RUNNING_STATES = ("Running", "Finishing", "Launching")


def check_campaign_transition(old: str, new: str) -> None:
    if new != old and new not in CAMPAIGN_TRANSITIONS.get(old, frozenset()):
        raise StateError(f"Can't change a {old} campaign to {new}")


def check_job_transition(old: str, new: str) -> None:
    if new != old and new not in JOB_TRANSITIONS.get(old, frozenset()):
        raise StateError(f"Job state {old} -> {new} is not allowed")
