"""What happened to a finished or failed cluster job (spec §9.3), as a pure decision the
runner records: the job event to open, whether the task must be resubmitted, and whether
OAR resubmitted it itself. Colombo later acts on the recorded event."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field

from cigri.clusters.base import RemoteJob

KILL_TYPES = ("EXTERMINATE", "WALLTIME", "BESTEFFORT_KILL")
_NEW_ID = re.compile(r"new id\s*=\s*(\d+)")
_ANY_ID = re.compile(r"(\d+)\)")


@dataclass
class Analysis:
    """`code`/`message`/`open` describe the job event to record (None: no event)."""

    code: str | None
    message: str
    open: bool = True
    job_state: str = "event"
    new_remote_id: int | None = None
    decrease_affinity: bool = True
    notes: list[tuple[str, str]] = field(default_factory=list)  # extra closed notify events (code, message)

    @property
    def resubmits(self) -> bool:
        return self.code in ("RESUBMIT", "RESUBMIT_END")


def analyze_remote_job(tag: str | None, job_id: int, remote: RemoteJob,
                       stderr_tail: Callable[[RemoteJob], str] | None = None, tail_lines: int = 5) -> Analysis:
    """Map an OAR job (or a batch sub-job pseudo-job) to the event CiGri records."""
    ec = remote.exit_code
    status = (ec >> 8) if ec is not None and ec > 0 else None
    cause: str | None = None
    resubmit = False
    new_id: int | None = None
    notes: list[tuple[str, str]] = []
    if status == 66:
        resubmit, cause = True, "Special_exit_status_66"
    elif status == 67:
        resubmit, cause = True, "Special_exit_status_67"
    elif kill := next((t for t in remote.event_types if t in KILL_TYPES), None):
        # a kill explains the job's end whatever the order OAR lists its events in
        resubmit, cause = True, kill
        if kill == "WALLTIME":
            notes.append(("WALLTIME_WARNING", f"Job {job_id} has been resubmited with modified affinity "
                                              "because of walltime reached"))
    else:
        for ev in remote.events:
            etype = str(ev.get("type", ""))
            cause = etype
            if etype in KILL_TYPES:
                resubmit = True
                if etype == "WALLTIME":
                    notes.append(("WALLTIME_WARNING", f"Job {job_id} has been resubmited with modified affinity "
                                                      "because of walltime reached"))
                break
            if etype == "FRAG_JOB_REQUEST":
                resubmit = True
                break
            if etype == "WORKING_DIRECTORY":
                break
            if etype == "RESUBMIT_JOB_AUTOMATICALLY":
                desc = str(ev.get("description", ""))
                m = _NEW_ID.search(desc) or _ANY_ID.search(desc)
                new_id = int(m.group(1)) if m else None
                break
    if resubmit:
        code = "RESUBMIT_END" if cause == "Special_exit_status_67" else "RESUBMIT"
        return Analysis(code, f"Resubmit cause: {cause}", notes=notes)
    if ec is not None and ec > 0:
        code = {"prologue": "PROLOG_EXIT_ERROR", "epilogue": "EPILOG_EXIT_ERROR"}.get(tag or "", "EXIT_ERROR")
        msg = f"The job exited with exit status {ec};"
        tail = ""
        if stderr_tail is not None:
            try:
                tail = stderr_tail(remote)
            except Exception:  # noqa: BLE001 - the tail is a courtesy, never a failure
                tail = ""
        if tail.strip():
            msg += f"\nLast {tail_lines} lines of {remote.stderr_file or 'stderr'}:\n{tail.rstrip()}"
        return Analysis(code, msg)
    if cause == "WORKING_DIRECTORY":
        return Analysis("WORKING_DIRECTORY_ERROR", "The job exited because of a working directory error. "
                        f"Use 'gridstat -C -j {job_id}' for more information.")
    if cause == "RESUBMIT_JOB_AUTOMATICALLY" and new_id is not None:
        # CiGri3 switched the remote id then set the job to `event` anyway, losing the new OAR
        # job (spec §15.2 #3): we keep following it.
        return Analysis("OAR_AUTO_RESUBMIT", f"OAR did an automatic resubmission so we change the remote_id "
                        f"from {remote.id} to {new_id};", open=False, job_state="remote_waiting",
                        new_remote_id=new_id, decrease_affinity=False)
    dump = "; ".join(f"{e.get('type')}: {e.get('description', '')}" for e in remote.events) or "none"
    return Analysis("UNKNOWN_ERROR", f"The job exited with an unknown error. Job events: {dump}")
