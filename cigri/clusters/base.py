"""The one interface between CiGri and a batch scheduler: what CiGri asks (`JobRequest`),
what an adapter reports (`RemoteJob` with a neutral `Outcome` and `ExitStatus`), and the
typed errors of a call.

An adapter never touches the database: it talks to one cluster, translates the batch
system's states and events into CiGri's outcomes with its own table, and raises a
`ClusterAPIError` whose `code` and `event_open` say which CiGri event the caller records.
Adding a batch type = one module implementing `ClusterAdapter` registered in
`cigri.clusters.ADAPTERS`."""

from __future__ import annotations

import abc
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, ClassVar

from cigri.errors import CigriError
from cigri.sanitize import clean_text

# ----------------------------------------------------------------------------- errors


class ClusterAPIError(CigriError):
    """A failed call to a cluster. `code` is the event code to record (None: record nothing);
    `event_open` says whether the event is created open (blacklists) or closed (log only).
    `ambiguous`: the cluster may have carried the request out (its answer was lost, cut
    short or unreadable): a submission must then be reconciled, never taken as refused."""

    default_code: ClassVar[str | None] = None
    default_open: ClassVar[bool] = True
    default_ambiguous: ClassVar[bool] = False

    def __init__(self, message: str, code: str | None = None, event_open: bool | None = None,
                 status: int | None = None, body: str | None = None, ambiguous: bool | None = None) -> None:
        message = clean_text(message, 4000)  # it quotes answers and files: junk never reaches an event
        super().__init__(message)
        self.code = code if code is not None else self.default_code
        self.event_open = self.default_open if event_open is None else event_open
        self.status = status
        self.body = clean_text(body, 4000) if body is not None else None
        self.ambiguous = self.default_ambiguous if ambiguous is None else ambiguous


class ClusterAPITimeout(ClusterAPIError):
    default_code = "TIMEOUT"


class ClusterAPITimeoutPOST(ClusterAPITimeout):
    default_code = "POST_TIMEOUT"
    default_ambiguous = True


class ClusterAPIConnectionError(ClusterAPIError):
    """code: CONNECTION_REFUSED, SOCKET_ERROR, HOST_UNREACHABLE, CONNECTION_RESET or SSL_ERROR."""

    default_code = "CONNECTION_REFUSED"


class ClusterAPIPermissionDenied(ClusterAPIError):
    default_code = "PERMISSION_DENIED"
    default_open = False


class ClusterAPIForbidden(ClusterAPIError):
    default_code = "FORBIDDEN"
    default_open = False


class ClusterAPIServerError(ClusterAPIError):
    default_code = "CLUSTER_API_SERVER_ERROR"
    default_open = False


class ClusterAPIBadRequest(ClusterAPIError):
    default_code = "CLUSTER_API_BAD_REQUEST_ERROR"
    default_open = False


class ClusterAPITooLarge(ClusterAPIError):
    default_code = "REQUEST_TOO_LARGE"
    default_open = False


class ClusterAPINotFound(ClusterAPIError):
    default_code = None


class TokenNotFound(ClusterAPIError):
    """No JWT for this user on this cluster (the caller also records JWT_TOKEN_NOT_FOUND)."""


class ClusterConfigError(ClusterAPIError):
    """The cluster row cannot work (bad auth type, missing certificate...)."""


# ----------------------------------------------------------------------------- data


@dataclass
class ClusterInfo:
    """A `clusters` row, normalised as CiGri3 does at load time."""

    id: int
    name: str
    api_url: str
    batch: str
    api_auth_type: str = "none"
    api_username: str | None = None
    api_password: str | None = None
    api_auth_header: str | None = None
    api_chunk_size: int = 100
    api_limit: int = 100
    ssh_host: str = ""
    resource_unit: str = "resource_id"
    power: int | None = None
    properties: str | None = None
    stress_factor: float = 0.0
    enabled: bool = True
    container_engines: str | None = None
    # how a batch system without OAR's `besteffort` job type runs best-effort work (Slurm:
    # docs/slurm.md): the partition normal jobs go to (None: the site's default one), the
    # partition and/or QOS whose jobs are preempted, and what preemption does there
    # ("cancel": the job ends preempted; "requeue": the batch system queues it again)
    normal_partition: str | None = None
    besteffort_partition: str | None = None
    besteffort_qos: str | None = None
    besteffort_mode: str | None = None
    #: a key file on the CiGri server with which CiGri signs its users' tokens itself (Slurm's
    #: HS256 JWT key); None: users register their tokens with `gridtoken`
    jwt_key_file: str | None = None

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> ClusterInfo:
        known = {f for f in cls.__dataclass_fields__}
        data = {k: v for k, v in dict(row).items() if k in known}
        info = cls(**data)
        if info.api_auth_type == "jwt":
            info.api_auth_header = "Authorization"
        elif not info.api_auth_header:
            info.api_auth_header = "X_REMOTE_IDENT"
        info.stress_factor = float(info.stress_factor or 0.0)
        info.ssh_host = info.ssh_host or ""
        info.api_chunk_size = int(info.api_chunk_size if info.api_chunk_size is not None else 100)
        info.api_limit = int(info.api_limit or 100)
        return info


