"""On-disk state of the local executor, shared by the adapter (client side) and the
executor (server side). Everything is a file so that nothing is lost when a process dies:

    <state>/next_id (+ next_id.lock)   id allocator (flock)
    <state>/arrays/<first>.json         one submission (array): its task definitions
    <state>/arrays/done/<first>.json    the same once every task of it has ended
    <state>/running/<id>                a started task, flock-ed by its shepherd while it lives
    <state>/done/<id//1000>/<id>        the same file, moved there once the task has ended
    <state>/ctl/<id>.del                deletion requests for the executor
    <state>/wake.fifo                   wakes the executor (no reader = executor not running)
    <state>/executor.lock|pid|log       singleton lock, pid, log of the executor

A task file is append-only: line 1 is the JSON record written at start, then maybe
`R <REASON>` (why the executor killed it), then the exit status the shepherd appends
(`$?`, `wd` = working directory error, `lost`, `none` = never started). One file
creation per task, and a rename when it ends: the local filesystem is the bottleneck.

A task is Waiting (only in an array), Running (task file locked, no status), or ended.
A running task whose lock is free and without a status line has lost its shepherd: it is
reported as Error with an EXTERMINATE event (CiGri resubmits it)."""

from __future__ import annotations

import bisect
import contextlib
import errno
import fcntl
import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

Record = dict[str, Any]

LOST_EVENT = "EXTERMINATE"


def now() -> int:
    return int(time.time())


def parse_walltime(text: str | None) -> int | None:
    """'HH:MM:SS', 'MM:SS' or 'SS' -> seconds (None: no limit)."""
    if not text:
        return None
    parts = [int(p) for p in str(text).strip().split(":")]
    secs = 0
    for p in parts:
        secs = secs * 60 + p
    return secs if secs > 0 else None


_NUM = re.compile(r"([A-Za-z_]+)\s*=\s*(\d+|ALL|BEST|MAX)", re.I)


def parse_resources(text: str | None, cores: int) -> tuple[int, int | None]:
    """OAR resource request -> (cores needed, walltime seconds found in it).

    `/nodes=1/core=2` needs 2 cores; every level multiplies; ALL/BEST/MAX = every core."""
    need = 1
    walltime = None
    if text:
        m = re.search(r"walltime\s*=\s*([\d:]+)", text)
        if m:
            walltime = parse_walltime(m.group(1))
        spec = re.sub(r",?\s*walltime\s*=\s*[\d:]+", "", text)
        for key, val in _NUM.findall(spec):
            if key.lower() == "walltime":
                continue
            need *= cores if val.upper() in ("ALL", "BEST", "MAX") else int(val)
    return max(1, min(need, cores)), walltime


def output_name(template: str | None, which: str, name: str | None, job_id: int) -> str:
    """OAR's default output names (`OAR.<name>.<id>.stdout`, `OAR.<id>.stdout`) or the
    requested template with %jobid% / %jobname% substituted."""
    if not template:
        template = f"OAR.{name}.%jobid%.{which}" if name else f"OAR.%jobid%.{which}"
    return template.replace("%jobid%", str(job_id)).replace("%jobname%", name or "")


def expand_dir(directory: str | None) -> str:
    d = directory or "$HOME"
    d = os.path.expandvars(os.path.expanduser(d))
    if d.startswith("~"):
        d = os.path.expanduser(d)
    return os.path.abspath(d)


def write_json_atomic(path: Path, data: Any) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w") as f:
        json.dump(data, f)
    os.replace(tmp, path)


def read_json(path: Path) -> Any:
    try:
        with open(path) as f:
            return json.load(f)
    except FileNotFoundError:
        return None
    except ValueError:
        return None


KILL_TEXT = {"WALLTIME": "walltime reached", "BESTEFFORT_KILL": "best-effort job preempted by a normal job",
             "FRAG_JOB_REQUEST": "deletion requested", "WORKING_DIRECTORY": "cannot enter the working directory",
             LOST_EVENT: "shepherd died (machine or executor killed): task lost"}


