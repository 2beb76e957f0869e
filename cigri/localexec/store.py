"""On-disk state of the local executor, shared by the adapter (client side) and the
executor (server side). Everything is a file so that nothing is lost when a process dies:

    <state>/next_id (+ next_id.lock)   id allocator (flock)
    <state>/arrays/<first>.json         one submission (array): its task definitions
    <state>/arrays/<first>.log          its ended tasks, one JSON line each (append-only)
    <state>/arrays/done/<first>.*       the same two files once every task of it has ended
    <state>/slots/<core>                the task running on that core (its first core),
                                        flock-ed by its shepherd while it lives
    <state>/slots/<core>.out|.err       that task's stdout and stderr while it runs (moved to
                                        the task's own files when it ends, unless empty)
    <state>/ctl/<id>.del                deletion requests for the executor
    <state>/wake.fifo                   wakes the executor (no reader = executor not running)
    <state>/progress.fifo               the executor wakes the runner (out of work, or running low)
    <state>/executor.lock|pid|log       singleton lock, pid, log of the executor

A slot file is rewritten for each task it runs, then append-only: line 1 is the JSON
record written at start, then `P <pid>` (the shepherd), maybe `R <REASON>` (why the
executor killed it), then the exit status (`$?`, `wd` = working directory error, `lost`).
The executor appends the ended task to its array's log before it reuses the slot, so a
started task is always in its slot, its array's log, or both (readers read slots first).
No file is created or renamed per task: per-task file creation was the bottleneck.

A task is waiting (only in its array), running (in a locked slot, no status), or ended.
A running task whose slot lock is free and without a status line has lost its shepherd:
it is reported ended, `lost` (CiGri resubmits it)."""

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
from collections.abc import Container, Sequence
from pathlib import Path
from typing import Any

from cigri import fifo

Record = dict[str, Any]

#: A task's states in the executor's records, and why it ended when it did not end by
#: itself: the words of CiGri's job outcomes (cigri.clusters.base.Outcome).
WAITING, RUNNING, ENDED = "waiting", "running", "ended"
WALLTIME, PREEMPTED, KILLED, FAILED_TO_START, LOST = "walltime", "preempted", "killed", "failed_to_start", "lost"


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
    """The requested template with %jobid% / %jobname% substituted, by default
    `<name>.<id>.stdout` (`job.<id>.stdout` for a job without a name)."""
    if not template:
        template = f"{name or 'job'}.%jobid%.{which}"
    return template.replace("%jobid%", str(job_id)).replace("%jobname%", name or "")


_UNSAFE = re.compile(r"[^\w.+=@,-]")


def task_file_name(param: str | None, job_id: int) -> str:
    """A task's output file name: its name (the first word of its parameter line), made safe."""
    word = param.split(None, 1)[0] if param and param.strip() else ""
    name = _UNSAFE.sub("_", word)[:120]
    if not name or name.startswith("."):
        name = f"_{name}" if name else str(job_id)
    return name


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


REASON_TEXT = {WALLTIME: "killed at its walltime", PREEMPTED: "best-effort task preempted by a normal task",
               KILLED: "killed on request", FAILED_TO_START: "cannot enter its working directory",
               LOST: "its shepherd died (machine or executor killed): task lost"}


def parse_task_file(text: str, stop_time: int | None = None) -> Record | None:
    """A slot file (or a log line's source) -> the task's record: state, and once ended its
    exit_code (a wait status), or the reason it was ended."""
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
    code: int | None = None
    if status == "wd":
        reason = FAILED_TO_START
    elif status == "lost":
        if reason:
            code = 9  # SIGKILL-ed on purpose after the grace delay
        else:
            reason = LOST
    elif status != "none":
        try:
            s = int(status)
        except ValueError:
            s = 255
        # sh reports a death by signal n as 128+n: kept as a wait status
        code = (s - 128) if s > 128 else (s << 8)
    rec["state"] = ENDED
    rec["exit_code"] = code
    rec["stop_time"] = stop_time or now()
    rec["reason"] = reason
    rec["detail"] = REASON_TEXT.get(reason, reason) if reason else ""
    return rec


def read_task_file(path: str, raw: bool = False) -> tuple[Record | None, bool]:
    """(record, ended) from a slot file; (None, False) if it is missing or being rewritten.
    The record holds what changes while a task runs (merge it into `task_record`).

    A task whose status is written but whose outputs are still in the slot's files (the
    executor moves them when it reaps the shepherd) is shown running: whoever sees a task
    ended finds its outputs in place. `raw`: the status as written (for the executor)."""
    try:
        with open(path) as f:
            text = f.read()
            mtime = int(os.fstat(f.fileno()).st_mtime)
    except FileNotFoundError:
        return None, False
    rec = parse_task_file(text, mtime)
    ended = bool(rec is not None and rec.get("state") == ENDED)
    if ended and not raw and outputs_pending(path):
        assert rec is not None
        rec = {k: v for k, v in rec.items() if k not in ("exit_code", "stop_time", "reason", "detail")}
        rec["state"] = RUNNING
        return rec, False
    return rec, ended


