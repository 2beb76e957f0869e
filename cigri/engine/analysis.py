"""What an ended cluster job means for CiGri, as a pure decision the runner records: the job
event to open, whether the task is resubmitted, whether the batch system requeued it itself.
It reads only CiGri's outcomes (`cigri.clusters.base.Outcome`); colombo later acts on the
recorded event, following `cigri.event_codes.EVENT_CODES`."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from cigri import containers
from cigri.clusters.base import ExitStatus, Outcome, RemoteJob
from cigri.event_codes import KILL_CAUSE_WORDS

#: exit codes a task uses to ask for its own resubmission (67: at the end of the queue)
RESUBMIT_EXIT_CODES = {66: "Special_exit_status_66", 67: "Special_exit_status_67"}


@dataclass
class Analysis:
    """`code`/`message`/`open` describe the job event to record (None: no event)."""

    code: str | None
    message: str
    open: bool = True
    job_state: str = "event"
    new_remote_id: int | None = None
    decrease_affinity: bool = True
    #: the outcome that ended the job when the cluster took it away (preempted, walltime,
    #: killed, lost): recorded with the job, read by the resubmission-rate rule and
    #: semi-best-effort campaigns (never parsed back from the message)
    kill_cause: Outcome | None = None
    notes: list[tuple[str, str]] = field(default_factory=list)  # extra closed notify events (code, message)

    @property
    def resubmits(self) -> bool:
        return self.code in ("RESUBMIT", "RESUBMIT_END")


def analyze_remote_job(tag: str | None, job_id: int, remote: RemoteJob,
                       stderr_tail: Callable[[RemoteJob], str] | None = None, tail_lines: int = 5) -> Analysis:
    """The event of an ended job that did not simply succeed. In order: a task asking for
    its resubmission (exit 66/67), a kill by the cluster (resubmitted), a failing exit
    status, a command that never started, a requeue by the batch system, anything else."""
    ex = remote.exit
    outcome = remote.outcome
    if ex is not None and not ex.signal and ex.code in RESUBMIT_EXIT_CODES:
        cause = RESUBMIT_EXIT_CODES[ex.code]
        return Analysis("RESUBMIT_END" if ex.code == 67 else "RESUBMIT", f"Resubmit cause: {cause}")
    if outcome in KILL_CAUSE_WORDS:
        notes = []
        if outcome is Outcome.WALLTIME:
            notes.append(("WALLTIME_WARNING", f"Job {job_id} has been resubmited with modified affinity "
                                              "because of walltime reached"))
        return Analysis("RESUBMIT", f"Resubmit cause: {KILL_CAUSE_WORDS[outcome]}", notes=notes,
                        kill_cause=outcome)
    if ex is not None and not ex.ok:
        return exit_error(tag, remote, ex, stderr_tail, tail_lines)
    if outcome is Outcome.FAILED_TO_START:
        return Analysis("WORKING_DIRECTORY_ERROR", "The job exited because of a working directory error. "
                        f"Use 'gridstat -C -j {job_id}' for more information.")
    if outcome is Outcome.REQUEUED and remote.new_id is not None:
        # CiGri3 switched the remote id then set the job to `event` anyway, losing the new
        # cluster job: we keep following it.
        return Analysis("OAR_AUTO_RESUBMIT", f"OAR did an automatic resubmission so we change the remote_id "
                        f"from {remote.id} to {remote.new_id};", open=False, job_state="remote_waiting",
                        new_remote_id=remote.new_id, decrease_affinity=False)
    return Analysis("UNKNOWN_ERROR", f"The job exited with an unknown error. Job events: {remote.detail or 'none'}")


def exit_error(tag: str | None, remote: RemoteJob, ex: ExitStatus,
               stderr_tail: Callable[[RemoteJob], str] | None, tail_lines: int) -> Analysis:
    """EXIT_ERROR (PROLOG_/EPILOG_ for those jobs), with the tail of the job's stderr. The
    status shown is the wait status, as CiGri3 showed it."""
    code = {"prologue": "PROLOG_EXIT_ERROR", "epilogue": "EPILOG_EXIT_ERROR"}.get(tag or "", "EXIT_ERROR")
    msg = f"The job exited with exit status {ex.wait_status} ({ex});"
    tail = ""
    if stderr_tail is not None:
        try:
            tail = stderr_tail(remote)
        except Exception:  # noqa: BLE001 - the tail is a courtesy, never a failure
            tail = ""
    if tail.strip():
        msg += f"\nLast {tail_lines} lines of {remote.stderr_file or 'stderr'}:\n{tail.rstrip()}"
    diag = containers.diagnose(None if ex.signal else ex.code, tail) if code == "EXIT_ERROR" else None
    if diag is not None:  # the task never ran: its container could not start on this cluster
        return Analysis("CONTAINER_ERROR", f"{diag[1]}\n{msg}")
    return Analysis(code, msg)
