"""The `local` batch type: jobs run on this machine by the local executor
(`cigri.localexec`), whose records speak CiGri's words (waiting, running, ended and why);
`local_outcome` turns them into CiGri's outcomes.

The state directory is the path of the cluster's api_url (`local:///path`), else
LOCAL_STATE_DIR, else `<user data dir>/local`. Jobs run as the local user (the one
running CiGri's daemons): the grid `user` is only recorded as the job owner."""

from __future__ import annotations

import contextlib
import getpass
import os
import socket
import stat
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from cigri.clusters.base import (
    ClusterAdapter,
    ClusterAPIError,
    ClusterAPIForbidden,
    ClusterAPINotFound,
    ClusterAPIServerError,
    ExitStatus,
    JobRequest,
    Outcome,
    RemoteJob,
)
from cigri.localexec import store
from cigri.localexec.store import Record, Store, expand_dir, now, parse_resources, parse_walltime
from cigri.sanitize import clean_text


def state_dir_for(api_url: str | None, conf: Any = None) -> Path:
    """Where a local cluster keeps its jobs."""
    if api_url:
        u = urlparse(api_url)
        if u.scheme == "local" and (u.netloc or u.path) not in ("", "/"):
            return Path(os.path.expanduser(u.netloc + u.path))
    d = conf.get("LOCAL_STATE_DIR") if conf is not None else ""
    if d:
        return Path(os.path.expanduser(d))
    from cigri.config import user_data_dir

    return user_data_dir() / "local"


def local_cores(conf: Any = None) -> int:
    n = int(conf.get("LOCAL_CORES") or 0) if conf is not None else 0
    return n if n > 0 else (os.cpu_count() or 1)


#: the executor's states of a task that has not ended
LOCAL_LIVE_STATES = {store.WAITING: Outcome.WAITING, store.RUNNING: Outcome.RUNNING}
#: why the executor ended a task, when the task did not end by itself
LOCAL_END_REASONS = {
    store.PREEMPTED: Outcome.PREEMPTED,
    store.WALLTIME: Outcome.WALLTIME,
    store.KILLED: Outcome.KILLED,
    store.FAILED_TO_START: Outcome.FAILED_TO_START,
    store.LOST: Outcome.LOST,  # its shepherd died with it
}


def local_outcome(rec: Record) -> tuple[Outcome, ExitStatus | None]:
    """(outcome, exit status) of an executor record. Its `exit_code` is a wait status."""
    code = rec.get("exit_code")
    exit_ = ExitStatus.from_wait_status(int(code)) if code is not None else None
    state = rec.get("state")
    if state in LOCAL_LIVE_STATES:
        return LOCAL_LIVE_STATES[state], exit_
    reason = rec.get("reason")
    if not reason:
        return Outcome.DONE, exit_
    return LOCAL_END_REASONS.get(reason, Outcome.ERROR), exit_


def _to_remote(rec: Record) -> RemoteJob:
    outcome, exit_ = local_outcome(rec)
    return RemoteJob(
        id=int(rec["id"]), outcome=outcome, raw_state=str(rec.get("state") or ""), exit=exit_,
        reason=str(rec.get("reason") or ""), detail=str(rec.get("detail") or ""),
        start_time=rec.get("start_time"), stop_time=rec.get("stop_time"),
        submission_time=rec.get("submission_time"),
        launching_directory=rec.get("launching_directory"), stdout_file=rec.get("stdout_file"),
        stderr_file=rec.get("stderr_file"), command=rec.get("command"), owner=rec.get("owner"),
        array_id=rec.get("array_id"), array_index=rec.get("array_index"), queue=rec.get("queue"),
        types=list(rec.get("types") or []), resources=[{"id": c} for c in rec.get("cores") or []], raw=rec)


def _properties_filter(properties: str | None) -> list[tuple[str, str]]:
    import re

    return re.findall(r"(\w+)\s*=\s*'([^']*)'", properties or "")


