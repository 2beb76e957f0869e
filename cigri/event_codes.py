"""CiGri's public event vocabulary, in one table: each event code users see (CiGri3's
codes, kept), its class, and what colombo decides on it (blacklist, autofix, resubmit,
close). Colombo reads this table and nothing else; the runners, adapters, nikita and the
API only record events."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from cigri.clusters.base import Outcome


class EventClass(StrEnum):
    """`events.class`: what an event is about, which decides what a blacklist covers."""

    CLUSTER = "cluster"  # a whole cluster (a blacklist stops every campaign there)
    CAMPAIGN = "campaign"  # a campaign, possibly on one cluster
    JOB = "job"  # one job (a blacklist covers its campaign on its cluster)
    NOTIFY = "notify"  # for users and admins only
    LOG = "log"  # a trace


#: events colombo decides on
DECIDED_CLASSES = (EventClass.CLUSTER, EventClass.CAMPAIGN, EventClass.JOB)


@dataclass(frozen=True)
class EventCode:
    """What an open, unchecked event of this code makes colombo do."""

    code: str
    klass: EventClass
    #: blacklist its cluster (class cluster) or its campaign on its cluster (job, campaign)
    blacklists: bool = False
    #: a failure to talk to the cluster that may be transient: colombo probes the cluster's
    #: API every AUTOFIX_DELAY and closes the event (lifting its blacklist) once it answers
    autofix: bool = False
    #: put the job's task back in the bag with this priority, then close the event
    resubmit_priority: int | None = None
    #: close the event at once (a record, nothing to decide)
    closes: bool = False
    #: colombo leaves it alone: someone else handles it (nikita, the updator, the admin)
    decided: bool = True
    #: DELETE_JOB only: an error saying this is closed, not blacklisted
    closed_if_message: str | None = None
    meaning: str = ""


RESUBMIT_PRIORITY = 20
RESUBMIT_END_PRIORITY = 0

_C, _J, _K, _N, _L = EventClass.CLUSTER, EventClass.JOB, EventClass.CAMPAIGN, EventClass.NOTIFY, EventClass.LOG


def _transient(code: str, meaning: str) -> EventCode:
    return EventCode(code, EventClass.CLUSTER, blacklists=True, autofix=True, meaning=meaning)


def _job_error(code: str, meaning: str) -> EventCode:
    return EventCode(code, EventClass.JOB, blacklists=True, meaning=meaning)


_TABLE = (
    # -- cluster communication: a blacklist of the cluster, lifted automatically when it may be transient
    _transient("TIMEOUT", "the cluster's API did not answer in time"),
    _transient("POST_TIMEOUT", "a submission got no answer in time (the runner reconciles it)"),
    _transient("SOCKET_ERROR", "name resolution or socket error"),
    _transient("CONNECTION_REFUSED", "nothing listens on the cluster's API address"),
    _transient("HOST_UNREACHABLE", "no route to the cluster"),
    _transient("CONNECTION_RESET", "the connection to the cluster was cut"),
    _transient("SSL_ERROR", "TLS handshake or certificate error"),
    _transient("GET_STRESS_FACTOR", "the stress factor could not be read"),
    _transient("FILL_JOBS_CACHE", "the bulk job status could not be read (error or unreadable answer)"),
    _transient("GET_JOBS", "jobs could not be listed (error or unreadable answer)"),
    _transient("GET_JOB", "a job could not be read (error or unreadable answer)"),
    _transient("GET_MEDIA", "a file on the cluster could not be read"),
    _transient("RUNNER_GET_JOB_CHUNK_ERROR", "a chunk of jobs could not be read"),
    EventCode("REQUEST_TOO_LARGE", _C, blacklists=True, meaning="HTTP 413 from the cluster"),
    EventCode("CLUSTER_MANUALLY_DISABLED", _C, blacklists=True,
              meaning="an admin blacklisted the cluster until this event is fixed"),
    EventCode("DELETE_JOB", _C, blacklists=True, closed_if_message="This job was already killed",
              meaning="a job could not be killed"),
    EventCode("SUBMIT_JOB", _C, closes=True, meaning="unexpected answer to a submission"),
    EventCode("RUNNER_GET_JOB_SERVER_ERROR", _C, closes=True, meaning="HTTP 500 while reading a job"),
    EventCode("PERMISSION_DENIED", _C, meaning="HTTP 401 (recorded closed)"),
    EventCode("FORBIDDEN", _C, meaning="HTTP 403 (recorded closed)"),
    EventCode("JWT_TOKEN_NOT_FOUND", _C, meaning="no JWT token for a user on this cluster"),
    EventCode("CLUSTER_API_SERVER_ERROR", _C, meaning="HTTP 500 on a request (recorded closed)"),
    EventCode("CLUSTER_API_BAD_REQUEST_ERROR", _C, meaning="HTTP 400 on a request (recorded closed)"),
    EventCode("DELETE_MEDIA", _C, meaning="a file on the cluster could not be deleted"),
    EventCode("UNDER_STRESS", _C, meaning="stress above STRESS_FACTOR: no new queuing there; the updator "
                                          "closes it when the stress drops"),
    EventCode("BLACKLIST", _C, decided=False, meaning="the blacklist marker; lifted when its parent is closed"),
    # -- jobs
    EventCode("RESUBMIT", _J, resubmit_priority=RESUBMIT_PRIORITY,
              meaning="killed by the cluster (best-effort, walltime, deletion, lost) or exit 66: resubmitted"),
    EventCode("RESUBMIT_END", _J, resubmit_priority=RESUBMIT_END_PRIORITY,
              meaning="exit 67: resubmitted at the end of the queue"),
    EventCode("STUCK_LAUNCHING_JOB", _J, resubmit_priority=RESUBMIT_PRIORITY,
              meaning="a submission the cluster never got: resubmitted"),
    _job_error("EXIT_ERROR", "the task exited with a non-zero status"),
    _job_error("PROLOG_EXIT_ERROR", "the prologue exited with a non-zero status"),
    _job_error("EPILOG_EXIT_ERROR", "the epilogue exited with a non-zero status"),
    _job_error("WORKING_DIRECTORY_ERROR", "the job could not start (working directory)"),
    _job_error("CONTAINER_ERROR", "the task's container could not start on this cluster"),
    _job_error("UNKNOWN_ERROR", "the job ended in error for an unknown reason"),
    _job_error("RUNNER_GET_REMOTE_ID_ERROR", "the job has no remote id"),
    _job_error("RUNNER_GET_JOB_SERVER_ERROR", "HTTP 500 while reading the job"),
    _job_error("RUNNER_GET_JOB_UNKNOWN_ERROR", "the job could not be read"),
    _job_error("RUNNER_SUBMIT_TOO_LARGE", "HTTP 413 at submission"),
    _job_error("RUNNER_SUBMIT_TOKEN_NOT_FOUND", "no JWT token for the user"),
    _job_error("RUNNER_SUBMIT_PERMISSION_DENIED", "HTTP 401 at submission"),
    _job_error("RUNNER_SUBMIT_ERROR", "the cluster refused the submission"),
    _job_error("MANUAL_EVENT", "an admin marked the job as an event"),
    EventCode("OAR_AUTO_RESUBMIT", _J, closes=True, meaning="the batch system requeued the job as a new job"),
    EventCode("FRAG_RESUBMIT", _J, closes=True),
    EventCode("REMOTE_WAITING_FRAG", _J, closes=True, meaning="killed after waiting too long (resubmitted)"),
    EventCode("CIGRI_WALLTIME", _J, meaning="CiGri killed a job running past its walltime"),
    EventCode("USER_FRAG", _J, decided=False, meaning="a user's cancellation: nikita kills and closes"),
    # -- campaigns
    EventCode("TOO_MANY_RESUBMIT", _K, blacklists=True,
              meaning="too many of the campaign's jobs were resubmitted on a cluster (the per-task cap's "
                      "event, with a job, is created checked)"),
    EventCode("PURGE", _K, meaning="the campaign's rows were purged"),
    # -- notifications and traces
    EventCode("FINISHED_CAMPAIGN", _N),
    EventCode("WALLTIME_WARNING", _N),
    EventCode("NIKITA_KILL_PROBLEM", _N),
    EventCode("RUNNER_FAILED", _L),
    EventCode("CHILD_TIMEOUT", _L),
    EventCode("NIKITA_CLEAN_AFFINITY", _L),
    EventCode("QUEUED_FOR_TOO_LONG", _L),
    EventCode("ALMIGHTY_TERMINATING", _L),
)
del _C, _J, _K, _N, _L

#: (code, class) -> its row: a few codes are recorded with two classes and mean different things
EVENT_CODES: dict[tuple[str, EventClass], EventCode] = {(e.code, e.klass): e for e in _TABLE}
#: codes colombo never decides on, whatever the event's class (notify and log events are
#: never decided either)
UNDECIDED_CODES = tuple(sorted({e.code for e in _TABLE if not e.decided}))
#: cluster events closed by themselves once the cluster answers
AUTOFIX_CODES = tuple(sorted(e.code for e in _TABLE if e.autofix))


def event_code(code: str, klass: str) -> EventCode:
    """The row of (`code`, `klass`). An unknown code of a job means a job error (CiGri3: it
    blacklists the campaign on that cluster), of another class nothing to decide."""
    known = EVENT_CODES.get((code, EventClass(klass)))
    if known is not None:
        return known
    if klass == EventClass.JOB:
        return EventCode(code, EventClass.JOB, blacklists=True)
    return EventCode(code, EventClass(klass))


#: how a kill by the cluster is named in the RESUBMIT event users see (CiGri3's words)
KILL_CAUSE_WORDS: dict[Outcome, str] = {
    Outcome.PREEMPTED: "BESTEFFORT_KILL",
    Outcome.WALLTIME: "WALLTIME",
    Outcome.KILLED: "FRAG_JOB_REQUEST",
    Outcome.LOST: "EXTERMINATE",
}
