"""The local executor daemon: runs the tasks of one state directory on at most `cores`
cores, normal tasks first, preempting best-effort tasks when a normal task needs a core.

Each task runs under a shepherd: a `/bin/sh` started with posix_spawn in its own
session, holding the lock of the slot file of the task's first core, that runs the task
(as a brace group, so a builtin command costs no fork) and appends its exit status to
that file. Shepherds outlive the executor; a new executor adopts them from the slot
files. The executor enforces walltimes, deletions and best-effort preemption by writing
the reason in the slot file and killing the task's process group; it appends each ended
task to its array's log before reusing its slot.

Run as `python -m cigri.localexec.executor STATE_DIR --cores N [--daemon]`; the
adapter starts it on demand. It exits by itself after a while without work."""

from __future__ import annotations

import argparse
import collections
import contextlib
import errno
import fcntl
import functools
import json
import os
import select
import shlex
import shutil
import signal
import sys
import time
import traceback
from dataclasses import dataclass, field
from typing import Any

from cigri import fifo
from cigri.localexec.store import (
    KILLED,
    PREEMPTED,
    RUNNING,
    WAITING,
    WALLTIME,
    Record,
    Store,
    append_line,
    now,
    parse_task_file,
    read_task_file,
    task_record,
)

KILL_GRACE = 2  # seconds between SIGTERM and SIGKILL of a killed task
IDLE_EXIT = 120.0  # seconds without any work before the executor exits
RESCAN = 2.0  # seconds between two scans of the arrays directory when not woken
KEEP_DONE = 7 * 86400  # seconds ended tasks are remembered (purged when an executor starts)


@dataclass
class Run:
    pid: int
    child: bool
    besteffort: bool
    slot: int
    cores: list[int] = field(default_factory=list)
    preempting: bool = False
    start: float = 0.0
    deadline: float | None = None
    kill_at: float | None = None
    outputs: tuple[str, ...] = ()  # its stdout and stderr files (removed at the end if empty)


def log(msg: str) -> None:
    print(f"[{time.strftime('%Y-%m-%d %H:%M:%S')}][executor {os.getpid()}] {msg}", flush=True)


@functools.lru_cache(maxsize=4096)
def _quote(text: str) -> str:
    return shlex.quote(text)  # the directory and name of thousands of tasks of an array


def shepherd_script(store: Store, rec: Record) -> str:
    """The shepherd: enter the directory, run the task with fd 9 (the lock) closed, append
    its exit status. A kill (SIGTERM to the process group) ends the shepherd with its task,
    as OAR ends a job script: the executor, its parent, then records the status (128+n for
    signal n) and SIGKILLs what is left of the group after the grace delay."""
    q = _quote
    d = rec["launching_directory"]
    # The task writes to its slot's output files (truncated, not created: most tasks of a
    # campaign write little or nothing); the executor moves them to the task's own files
    # when it ends, if they are not empty.
    slot = store.slot_path(rec["cores"][0])
    out, err = q(f"{slot}.out"), q(f"{slot}.err")
    job_id, array_id, index = rec["id"], rec["array_id"], rec["array_index"]
    env = (f"CIGRI_JOB_ID={job_id} CIGRI_ARRAY_ID={array_id} CIGRI_ARRAY_INDEX={index} "
           f"CIGRI_JOB_NAME={q(rec.get('name') or '')} CIGRI_WORKDIR={q(d)} "
           f"CIGRI_CORES={','.join(str(c) for c in rec.get('cores', []))}")
    if rec.get("walltime"):
        env += f" CIGRI_WALLTIME_SECONDS={int(rec['walltime'])}"
    return ('echo "P $$" >&9\n'
            f"cd -- {q(d)} 2>/dev/null || {{ echo wd >&9; exit 1; }}\n"
            f"export {env}\n{{ {rec['command']}\n}} > {out} 2> {err} < /dev/null 9>&-\n"
            "echo $? >&9\n")


#: signals the task must not inherit as ignored (the executor ignores SIGHUP, Python SIGPIPE)
DEFAULT_SIGNALS = (signal.SIGHUP, signal.SIGINT, signal.SIGTERM, signal.SIGQUIT, signal.SIGPIPE, signal.SIGXFSZ)


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _try_lock(fd: int, tries: int = 5) -> bool:
    """Lock a slot file for a new task: a liveness probe holds a shared lock on it for a few
    microseconds, so a refusal is retried a few times before the slot is set aside."""
    for i in range(tries):
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except OSError:
            if i + 1 < tries:
                time.sleep(0.0005 * (i + 1))
    return False