def outputs_pending(slot_path: str) -> bool:
    """Is there output of the slot's last task still to move to the task's files?"""
    for ext in (".out", ".err"):
        try:
            if os.stat(slot_path + ext).st_size:
                return True
        except FileNotFoundError:
            pass
    return False


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


#: the fields of a task that change after submission (slot records and log lines)
LIVE_FIELDS = ("state", "start_time", "stop_time", "exit_code", "reason", "detail", "cores", "shepherd")


def log_entry(rec: Record) -> bytes:
    return (json.dumps({k: rec.get(k) for k in ("id", *LIVE_FIELDS)}, separators=(",", ":")) + "\n").encode()


class _ArrayLog:
    """The parsed part of one array's log (lines are immutable: read only what was added)."""

    __slots__ = ("offset", "ended", "used")

    def __init__(self) -> None:
        self.offset = 0
        self.ended: dict[int, Record] = {}
        self.used = 0.0


class Store:
    """Paths and file operations of one state directory."""

    def __init__(self, root: str | os.PathLike[str]):
        self.root = Path(root)
        self.arrays = self.root / "arrays"
        self.arrays_done = self.arrays / "done"
        self.slots = self.root / "slots"
        self.ctl = self.root / "ctl"
        self.fifo = self.root / "wake.fifo"
        self.progress_fifo = self.root / "progress.fifo"
        self.lock_file = self.root / "executor.lock"
        self.pid_file = self.root / "executor.pid"
        self.log_file = self.root / "executor.log"
        self._slots = str(self.slots) + "/"
        self._array_cache: dict[str, Record] = {}
        self._firsts_cache: dict[int, tuple[float, list[int]]] = {}
        self._logs: dict[int, _ArrayLog] = {}

    def setup(self) -> None:
        for d in (self.root, self.arrays, self.arrays_done, self.slots, self.ctl):
            d.mkdir(mode=0o700, parents=True, exist_ok=True)
        # Every task's command and parameters are in here: the executor's user's eyes only.
        if self.root.stat().st_mode & 0o077:
            self.root.chmod(0o700)
        if not self.fifo.exists():
            os.close(fifo.listen(self.fifo))

    # ------------------------------------------------------------------ paths
    def slot_path(self, slot: int) -> str:
        return f"{self._slots}{slot}"

    def log_path(self, first: int, archived: bool = False) -> str:
        return f"{self.arrays_done if archived else self.arrays}/{first}.log"

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
                if len(self._array_cache) > 32:
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

    def array_of(self, job_id: int) -> tuple[Record, bool] | None:
        """(spec, archived) of the array that defines a job."""
        for archived in (False, True):
            for fresh in (False, True):
                firsts = self._firsts(archived, fresh)
                i = bisect.bisect_right(firsts, job_id) - 1
                if i >= 0:
                    spec = self.load_array(f"{firsts[i]}.json", archived)
                    if spec and job_id < spec["first"] + spec["count"]:
                        return spec, archived
        return None

    # ------------------------------------------------------------------ array logs
    def read_log(self, first: int) -> dict[int, Record]:
        """The ended tasks of an array (incremental: only new lines are parsed)."""
        log = self._logs.get(first)
        if log is None:
            if len(self._logs) >= 8:  # the runner follows a few arrays at a time (each holds its ended tasks)
                oldest = min(self._logs, key=lambda k: self._logs[k].used)
                del self._logs[oldest]
            log = self._logs[first] = _ArrayLog()
        log.used = time.monotonic()
        for archived in (False, True):
            try:
                with open(self.log_path(first, archived), "rb") as f:
                    f.seek(log.offset)
                    data = f.read()
            except FileNotFoundError:
                continue
            end = data.rfind(b"\n") + 1  # a line being written is read next time
            for line in data[:end].splitlines():
                with contextlib.suppress(ValueError, KeyError, TypeError):
                    e = json.loads(line)
                    log.ended.setdefault(int(e["id"]), e)
            log.offset += end
            break
        return log.ended

    def append_log(self, first: int, recs: Sequence[Record], archived: bool = False) -> None:
        """Record ended tasks in their array's log (one write: lines are never torn)."""
        if not recs:
            return
        fd = os.open(self.log_path(first, archived), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            os.write(fd, b"".join(log_entry(r) for r in recs))
        finally:
            os.close(fd)

    # ------------------------------------------------------------------ job reading
    def lock_alive(self, path: str) -> bool | None:
        """True: the shepherd holding this slot lives; False: lock free; None: no file."""
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

    def slot_names(self) -> list[int]:
        try:
            return [int(n) for n in os.listdir(self.slots) if n.isdigit()]
        except FileNotFoundError:
            return []

    def read_slots(self) -> dict[int, tuple[int, Record, bool]]:
        """job id -> (slot, record, ended) of every task in a slot."""
        out: dict[int, tuple[int, Record, bool]] = {}
        for slot in self.slot_names():
            rec, ended = read_task_file(self.slot_path(slot))
            if rec is not None and isinstance(rec.get("id"), int):
                out[rec["id"]] = (slot, rec, ended)
        return out

    def read_jobs(self, job_ids: Sequence[int], known_waiting: Container[int] = ()) -> dict[int, Record | None]:
        """Current records of jobs (unknown ones are left out; None for the jobs of
        `known_waiting` that still wait: the caller has their record). Slots are read
        before the logs: a task leaves its slot only once it is in its log. A running task
        whose shepherd died while no executor runs is marked lost here (else the executor
        does)."""
        slots = self.read_slots()
        out: dict[int, Record | None] = {}
        logs: dict[int, dict[int, Record]] = {}
        executor: bool | None = None
        spec: Record | None = None
        for job_id in job_ids:
            if spec is None or not spec["first"] <= job_id < spec["first"] + spec["count"]:
                found = self.array_of(job_id)  # (polled ids come sorted: mostly the same array)
                if found is None:
                    spec = None
                    continue
                spec = found[0]
            first = spec["first"]
            ended = logs.get(first)
            if ended is None:
                ended = logs[first] = self.read_log(first)
            if job_id not in ended and job_id not in slots and job_id in known_waiting:
                out[job_id] = None
                continue
            rec = task_record(spec, job_id)
            if job_id in ended:
                rec.update(ended[job_id])
            elif job_id in slots:
                slot, live, done = slots[job_id]
                rec.update(live)
                if not done:
                    # A live executor watches its shepherds itself: probe the slot lock only
                    # when none runs (a probe delays the executor's own lock on that slot).
                    if executor is None:
                        executor = self.executor_running()
                    if not executor and self.lock_alive(self.slot_path(slot)) is False:
                        rec.update(self.mark_lost(slot) or {})
            out[job_id] = rec
        return out

    def read_job(self, job_id: int) -> Record | None:
        return self.read_jobs([job_id]).get(job_id)

    def mark_lost(self, slot: int, log: bool = True) -> Record | None:
        """The slot is unlocked and has no status: its shepherd died. Record it as lost
        (in the slot and, unless the executor does it, in its array's log) and kill what
        is left of the task."""
        path = self.slot_path(slot)
        rec, ended = read_task_file(path, raw=True)
        if rec is None or ended or self.lock_alive(path) is not False:
            return rec
        append_line(path, "lost")
        if rec.get("shepherd"):  # what is left of the task (its process group)
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(int(rec["shepherd"]), 9)
        rec, _ = read_task_file(path, raw=True)
        found = self.array_of(rec["id"]) if rec and log else None
        if rec is not None and found is not None:
            self.append_log(found[0]["first"], [rec])
        return rec

    def running_records(self) -> list[Record]:
        out = []
        for job_id, (_slot, live, ended) in self.read_slots().items():
            if not ended:
                found = self.array_of(job_id)
                rec = task_record(found[0], job_id) if found else {"id": job_id}
                rec.update(live)
                out.append(rec)
        return out

    # ------------------------------------------------------------------ executor control
    def wake(self) -> bool:
        """Poke the executor; False when none is running."""
        return fifo.poke(self.fifo)

    def ensure_executor(self, cores: int) -> None:
        """Wake the executor, starting it (detached) if it is not running."""
        if self.wake():
            return
        self.setup()
        with open(self.log_file, "a") as log:
            subprocess.run(
                [sys.executable, "-P", "-m", "cigri.localexec.executor", str(self.root), "--cores", str(cores),
                 "--daemon"],
                stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True, close_fds=True,
                check=False, timeout=60)
        self.wake()

    def open_progress(self) -> int:
        """The reading end of the progress FIFO (non-blocking; the caller selects on it)."""
        return fifo.listen(self.progress_fifo)

    def tell_progress(self) -> None:
        """Wake whoever follows this executor's tasks (nobody listening is fine)."""
        with contextlib.suppress(OSError):
            fifo.poke(self.progress_fifo)

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
    base = spec.get("_base")
    if base is None:  # what all the tasks of the array share (arrays are cached, never changed)
        name = spec.get("name")
        base = spec["_base"] = {
            "array_id": spec["first"], "name": name, "launching_directory": spec["directory"],
            "owner": spec.get("owner"), "queue": "besteffort" if spec.get("besteffort") else "default",
            "besteffort": bool(spec.get("besteffort")), "ncores": spec.get("ncores", 1),
            "walltime": spec.get("walltime"), "submission_time": spec["submission_time"],
            "state": WAITING, "exit_code": None, "start_time": None, "stop_time": None,
        }
    rec = dict(base)
    outdir = spec.get("outdir")
    if outdir:  # local mode's default: <outdir>/<task name>.stdout|stderr
        stem = f"{outdir}/{task_file_name(params[i] if params else None, job_id)}"
        out, err = f"{stem}.stdout", f"{stem}.stderr"
    else:
        out = output_name(spec.get("stdout"), "stdout", base["name"], job_id)
        err = output_name(spec.get("stderr"), "stderr", base["name"], job_id)
    rec.update(id=job_id, array_index=i + 1,
               command=spec["command"] if params is None else f"{spec['command']} {params[i]}",
               stdout_file=out, stderr_file=err, types=list(spec.get("types", [])), reason=None, cores=[])
    return rec