@dataclass
class JobRequest:
    """What CiGri asks a cluster to run: one job, or an array with one task per `params` line.

    `command` is the executable (exec_file, already prefixed by CiGri's environment
    export); each parameter line is appended after a space. `params == []` means a
    single job running `command` alone (prologue/epilogue)."""

    command: str
    params: Sequence[str] = ()
    resources: str = "/resource_id=1"
    walltime: str | None = None
    name: str | None = None
    directory: str | None = None
    property: str | None = None
    project: str | None = None
    types: Sequence[str] = ()
    stdout: str | None = None
    stderr: str | None = None
    #: the CiGri job ids this submission runs, in `params` order (every id of a grouped
    #: batch): an adapter may tag the cluster job with them, to find it again after a crash
    #: between the submission and its recording (`ClusterAdapter.find_submitted`)
    job_ids: Sequence[int] = ()


class Outcome(StrEnum):
    """Where a job stands, in CiGri's words. Each adapter translates its batch system's
    states and events into one of these (its translation table lives in its module), so
    that the runner, colombo and the analysis of ended jobs never read a batch system's
    vocabulary. The first three are live; every other one means this attempt has ended."""

    WAITING = "waiting"  # queued on the cluster, not started
    HELD = "held"  # on the cluster, neither queued to run nor running (hold, suspended, in transition)
    RUNNING = "running"  # started (including launching and finishing)
    DONE = "done"  # ran to its end by itself; `exit` says how it exited
    FAILED_TO_START = "failed_to_start"  # its command never ran (working directory, launch failure)
    PREEMPTED = "preempted"  # killed to give its resources to other work (best-effort kill)
    WALLTIME = "walltime"  # killed when it reached its walltime
    KILLED = "killed"  # killed on request (CiGri, the user or an admin deleted it)
    LOST = "lost"  # killed by a failure of the cluster (node failure, exterminated, executor lost)
    REQUEUED = "requeued"  # the batch system ended this attempt and runs the task again as `new_id`
    ERROR = "error"  # ended for a reason the adapter cannot name (see `reason`/`detail`)

    @property
    def live(self) -> bool:
        return self in LIVE_OUTCOMES

    @property
    def ended(self) -> bool:
        return self not in LIVE_OUTCOMES


LIVE_OUTCOMES = frozenset({Outcome.WAITING, Outcome.HELD, Outcome.RUNNING})
#: the ends that are not the task's fault: the cluster took the job away (CiGri resubmits it)
KILL_OUTCOMES = frozenset({Outcome.PREEMPTED, Outcome.WALLTIME, Outcome.KILLED, Outcome.LOST})


@dataclass(frozen=True)
class ExitStatus:
    """How a job's process ended: `code` (0-255) when it exited, `signal` when a signal
    killed it. Batch systems report a raw wait status (exit 3 -> 768): adapters decode it
    with `from_wait_status`; CiGri stores and shows the wait status (`jobs.return_code`,
    event messages), as CiGri3 did (docs/compat.md)."""

    code: int | None = None
    signal: int | None = None

    @classmethod
    def from_wait_status(cls, status: int) -> ExitStatus:
        if status < 0:  # not a wait status: keep it as the code CiGri shows
            return cls(code=status)
        sig = status & 0x7F
        return cls(signal=sig) if sig else cls(code=(status >> 8) & 0xFF)

    @classmethod
    def exited(cls, code: int) -> ExitStatus:
        return cls(code=code)

    @classmethod
    def killed_by(cls, signal: int) -> ExitStatus:
        return cls(signal=signal)

    @property
    def wait_status(self) -> int:
        """The POSIX wait status (what OAR reports and `jobs.return_code` holds)."""
        if self.signal:
            return self.signal
        code = self.code or 0
        return code << 8 if 0 <= code <= 255 else code

    @property
    def ok(self) -> bool:
        return not self.signal and self.code == 0

    def __str__(self) -> str:
        return f"signal {self.signal}" if self.signal else f"exit code {self.code}"