class LocalAdapter(ClusterAdapter):
    batch = "local"

    def __init__(self, cluster: Any, conf: Any = None, mapping: Any = None):
        super().__init__(cluster, conf=conf, mapping=mapping)
        if self.conf is None:
            from cigri.config import get_conf

            self.conf = get_conf()
        self.store = Store(state_dir_for(getattr(cluster, "api_url", None), self.conf))
        self.run_as = getpass.getuser()
        self.cores = local_cores(self.conf)
        self._ready = False
        #: waiting jobs as last reported (a poll rebuilds only the jobs that changed)
        self._waiting: dict[int, RemoteJob] = {}

    def _setup(self) -> None:
        if not self._ready:
            try:
                self.store.setup()
            except OSError as e:
                raise ClusterAPIServerError(f"Local state directory {self.store.root}: {e}") from None
            self._ready = True

    # ------------------------------------------------------------------ interface
    def check_api(self) -> bool:
        try:
            self._setup()
        except ClusterAPIError:
            return False
        return os.access(self.store.root, os.W_OK)

    def submit(self, request: JobRequest, user: str) -> list[int]:
        """One array file for the whole request (cheap for thousands of tasks)."""
        self._setup()
        params = list(request.params)
        if any("\n" in p for p in params):
            raise ClusterAPIError("A parameter line contains a newline", code="SUBMIT_JOB", event_open=False)
        ncores, rs_walltime = parse_resources(request.resources, self.cores)
        try:
            walltime = parse_walltime(request.walltime) if request.walltime else rs_walltime
        except ValueError:
            raise ClusterAPIError(f"Bad walltime {request.walltime!r}", code="SUBMIT_JOB",
                                  event_open=False) from None
        owner = self.mapping.get(user, user) if user else self.run_as
        if owner != self.run_as:
            # A task runs as the executor's user: someone else's task would run with that
            # user's rights. A machine shared by several users needs a batch scheduler.
            raise ClusterAPIForbidden(f"The local cluster {self.cluster.name} runs tasks as {self.run_as} only: "
                                      f"it refuses the tasks of {owner}")
        count = len(params) or 1
        first = self.store.alloc_ids(count)
        types = [t for t in request.types if t]
        directory = expand_dir(request.directory)
        outdir = None
        if params and request.name and request.stdout is None and request.stderr is None:
            # One directory per campaign, one file per task named by the task.
            outdir = f"{request.name}.out"
            with contextlib.suppress(OSError):  # (no directory: the task fails to start, and says so)
                os.makedirs(os.path.join(directory, outdir), exist_ok=True)
        spec = {
            "first": first, "count": count, "command": request.command,
            "params": params if params else None, "name": request.name, "outdir": outdir,
            "directory": directory, "stdout": request.stdout, "stderr": request.stderr,
            "owner": owner, "types": types, "besteffort": "besteffort" in types,
            "ncores": ncores, "walltime": walltime, "submission_time": now(),
            "resources": request.resources, "property": request.property, "project": request.project,
        }
        self.store.write_array(spec)
        self.store.ensure_executor(self.cores)
        return list(range(first, first + count))

    def get_job(self, remote_id: int, user: str | None = None) -> RemoteJob:
        try:
            rid = int(remote_id)
        except (TypeError, ValueError):
            raise ClusterAPINotFound(f"Job {remote_id} not found on {self.cluster.name}") from None
        rec = self.store.read_job(rid)
        if rec is None:
            raise ClusterAPINotFound(f"Job {remote_id} not found on {self.cluster.name}")
        if rec.get("state") == store.WAITING:
            self.store.ensure_executor(self.cores)  # waiting work needs a live executor
        return _to_remote(rec)

    def get_jobs(self, remote_ids: Sequence[int]) -> dict[int, RemoteJob]:
        ids = []
        for rid in remote_ids:
            try:
                ids.append(int(rid))
            except (TypeError, ValueError):
                continue
        recs = self.store.read_jobs(ids, self._waiting)
        out: dict[int, RemoteJob] = {}
        waiting = False
        for rid, rec in recs.items():
            if rec is None:  # still waiting: nothing changed since the last look
                out[rid] = self._waiting[rid]
                waiting = True
                continue
            out[rid] = job = _to_remote(rec)
            if rec.get("state") == store.WAITING:
                waiting = True
                if len(self._waiting) > 200_000:
                    self._waiting.clear()
                self._waiting[rid] = job
            else:
                self._waiting.pop(rid, None)
        if waiting:
            self.store.ensure_executor(self.cores)
        return out

    def delete_job(self, remote_id: int, user: str) -> None:
        rec = self.store.read_job(int(remote_id))
        if rec is None:
            raise ClusterAPINotFound(f"Job {remote_id} not found on {self.cluster.name}")
        if rec.get("state") == store.ENDED:
            return
        self._setup()
        self.store.request_delete(int(remote_id))
        self.store.ensure_executor(self.cores)

    def get_file(self, path: str, user: str, tail: int = 0) -> str:
        """A task's output, opened as its owner would: a regular file of the owner's, reached
        without any symbolic link (a task cannot point its output at someone else's file)."""
        p = os.path.abspath(os.path.expandvars(os.path.expanduser(path)))
        if os.path.islink(os.path.dirname(p)):
            raise ClusterAPIForbidden(f"{path} is reached through a symbolic link: not served")
        try:
            fd = os.open(p, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY)
        except FileNotFoundError:
            raise ClusterAPINotFound(f"File {path} not found") from None
        except PermissionError:
            raise ClusterAPIForbidden(f"Permission denied reading {path}") from None
        except OSError as e:  # ELOOP: the file itself is a link
            raise ClusterAPIForbidden(f"{path}: {e.strerror}: not served") from None
        with os.fdopen(fd, "rb") as f:
            st = os.fstat(f.fileno())
            if stat.S_ISDIR(st.st_mode):
                raise ClusterAPINotFound(f"{path} is a directory")
            if not stat.S_ISREG(st.st_mode):
                raise ClusterAPIForbidden(f"{path} is not a regular file: not served")
            if st.st_uid != self._uid(user):
                raise ClusterAPIForbidden(f"{path} does not belong to {user}: not served")
            data = _tail_bytes(f, tail) if tail and tail > 0 else f.read()
        return clean_text(data.decode("utf-8", errors="replace"), limit=None)

    def _uid(self, user: str) -> int:
        """The local account of a grid user (tasks only ever run as the executor's user)."""
        import pwd

        try:
            return pwd.getpwnam(self.mapping.get(user, user) if user else self.run_as).pw_uid
        except KeyError:
            return -1

    def delete_file(self, path: str, user: str) -> None:
        p = os.path.expandvars(os.path.expanduser(path))
        try:
            os.unlink(p)
        except FileNotFoundError:
            raise ClusterAPINotFound(f"File {path} not found") from None
        except PermissionError:
            raise ClusterAPIForbidden(f"Permission denied deleting {path}") from None

    def get_resources(self) -> list[dict[str, Any]]:
        host = socket.gethostname()
        res = [{"id": i, "resource_id": i, "core": i, "cpu": 1, "cpuset": i - 1, "state": "Alive",
                "available": True, "network_address": host, "host": host, "type": "default", "besteffort": "YES",
                "available_upto": 2147483647, "cluster": self.cluster.name}
               for i in range(1, self.cores + 1)]
        wanted = _properties_filter(self.cluster.properties)
        return [r for r in res if all(str(r.get(k)) == v for k, v in wanted)]

    def get_running_jobs(self) -> list[RemoteJob]:
        return [_to_remote(r) for r in self.store.running_records()]

    def get_stress_factor(self) -> float:
        return 0.0

    def wakeup_fd(self) -> int | None:
        """The executor writes to the progress FIFO when it runs out of work or runs low."""
        try:
            self._setup()
            return self.store.open_progress()
        except (OSError, ClusterAPIError):
            return None


def _tail_bytes(f: Any, lines: int) -> bytes:
    """Last `lines` lines of a file, reading backwards (stderr files can be large)."""
    f.seek(0, os.SEEK_END)
    size = f.tell()
    block = 8192
    data = b""
    pos = size
    while pos > 0 and data.count(b"\n") <= lines:
        step = min(block, pos)
        pos -= step
        f.seek(pos)
        data = f.read(step) + data
    parts = data.splitlines(keepends=True)
    return b"".join(parts[-lines:])
