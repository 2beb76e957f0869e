"""The one interface between CiGri and a batch scheduler, and its typed errors.

An adapter never touches the database: it talks to one cluster and raises a
`ClusterAPIError` whose `code` and `event_open` say which CiGri event (spec §8.5)
the caller records. Adding a batch type = one module implementing `ClusterAdapter`
registered in `cigri.clusters.ADAPTERS`."""

from __future__ import annotations

import abc
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

from cigri.errors import CigriError

# ----------------------------------------------------------------------------- errors


class ClusterAPIError(CigriError):
    """A failed call to a cluster. `code` is the event code to record (None: record nothing);
    `event_open` says whether the event is created open (blacklists) or closed (log only)."""

    default_code: ClassVar[str | None] = None
    default_open: ClassVar[bool] = True

    def __init__(self, message: str, code: str | None = None, event_open: bool | None = None,
                 status: int | None = None, body: str | None = None) -> None:
        super().__init__(message)
        self.code = code if code is not None else self.default_code
        self.event_open = self.default_open if event_open is None else event_open
        self.status = status
        self.body = body


class ClusterAPITimeout(ClusterAPIError):
    default_code = "TIMEOUT"


class ClusterAPITimeoutPOST(ClusterAPITimeout):
    default_code = "POST_TIMEOUT"


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
    """A `clusters` row, normalised as CiGri3 does at load time (spec §8.1)."""

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


@dataclass
class RemoteJob:
    """A job as the cluster reports it (OAR vocabulary, Appendix A)."""

    id: int
    state: str
    exit_code: int | None = None  # raw wait status (exit 3 -> 768)
    start_time: int | None = None  # epoch
    stop_time: int | None = None
    submission_time: int | None = None
    events: list[dict[str, Any]] = field(default_factory=list)
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
    def event_types(self) -> list[str]:
        return [str(e.get("type", "")) for e in self.events]

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
        """Resources of this logical cluster (filtered by the cluster's `properties`)."""

    @abc.abstractmethod
    def get_running_jobs(self) -> list[RemoteJob]:
        """Running jobs of every user, with their `resources` (grid usage)."""

    @abc.abstractmethod
    def get_stress_factor(self) -> float:
        """The cluster's global stress (0 when unknown)."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections."""

    def wakeup_fd(self) -> int | None:
        """A file descriptor that becomes readable when the cluster has news for the runner
        (its jobs ended, it needs work), or None: the runner then polls."""
        return None