@dataclass
class RemoteJob:
    """A job as its cluster reports it, translated by the adapter: `outcome` is what CiGri
    decides on; `raw_state` and `reason`/`detail` keep the batch system's own words for
    display only (never parse them outside the adapter)."""

    id: int
    outcome: Outcome
    raw_state: str = ""  # the batch system's state word (OAR "Terminated", Slurm "PREEMPTED", ...)
    exit: ExitStatus | None = None  # None while live or when the batch system does not say
    #: the job that runs the task again (REQUEUED); may be `id` itself for a same-id requeue
    new_id: int | None = None
    #: how many times the batch system put this job back in its queue itself, keeping its id
    #: (Slurm's REQUEUE preemption): a running job seen waiting again with more requeues
    requeues: int = 0
    reason: str = ""  # short batch-system words for the end (event types, state reason)
    detail: str = ""  # the batch system's full explanation (event descriptions), for messages
    start_time: int | None = None  # epoch
    stop_time: int | None = None
    submission_time: int | None = None  # the cluster's clock: CiGri uses its own (jobs.submission_time)
    launching_directory: str | None = None
    stdout_file: str | None = None
    stderr_file: str | None = None
    command: str | None = None
    owner: str | None = None
    array_id: int | None = None
    array_index: int | None = None
    queue: str | None = None
    types: list[str] = field(default_factory=list)
    resources: list[dict[str, Any]] = field(default_factory=list)
    raw: dict[str, Any] = field(default_factory=dict)

    @property
    def failed(self) -> bool:
        """Ended and not a plain success (exit code 0, or no code reported)."""
        if self.outcome.live:
            return False
        if self.outcome is not Outcome.DONE:
            return True
        return self.exit is not None and not self.exit.ok

    def output_path(self, which: str = "stderr") -> str | None:
        name = self.stderr_file if which == "stderr" else self.stdout_file
        if not name:
            return None
        name = name.replace("%jobid%", str(self.id))
        if name.startswith("/") or not self.launching_directory:
            return name
        return f"{self.launching_directory.rstrip('/')}/{name}"


# ----------------------------------------------------------------------------- interface


class ClusterAdapter(abc.ABC):
    """One batch scheduler API. `user` arguments are grid logins; the adapter maps them
    (users_mapping given as `mapping`: grid_login -> cluster_login / "Bearer <jwt>")."""

    batch: ClassVar[str]
    #: whether `get_file` can read the files of the cluster's users (temporal grouping reads
    #: its sub-jobs' state files that way; without it campaigns are submitted as plain arrays)
    reads_files: ClassVar[bool] = True

    def __init__(self, cluster: ClusterInfo, conf: Any = None, mapping: Mapping[str, str] | None = None):
        self.cluster = cluster
        self.conf = conf
        self.mapping: dict[str, str] = dict(mapping or {})

    def set_mapping(self, mapping: Mapping[str, str]) -> None:
        self.mapping = dict(mapping)

    @abc.abstractmethod
    def check_api(self) -> bool:
        """True when the API answers (used by autofix)."""

    @abc.abstractmethod
    def submit(self, request: JobRequest, user: str) -> list[int]:
        """Submit; return the remote ids, one per parameter line in order (one id if no params)."""

    @abc.abstractmethod
    def get_job(self, remote_id: int, user: str | None = None) -> RemoteJob:
        """One job (ClusterAPINotFound if unknown)."""

    @abc.abstractmethod
    def get_jobs(self, remote_ids: Sequence[int]) -> dict[int, RemoteJob]:
        """Many jobs at once as the admin identity, in chunks of api_chunk_size."""

    @abc.abstractmethod
    def delete_job(self, remote_id: int, user: str) -> None:
        """Ask the cluster to kill a job (already finished jobs are not an error)."""

    @abc.abstractmethod
    def get_file(self, path: str, user: str, tail: int = 0) -> str:
        """Content of a file on the cluster (last `tail` lines, 0 = all). ClusterAPINotFound if absent."""

    @abc.abstractmethod
    def delete_file(self, path: str, user: str) -> None:
        """Delete a file on the cluster as `user`."""

    @abc.abstractmethod
    def get_resources(self) -> list[dict[str, Any]]:
        """Resources of this logical cluster (filtered by the cluster's `properties`): the
        batch system's fields (`id`, the `resource_unit` keys…) plus CiGri's `available`
        (bool: the resource can run jobs now), decided by the adapter from its own states."""

    @abc.abstractmethod
    def get_running_jobs(self) -> list[RemoteJob]:
        """Running jobs of every user, with their `resources` (grid usage)."""

    @abc.abstractmethod
    def get_stress_factor(self) -> float:
        """The cluster's global stress (0 when unknown)."""

    def stderr_tail(self, remote: RemoteJob, user: str, lines: int) -> str:
        """The last `lines` lines of an ended job's stderr, for the event telling why it failed
        ('' when they cannot be had). By default read through the cluster's file API."""
        path = remote.output_path("stderr")
        return self.get_file(path, user, tail=lines) if path else ""

    def find_submitted(self, job_ids: Sequence[int], user: str) -> dict[int, int] | None:
        """Remote ids of CiGri jobs (`JobRequest.job_ids`) that the cluster accepted although
        their submission was never recorded (the runner died in between), as {job id: remote
        id}; None when the adapter cannot tell by itself (the runner then matches commands)."""
        return None

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections."""

    def wakeup_fd(self) -> int | None:
        """A file descriptor that becomes readable when the cluster has news for the runner
        (its jobs ended, it needs work), or None: the runner then polls."""
        return None
