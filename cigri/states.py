"""The campaign and job state machines: the states, their named groups and the allowed
transitions, defined once. The values are the words CiGri3 stores in its database.

Only the data layer writes a job state (`cigri.db.jobs.transition`), and it refuses a
transition this table forbids: a forbidden transition is a bug, never data."""

from __future__ import annotations

from enum import StrEnum

from cigri.errors import StateError

# ---------------------------------------------------------------- campaigns


class CampaignState(StrEnum):
    """A campaign's state (`campaigns.state`)."""

    IN_TREATMENT = "in_treatment"
    PAUSED = "paused"
    TERMINATED = "terminated"
    CANCELLED = "cancelled"


#: every campaign state, in CiGri3's enum order
CAMPAIGN_STATES: tuple[CampaignState, ...] = tuple(CampaignState)
#: campaigns whose tasks may still run (listed by default, polled, scheduled when in treatment)
LIVE_CAMPAIGN_STATES = (CampaignState.IN_TREATMENT, CampaignState.PAUSED)
#: campaigns that are over (their rows may be purged)
ENDED_CAMPAIGN_STATES = (CampaignState.TERMINATED, CampaignState.CANCELLED)

CAMPAIGN_TRANSITIONS: dict[CampaignState, frozenset[CampaignState]] = {
    CampaignState.IN_TREATMENT: frozenset({CampaignState.PAUSED, CampaignState.TERMINATED,
                                           CampaignState.CANCELLED}),
    CampaignState.PAUSED: frozenset({CampaignState.IN_TREATMENT, CampaignState.CANCELLED}),
    # tasks added to a finished campaign bring it back; it can still be cancelled
    CampaignState.TERMINATED: frozenset({CampaignState.IN_TREATMENT, CampaignState.CANCELLED}),
    CampaignState.CANCELLED: frozenset(),
}

# ---------------------------------------------------------------- jobs


class JobState(StrEnum):
    """A job's state (`jobs.state`): one attempt of one task on one cluster."""

    TO_LAUNCH = "to_launch"  # taken from the queue by a runner, not sent yet
    LAUNCHING = "launching"  # committed before the POST: the cluster may or may not have it
    SUBMITTED = "submitted"  # the cluster accepted it (remote_id known)
    RUNNING = "running"
    REMOTE_WAITING = "remote_waiting"  # waiting in the cluster's queue
    BATCH_WAITING = "batch_waiting"  # a sub-job of a grouped job whose turn has not come
    TERMINATED = "terminated"  # ended with exit status 0
    EVENT = "event"  # ended otherwise: a job event says why


#: every job state, in CiGri3's enum order
JOB_STATES: tuple[JobState, ...] = tuple(JobState)
#: states a job leaves only by ending (or by a kill): everything not final.
UNFINISHED_JOB_STATES = (JobState.TO_LAUNCH, JobState.LAUNCHING, JobState.SUBMITTED, JobState.RUNNING,
                         JobState.REMOTE_WAITING, JobState.BATCH_WAITING)
#: CiGri3's "active" jobs (what `gridstat` and the API count per cluster): unfinished ones but
#: `launching`, a state CiGri3 does not have. batch_waiting is in (CiGri3 forgot it).
ACTIVE_JOB_STATES = tuple(s for s in UNFINISHED_JOB_STATES if s != JobState.LAUNCHING)
#: states the runner follows on the cluster.
POLLED_JOB_STATES = (JobState.SUBMITTED, JobState.REMOTE_WAITING, JobState.RUNNING, JobState.BATCH_WAITING)
#: states a job never leaves (but terminated -> event, see JOB_TRANSITIONS).
FINAL_JOB_STATES = (JobState.TERMINATED, JobState.EVENT)

_J = JobState
JOB_TRANSITIONS: dict[JobState, frozenset[JobState]] = {
    _J.TO_LAUNCH: frozenset({_J.LAUNCHING, _J.SUBMITTED, _J.EVENT}),
    _J.LAUNCHING: frozenset({_J.SUBMITTED, _J.EVENT}),
    _J.SUBMITTED: frozenset({_J.REMOTE_WAITING, _J.RUNNING, _J.BATCH_WAITING, _J.TERMINATED, _J.EVENT}),
    # a job the batch system requeued itself goes back from running to waiting
    _J.REMOTE_WAITING: frozenset({_J.RUNNING, _J.BATCH_WAITING, _J.TERMINATED, _J.EVENT}),
    _J.RUNNING: frozenset({_J.BATCH_WAITING, _J.TERMINATED, _J.EVENT, _J.REMOTE_WAITING}),
    _J.BATCH_WAITING: frozenset({_J.RUNNING, _J.TERMINATED, _J.EVENT}),
    # a user (or admin) may mark a terminated job as an event after the fact
    _J.TERMINATED: frozenset({_J.EVENT}),
    _J.EVENT: frozenset(),
}
del _J


def check_campaign_transition(old: str, new: str) -> None:
    if new != old and new not in CAMPAIGN_TRANSITIONS.get(CampaignState(old), frozenset()):
        raise StateError(f"Can't change a {old} campaign to {new}")


def job_transition_allowed(old: str, new: str) -> bool:
    """Staying in a state is always allowed (the row's other columns may change)."""
    return new == old or new in JOB_TRANSITIONS.get(JobState(old), frozenset())


def check_job_transition(old: str, new: str) -> None:
    if not job_transition_allowed(old, new):
        raise StateError(f"Job state {old} -> {new} is not allowed")


def sources_of(new: str) -> tuple[JobState, ...]:
    """The states from which a job may go to `new` (itself included)."""
    return tuple(s for s in JobState if job_transition_allowed(s, new))