def status_line(wait_status: int) -> str:
    """What the shell would have written for a wait status (its own death by signal n: 128+n)."""
    if os.WIFSIGNALED(wait_status):
        return str(128 + os.WTERMSIG(wait_status))
    return str(os.WEXITSTATUS(wait_status)) if os.WIFEXITED(wait_status) else "255"


class Executor:
    def __init__(self, store: Store, cores: int):
        self.store = store
        self.cores = max(1, cores)
        self.free: set[int] = set(range(1, self.cores + 1))
        self.waiting: dict[int, Record] = {}
        self.q_normal: collections.deque[int] = collections.deque()
        self.q_be: collections.deque[int] = collections.deque()
        self.running: dict[int, Run] = {}
        #: process groups of killed tasks whose shepherd ended: SIGKILL-ed at the deadline
        self.leftovers: dict[int, tuple[float, list[int]]] = {}
        self.by_pid: dict[int, int] = {}
        self.arrays: dict[str, int] = {}  # array file name -> tasks not yet ended
        self.task_array: dict[int, int] = {}  # job id -> first id of its array
        self.pending_log: dict[int, list[Record]] = {}  # array -> ended tasks not logged yet
        self.to_archive: set[int] = set()
        self.started: collections.deque[float] = collections.deque()  # start times, last second
        self.hungry = False  # the runner was told this executor runs low on work
        self.busy = False
        self.stop = False
        self.check_ctl = True
        self.base_env = dict(os.environ)
        #: slots whose lock was taken by someone else when a task was to start there (since when)
        self.held: dict[int, float] = {}
        self.held_logged: set[int] = set()

    # ------------------------------------------------------------------ ingestion
    def adopt_slots(self) -> None:
        """At start: adopt the shepherds that outlived the previous executor, and record
        the tasks that ended (or lost their shepherd) while none was running."""
        for slot in sorted(self.store.slot_names()):
            path = self.store.slot_path(slot)
            rec, ended = read_task_file(path, raw=True)
            if rec is None or not isinstance(rec.get("id"), int):
                continue
            first = self._first_of(rec["id"])
            if first is None:
                continue
            if ended:
                self.save_outputs(slot, self.outputs_of(rec["id"]))
                if rec["id"] not in self.store.read_log(first):
                    self.store.append_log(first, [rec])
            elif self.store.lock_alive(path):
                self.adopt(rec, slot)
            else:
                self.store.mark_lost(slot)
                self.save_outputs(slot, self.outputs_of(rec["id"]))

    def _first_of(self, job_id: int) -> int | None:
        found = self.store.array_of(job_id)
        return found[0]["first"] if found else None

    def ingest(self) -> None:
        names = [n for n in self.store.active_arrays() if n not in self.arrays and n[:-5].isdigit()]
        for name in sorted(names, key=lambda n: int(n[:-5])):
            spec = self.store.load_array(name)
            if spec is None:
                continue
            first = spec["first"]
            ended = self.store.read_log(first)
            remaining = 0
            for job_id in range(first, first + spec["count"]):
                if job_id in ended:
                    continue
                remaining += 1
                self.task_array[job_id] = first
                if job_id not in self.running:
                    rec = task_record(spec, job_id)
                    self.waiting[job_id] = rec
                    (self.q_be if rec["besteffort"] else self.q_normal).append(job_id)
            self.arrays[name] = remaining
            if remaining == 0:
                self.to_archive.add(first)
        self.flush()

    def adopt(self, rec: Record, slot: int) -> None:
        cores = [c for c in rec.get("cores", []) if c in self.free]
        self.free.difference_update(cores)
        found = self.store.array_of(rec["id"])
        spec = found[0] if found else {}
        walltime = spec.get("walltime")
        start = float(rec.get("start_time") or time.time())
        self.running[rec["id"]] = Run(pid=int(rec.get("shepherd") or 0), child=False, slot=slot,
                                      besteffort=bool(spec.get("besteffort")), cores=cores, start=start,
                                      deadline=start + walltime if walltime else None,
                                      outputs=self.outputs_of(rec["id"]))
        log(f"job {rec['id']}: adopted running shepherd {rec.get('shepherd')}")

    def flush(self) -> None:
        """Write the ended tasks to their arrays' logs (before their slots are reused), then
        archive the arrays that are over."""
        for first, recs in self.pending_log.items():
            self.store.append_log(first, recs)
        self.pending_log.clear()
        for first in sorted(self.to_archive):
            for ext in (".json", ".log"):
                with contextlib.suppress(FileNotFoundError):
                    os.replace(self.store.arrays / f"{first}{ext}", self.store.arrays_done / f"{first}{ext}")
            self.arrays.pop(f"{first}.json", None)
        self.to_archive.clear()

    def ended(self, job_id: int, rec: Record) -> None:
        first = self.task_array.pop(job_id, None)
        if first is None:
            first = self._first_of(job_id)
            if first is not None:
                self.store.append_log(first, [rec])
            return
        self.pending_log.setdefault(first, []).append(rec)
        name = f"{first}.json"
        if name in self.arrays:
            self.arrays[name] -= 1
            if self.arrays[name] <= 0:
                self.to_archive.add(first)

    # ------------------------------------------------------------------ completion
    def finish(self, job_id: int, wait_status: int | None = None) -> None:
        run = self.running.pop(job_id, None)
        if run is None:
            return
        self.by_pid.pop(run.pid, None)
        path = self.store.slot_path(run.slot)
        self.save_outputs(run.slot, run.outputs)  # first: a task is seen ended with its outputs in place
        rec, ended = read_task_file(path, raw=True)
        if rec is not None and rec.get("id") != job_id:
            rec = None
        if rec is not None and not ended:
            if wait_status is not None:
                # The shell ended without writing a status (the task ran `exit`, or the shell
                # was killed): its parent, this executor, knows it.
                append_line(path, status_line(wait_status))
                rec, ended = read_task_file(path, raw=True)
            else:
                rec = self.store.mark_lost(run.slot, log=False)
        if rec is None:  # cannot happen unless someone rewrote the slot: the task is lost
            rec = lost_record(job_id)
        self.ended(job_id, rec)
        self._release(run)

    def outputs_of(self, job_id: int) -> tuple[str, ...]:
        """The stdout and stderr files of a task, from its array."""
        found = self.store.array_of(job_id)
        if found is None:
            return ()
        rec = task_record(found[0], job_id)
        d = rec["launching_directory"]
        return os.path.join(d, rec["stdout_file"]), os.path.join(d, rec["stderr_file"])

    def save_outputs(self, slot: int, outputs: tuple[str, ...]) -> None:
        """Move what the task of `slot` wrote to its own files (before the slot is reused);
        nothing is created for an empty output."""
        base = self.store.slot_path(slot)
        for src, dst in zip((f"{base}.out", f"{base}.err"), outputs, strict=False):
            try:
                if os.stat(src).st_size == 0:
                    continue
                os.replace(src, dst)
            except FileNotFoundError:
                continue
            except OSError as e:
                if e.errno == errno.EXDEV:  # another file system: copy, then empty the slot's file
                    try:
                        shutil.copyfile(src, dst)
                        os.truncate(src, 0)
                        continue
                    except OSError as e2:
                        e = e2
                log(f"slot {slot}: cannot save an output to {dst}: {e.strerror}")
                with contextlib.suppress(OSError):
                    os.truncate(src, 0)

    def _release(self, run: Run) -> None:
        if not run.pid:
            self.free.update(run.cores)
        elif run.kill_at is not None and time.time() < run.kill_at and _group_alive(run.pid):
            # Killed: what is left of the task gets the rest of the grace delay to clean up,
            # on its cores, before the SIGKILL.
            self.leftovers[run.pid] = (run.kill_at, run.cores)
        else:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(run.pid, signal.SIGKILL)  # leftovers of the task, as OAR's cpuset cleanup
            self.free.update(run.cores)

    def reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            job_id = self.by_pid.get(pid)
            if job_id is not None:
                self.finish(job_id, status)

    def check_adopted(self) -> None:
        for job_id, run in list(self.running.items()):
            if not run.child and not self.store.lock_alive(self.store.slot_path(run.slot)):
                self.finish(job_id)

    # ------------------------------------------------------------------ kills
    def kill(self, job_id: int, reason: str) -> None:
        """Record why, then SIGTERM the task's process group (SIGKILL after a grace delay)."""
        run = self.running[job_id]
        append_line(self.store.slot_path(run.slot), f"R {reason}")
        if run.pid:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(run.pid, signal.SIGTERM)
        run.kill_at = time.time() + KILL_GRACE
        log(f"job {job_id}: killed ({reason})")

    def timers(self) -> float:
        """Walltimes and kill escalations; returns seconds until the next one."""
        t = time.time()
        nxt = RESCAN
        for pgid, (kill_at, cores) in list(self.leftovers.items()):
            if t >= kill_at or not _group_alive(pgid):
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(pgid, signal.SIGKILL)
                del self.leftovers[pgid]
                self.free.update(cores)
            else:
                nxt = min(nxt, 0.1)  # free the cores as soon as the group is gone
        for job_id, run in list(self.running.items()):
            if run.kill_at is not None:
                if t >= run.kill_at:
                    with contextlib.suppress(ProcessLookupError, PermissionError):
                        os.killpg(run.pid, signal.SIGKILL)
                    run.kill_at = t + KILL_GRACE
                nxt = min(nxt, run.kill_at - t)
            elif run.deadline is not None:
                if t >= run.deadline:
                    self.kill(job_id, WALLTIME)
                    nxt = min(nxt, KILL_GRACE)
                else:
                    nxt = min(nxt, run.deadline - t)
        return max(0.01, nxt)

    def deletions(self) -> None:
        try:
            names = os.listdir(self.store.ctl)
        except FileNotFoundError:
            return
        for n in names:
            if not n.endswith(".del") or not n[:-4].isdigit():
                continue
            job_id = int(n[:-4])
            if job_id in self.waiting:
                del self.waiting[job_id]
                self.ended(job_id, never_started(job_id, KILLED))
            elif job_id in self.running:
                if self.running[job_id].kill_at is None:
                    self.kill(job_id, KILLED)
            elif job_id not in self.task_array and not self._has_ended(job_id):
                # Not ingested yet: keep the request for a later pass (unless stale).
                with contextlib.suppress(FileNotFoundError):
                    if time.time() - (self.store.ctl / n).stat().st_mtime < 60:
                        continue
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.store.ctl / n)

    def _has_ended(self, job_id: int) -> bool:
        first = self._first_of(job_id)
        return first is not None and job_id in self.store.read_log(first)

    # ------------------------------------------------------------------ scheduling
    def _head(self, q: collections.deque[int]) -> int | None:
        while q and q[0] not in self.waiting:
            q.popleft()
        return q[0] if q else None

    def schedule(self) -> None:
        self.flush()  # ended tasks are in their logs before their slots are reused
        while True:
            job_id = self._head(self.q_normal)
            if job_id is None:
                break
            need = min(self.waiting[job_id]["ncores"], self.cores)
            if need <= len(self.free):
                self.q_normal.popleft()
                self.start(job_id, need)
                continue
            # Preempt best-effort tasks (latest started first) to free the missing cores.
            coming = (sum(len(r.cores) for r in self.running.values() if r.preempting)
                      + sum(len(cores) for _, cores in self.leftovers.values()))
            missing = need - len(self.free) - coming
            for jid, run in sorted(self.running.items(), key=lambda kv: -kv[1].start):
                if missing <= 0:
                    break
                if run.besteffort and not run.preempting:
                    run.preempting = True
                    missing -= len(run.cores)
                    if run.kill_at is None:
                        self.kill(jid, PREEMPTED)
            return  # normal tasks wait: no best-effort task may start before them
        while True:
            job_id = self._head(self.q_be)
            if job_id is None:
                return
            need = min(self.waiting[job_id]["ncores"], self.cores)
            if need > len(self.free):
                return
            self.q_be.popleft()
            self.start(job_id, need)

    def start(self, job_id: int, need: int) -> None:
        rec = self.waiting.pop(job_id)
        cores = sorted(self.free)[:need]
        slot = cores[0]
        t = time.time()
        rec.update(state=RUNNING, start_time=int(t), cores=cores)
        fd = os.open(self.store.slot_path(slot), os.O_WRONLY | os.O_CREAT, 0o600)
        try:
            if not _try_lock(fd):
                # A probe holds it for an instant, or a shepherd this executor does not know
                # lives there: the core is set aside and checked again at each pass, never lost.
                self.held[slot] = self.held.get(slot, time.monotonic())
                self.free.discard(slot)
                self.waiting[job_id] = rec
                rec.update(state=WAITING, start_time=None, cores=[])
                (self.q_be if rec["besteffort"] else self.q_normal).appendleft(job_id)
                return
            # Rewrite the slot without emptying it (freeing its block costs more than the rest):
            # a reader sees the old record, a lone "{" or a partial line, never a mix.
            os.ftruncate(fd, 1)
            os.pwrite(fd, (f'{{"id":{job_id},"state":"{RUNNING}","start_time":{int(t)},'
                           f'"cores":[{",".join(map(str, cores))}]}}\n').encode(), 0)
            fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) | os.O_APPEND)  # the shepherd appends
            try:
                pid = os.posix_spawn("/bin/sh", ["sh", "-c", shepherd_script(self.store, rec)], self.base_env,
                                     file_actions=[(os.POSIX_SPAWN_DUP2, fd, 9)], setsid=True,
                                     setsigdef=DEFAULT_SIGNALS)
            except OSError as e:
                log(f"job {job_id}: cannot start its shepherd: {e}")
                os.ftruncate(fd, 0)  # no task in this slot
                self.waiting[job_id] = rec
                rec.update(state=WAITING, start_time=None, cores=[])
                (self.q_be if rec["besteffort"] else self.q_normal).appendleft(job_id)
                raise
            os.write(fd, f"P {pid}\n".encode())  # (the shepherd writes it too: either may be first)
        finally:
            os.close(fd)
        self.free.difference_update(cores)
        self.started.append(t)
        wt = rec.get("walltime")
        d = rec["launching_directory"]
        self.running[job_id] = Run(pid=pid, child=True, besteffort=rec["besteffort"], slot=slot, cores=cores,
                                   start=t, deadline=t + wt if wt else None,
                                   outputs=(os.path.join(d, rec["stdout_file"]), os.path.join(d, rec["stderr_file"])))
        self.by_pid[pid] = job_id

    def recheck_held(self) -> None:
        """Give back the cores of slots whose lock is free again; say so once if a slot stays
        held (a shepherd of another executor, or a stray process that inherited the lock)."""
        for slot, since in list(self.held.items()):
            if self.store.lock_alive(self.store.slot_path(slot)) is not True:
                del self.held[slot]
                self.held_logged.discard(slot)
                if not any(slot in r.cores for r in self.running.values()):
                    self.free.add(slot)
            elif time.monotonic() - since > 10 and slot not in self.held_logged:
                self.held_logged.add(slot)
                log(f"slot {slot} is held by a process this executor does not know: core {slot} waits for it")

    def tell_runner(self) -> None:
        """Wake the runner when it has something to do: all the work is over (it records
        the ends at once), or less than half a second of work is left (it submits more)."""
        if not self.running and not self.waiting:
            if self.busy:
                self.busy = self.hungry = False
                self.store.tell_progress()
            return
        self.busy = True
        t = time.time()
        while self.started and self.started[0] < t - 1.0:
            self.started.popleft()
        low = max(2 * self.cores, len(self.started) // 2)
        if len(self.waiting) < low:
            if not self.hungry:
                self.hungry = True
                self.store.tell_progress()
        elif len(self.waiting) >= 2 * low:
            self.hungry = False

    # ------------------------------------------------------------------ main loop
    def purge(self) -> None:
        """Forget tasks ended long ago (CiGri has read them): keeps the state directory small."""
        limit = time.time() - KEEP_DONE
        for d in (self.store.arrays_done,):
            for entry in os.scandir(d):
                with contextlib.suppress(OSError):
                    if entry.stat().st_mtime < limit:
                        if entry.is_dir():
                            shutil.rmtree(entry.path, ignore_errors=True)
                        else:
                            os.unlink(entry.path)

    def run(self, fifo_fd: int, wake_r: int) -> None:
        with contextlib.suppress(OSError):
            self.purge()
        self.adopt_slots()
        self.ingest()
        last_scan = time.monotonic()
        last_work = time.monotonic()
        while not self.stop:
            try:
                fifo_fd, last_scan, last_work = self.cycle(fifo_fd, wake_r, last_scan, last_work)
            except StopIteration:
                return
            except Exception:  # noqa: BLE001 - never die on one bad file: log and go on
                log("error in the main loop:\n" + traceback.format_exc())
                time.sleep(1.0)

    def cycle(self, fifo_fd: int, wake_r: int, last_scan: float, last_work: float) -> tuple[int, float, float]:
        """One pass: reap, kill, start, then sleep until woken (FIFO, SIGCHLD) or a timer is due."""
        self.reap()
        self.check_adopted()
        if self.held:
            self.recheck_held()
        if self.check_ctl:
            self.deletions()
            self.check_ctl = False
        try:
            self.schedule()
        except OSError:
            time.sleep(0.5)  # fork failure (too many processes): retry later
        self.tell_runner()
        timeout = self.timers()
        if self.running or self.waiting:
            last_work = time.monotonic()
        elif time.monotonic() - last_work > IDLE_EXIT:
            # Last look with no reader: a submitter now sees none and starts a new executor.
            os.close(fifo_fd)
            self.ingest()
            if not self.waiting and not self.running:
                log("idle: exiting")
                raise StopIteration
            fifo_fd = fifo.listen(self.store.fifo)
            return fifo_fd, last_scan, last_work
        if any(not r.child for r in self.running.values()):
            timeout = min(timeout, 0.2)
        if self.held:
            timeout = min(timeout, 0.02 if self.waiting else 0.5)
        try:
            ready, _, _ = select.select([fifo_fd, wake_r], [], [], timeout)
        except InterruptedError:
            ready = []
        woken = False
        for fd in ready:
            if fifo.drain(fd) and fd == fifo_fd:
                woken = True
        if woken or time.monotonic() - last_scan > RESCAN:
            self.ingest()
            last_scan = time.monotonic()
            self.check_ctl = True
        return fifo_fd, last_scan, last_work


def never_started(job_id: int, reason: str) -> Record:
    """The record of a task that ended without running (deleted while waiting)."""
    rec = parse_task_file(json.dumps({"id": job_id}) + f"\nR {reason}\nnone\n", now())
    assert rec is not None
    return rec


def lost_record(job_id: int) -> Record:
    rec = parse_task_file(json.dumps({"id": job_id}) + "\nlost\n", now())
    assert rec is not None
    return rec


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="cigri-local-executor")
    ap.add_argument("state_dir")
    ap.add_argument("--cores", type=int, default=0)
    ap.add_argument("--daemon", action="store_true")
    args = ap.parse_args(argv)
    cores = args.cores or os.cpu_count() or 1
    store = Store(args.state_dir)
    store.setup()
    ready_w = None
    if args.daemon:
        r, ready_w = os.pipe()
        if os.fork() > 0:
            os.close(ready_w)
            ok = os.read(r, 1)
            os._exit(0 if ok == b"1" else 1)
        os.close(r)
        os.setsid()
        if os.fork() > 0:
            os._exit(0)
        os.chdir("/")
    lock_fd = os.open(store.lock_file, os.O_RDWR | os.O_CREAT, 0o600)
    deadline = time.monotonic() + 15
    while True:
        try:
            fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            break
        except OSError:
            if store.wake() or time.monotonic() > deadline:
                # Another executor serves this directory.
                if ready_w is not None:
                    os.write(ready_w, b"1")
                return 0
            time.sleep(0.05)
    store.pid_file.write_text(str(os.getpid()))
    ex = Executor(store, cores)
    wake_r, wake_w = os.pipe()
    for fd in (wake_r, wake_w):
        os.set_blocking(fd, False)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGCHLD, lambda *_: None)

    def on_term(*_: Any) -> None:
        ex.stop = True

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    fifo_fd = fifo.listen(store.fifo)
    log(f"started on {store.root} with {cores} cores")
    if ready_w is not None:
        os.write(ready_w, b"1")
        os.close(ready_w)
    try:
        ex.run(fifo_fd, wake_r)
    finally:
        with contextlib.suppress(FileNotFoundError):
            if store.executor_pid() == os.getpid():
                store.pid_file.unlink()
    log("stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