def parse_task_file(text: str, stop_time: int | None = None) -> Record | None:
    """A task file -> the job as OAR reports it."""
    lines = text.split("\n")
    try:
        rec: Record = json.loads(lines[0])
    except ValueError:
        return None
    if not isinstance(rec, dict):
        return None
    reason = status = None
    for line in lines[1:]:
        if not line:
            continue
        if line.startswith("P "):
            rec["shepherd"] = int(line[2:])
        elif line.startswith("R "):
            if status is None and reason is None:  # a kill after the end does not count
                reason = line[2:].strip()
        elif status is None:
            status = line.strip()
    if status is None:
        return rec
    events = list(rec.get("events") or [])
    code: int | None = None
    if status == "wd":
        reason = "WORKING_DIRECTORY"
    elif status == "lost":
        if reason:
            code = 9  # SIGKILL-ed on purpose after the grace delay
        else:
            reason = LOST_EVENT
    elif status != "none":
        try:
            s = int(status)
        except ValueError:
            s = 255
        # sh reports a death by signal n as 128+n; OAR gives the raw wait status.
        code = (s - 128) if s > 128 else (s << 8)
    rec["state"] = "Error" if reason else "Terminated"
    rec["exit_code"] = code
    rec["stop_time"] = stop_time or now()
    if reason:
        events.append({"type": reason, "date": rec["stop_time"], "job_id": rec["id"], "to_check": "NO",
                       "description": f"Job {rec['id']}: {KILL_TEXT.get(reason, reason)}"})
    rec["events"] = events
    return rec


def read_task_file(path: str) -> tuple[Record | None, bool]:
    """(job, ended) from a task file; (None, False) if there is no such file."""
    try:
        with open(path) as f:
            text = f.read()
            mtime = int(os.fstat(f.fileno()).st_mtime)
    except FileNotFoundError:
        return None, False
    rec = parse_task_file(text, mtime)
    return rec, bool(rec is not None and rec.get("state") in ("Terminated", "Error"))


def append_line(path: str, line: str) -> bool:
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND)
    except FileNotFoundError:
        return False
    try:
        os.write(fd, (line + "\n").encode())
    finally:
        os.close(fd)
    return True


class Store:
    """Paths and file operations of one state directory."""

    def __init__(self, root: str | os.PathLike[str]):
        self.root = Path(root)
        self.arrays = self.root / "arrays"
        self.arrays_done = self.arrays / "done"
        self.running = self.root / "running"
        self.done = self.root / "done"
        self.ctl = self.root / "ctl"
        self.fifo = self.root / "wake.fifo"
        self.lock_file = self.root / "executor.lock"
        self.pid_file = self.root / "executor.pid"
        self.log_file = self.root / "executor.log"
        self._run = str(self.running) + "/"
        self._done = str(self.done) + "/"
        self._shards: set[int] = set()
        self._array_cache: dict[str, Record] = {}
        self._firsts_cache: dict[int, tuple[float, list[int]]] = {}

    def setup(self) -> None:
        for d in (self.root, self.arrays, self.arrays_done, self.running, self.done, self.ctl):
            d.mkdir(parents=True, exist_ok=True)
        if not self.fifo.exists():
            with contextlib.suppress(FileExistsError):
                os.mkfifo(self.fifo, 0o600)

    # ------------------------------------------------------------------ paths
    def done_path(self, job_id: int) -> str:
        return f"{self._done}{job_id // 1000}/{job_id}"

    def run_path(self, job_id: int) -> str:
        return f"{self._run}{job_id}"

    # ------------------------------------------------------------------ ids and arrays
    def alloc_ids(self, n: int) -> int:
        """Reserve n consecutive ids; returns the first one."""
        with open(self.root / "next_id.lock", "a+") as lk:
            fcntl.flock(lk, fcntl.LOCK_EX)
            p = self.root / "next_id"
            try:
                first = int(p.read_text().strip() or "1")
            except FileNotFoundError:
                first = 1
            write_json_atomic(p, first + n)
            return first

    def write_array(self, spec: Record) -> None:
        write_json_atomic(self.arrays / f"{spec['first']}.json", spec)

    def active_arrays(self) -> list[str]:
        try:
            return [n for n in os.listdir(self.arrays) if n.endswith(".json") and n[:-5].isdigit()]
        except FileNotFoundError:
            return []

    def load_array(self, name: str, archived: bool = False) -> Record | None:
        """Arrays never change once written: cache them by name."""
        key = ("done/" if archived else "") + name
        spec = self._array_cache.get(key)
        if spec is None:
            spec = read_json((self.arrays_done if archived else self.arrays) / name)
            if spec is not None:
                if len(self._array_cache) > 256:
                    self._array_cache.clear()
                self._array_cache[key] = spec
        return spec

    def _firsts(self, archived: bool, fresh: bool) -> list[int]:
        """Sorted first ids of the arrays (active ones listed at most every 0.5 s: a poll
        of thousands of waiting jobs lists the directory once)."""
        key = int(archived)
        t = time.monotonic()
        cached = self._firsts_cache.get(key)
        if cached is not None and not fresh and t - cached[0] < 0.5:
            return cached[1]
        try:
            names = os.listdir(self.arrays_done) if archived else self.active_arrays()
        except FileNotFoundError:
            names = []
        firsts = sorted(int(n[:-5]) for n in names if n.endswith(".json") and n[:-5].isdigit())
        self._firsts_cache[key] = (t, firsts)
        return firsts

    def find_in_arrays(self, job_id: int) -> Record | None:
        """The waiting record of a job from the array that defines it."""
        for archived in (False, True):
            for fresh in (False, True):
                firsts = self._firsts(archived, fresh)
                i = bisect.bisect_right(firsts, job_id) - 1
                if i >= 0:
                    spec = self.load_array(f"{firsts[i]}.json", archived)
                    if spec and job_id < spec["first"] + spec["count"]:
                        return task_record(spec, job_id)
        return None

    # ------------------------------------------------------------------ job reading
    def lock_alive(self, path: str) -> bool | None:
        """True: the shepherd holding this task file lives; False: lock free; None: no file."""
        try:
            fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError:
            return None
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError as e:
            if e.errno in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                return True
            raise
        finally:
            os.close(fd)
        return False

    def read_job(self, job_id: int) -> Record | None:
        """Current record of a job (None: unknown). An ended task is moved to done/ by
        whoever sees it first; a task whose shepherd died is marked lost."""
        for _ in range(4):
            rec, _ended = read_task_file(self.done_path(job_id))
            if rec is not None:
                return rec
            rp = self.run_path(job_id)
            rec, ended = read_task_file(rp)
            if rec is not None:
                if ended:
                    self.move_done(job_id)
                    return rec
                alive = self.lock_alive(rp)
                if alive:
                    return rec
                if alive is False:
                    self.mark_lost(job_id)
                continue
            rec = self.find_in_arrays(job_id)
            if rec is not None and not os.path.exists(rp) and not os.path.exists(self.done_path(job_id)):
                return rec
            if rec is None and not os.path.exists(rp):
                break
        return read_task_file(self.done_path(job_id))[0]

    def move_done(self, job_id: int) -> None:
        """An ended task file goes to done/ (a rename: cheap and atomic)."""
        dst = self.done_path(job_id)
        try:
            os.rename(self.run_path(job_id), dst)
        except FileNotFoundError:
            shard = os.path.dirname(dst)
            if os.path.isdir(shard):
                return  # someone else moved it
            os.makedirs(shard, exist_ok=True)
            with contextlib.suppress(FileNotFoundError):
                os.rename(self.run_path(job_id), dst)

    def mark_lost(self, job_id: int) -> None:
        """The task file is unlocked and has no status: its shepherd died."""
        rp = self.run_path(job_id)
        rec, ended = read_task_file(rp)
        if rec is not None and not ended and self.lock_alive(rp) is False:
            append_line(rp, "lost")
            if rec.get("shepherd"):  # what is left of the task (its process group)
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(int(rec["shepherd"]), 9)
        self.move_done(job_id)

    def write_done(self, rec: Record, lines: Sequence[str] = ()) -> None:
        """A task that ends without having run (deleted while waiting)."""
        dst = self.done_path(rec["id"])
        os.makedirs(os.path.dirname(dst), exist_ok=True)
        tmp = f"{self._run}.{rec['id']}.done.tmp"
        with open(tmp, "w") as f:
            f.write(json.dumps(rec) + "\n" + "".join(f"{line}\n" for line in lines))
        os.replace(tmp, dst)

    def running_records(self) -> list[Record]:
        out = []
        try:
            names = os.listdir(self.running)
        except FileNotFoundError:
            return out
        for n in names:
            if n.isdigit():
                rec = self.read_job(int(n))
                if rec is not None and rec.get("state") == "Running":
                    out.append(rec)
        return out

    # ------------------------------------------------------------------ executor control
    def wake(self) -> bool:
        """Poke the executor; False when none is running."""
        try:
            fd = os.open(self.fifo, os.O_WRONLY | os.O_NONBLOCK)
        except OSError as e:
            if e.errno in (errno.ENXIO, errno.ENOENT):
                return False
            raise
        try:
            os.write(fd, b"w")
        except BlockingIOError:
            pass
        finally:
            os.close(fd)
        return True

    def ensure_executor(self, cores: int) -> None:
        """Wake the executor, starting it (detached) if it is not running."""
        if self.wake():
            return
        self.setup()
        with open(self.log_file, "a") as log:
            subprocess.run(
                [sys.executable, "-m", "cigri.localexec.executor", str(self.root), "--cores", str(cores),
                 "--daemon"],
                stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True, close_fds=True,
                check=False, timeout=60)
        self.wake()

    def request_delete(self, job_id: int) -> None:
        (self.ctl / f"{job_id}.del").touch()

    def executor_pid(self) -> int | None:
        try:
            return int(self.pid_file.read_text().strip())
        except (FileNotFoundError, ValueError):
            return None

    def executor_running(self) -> bool:
        try:
            fd = os.open(self.lock_file, os.O_RDONLY)
        except FileNotFoundError:
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            return False
        except OSError:
            return True
        finally:
            os.close(fd)

    def stop_executor(self, timeout: float = 30.0) -> bool:
        """SIGTERM the executor (running tasks go on; a new executor adopts them)."""
        import signal

        pid = self.executor_pid()
        if pid is None or not self.executor_running():
            return True
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.executor_running():
                return True
            time.sleep(0.05)
        return False


def task_record(spec: Record, job_id: int) -> Record:
    """The Waiting record of one task of an array."""
    i = job_id - spec["first"]
    params = spec.get("params")
    command = spec["command"] if params is None else f"{spec['command']} {params[i]}"
    name = spec.get("name")
    return {
        "id": job_id, "array_id": spec["first"], "array_index": i + 1, "name": name, "command": command,
        "launching_directory": spec["directory"],
        "stdout_file": output_name(spec.get("stdout"), "stdout", name, job_id),
        "stderr_file": output_name(spec.get("stderr"), "stderr", name, job_id),
        "owner": spec.get("owner"), "types": spec.get("types", []),
        "queue": "besteffort" if spec.get("besteffort") else "default",
        "besteffort": bool(spec.get("besteffort")), "ncores": spec.get("ncores", 1),
        "walltime": spec.get("walltime"), "submission_time": spec["submission_time"],
        "state": "Waiting", "exit_code": None, "start_time": None, "stop_time": None, "events": [],
        "cores": [],
    }
