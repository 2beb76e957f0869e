"""`cigri local …`: CiGri on one machine, with no PostgreSQL and no OAR.

`cigri local run JDL` initialises the embedded SQLite database if needed, makes sure the
`local` cluster exists, submits the campaign (or resumes the one this JDL started),
runs the engine (`cigri.localexec.engine`: every daemon's cycle in one process) as a child
process, and shows the campaign's progress until it ends. The grid* commands start the API
server (Unix socket) when they need it (`--api` starts it with the run).

Ctrl-C stops the local executor at once (no task starts any more) and CiGri's engine:
running tasks go on under their shepherds (like jobs on a cluster when CiGri stops) and
are picked up when `cigri local run` is run again, which resumes the campaign.
`--kill-tasks` (or `cigri local stop --kill-tasks`) also kills them."""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import fcntl
import getpass
import hashlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, NoReturn

from cigri.config import Conf, embedded_conf, user_data_dir
from cigri.errors import CigriError, ConfigError

EXIT_OK, EXIT_EVENTS, EXIT_BLOCKED, EXIT_DAEMONS, EXIT_INTERRUPTED = 0, 1, 2, 3, 130


def die(msg: str, code: int = 1) -> NoReturn:
    print(f"cigri: {msg}", file=sys.stderr)
    raise SystemExit(code)


# ------------------------------------------------------------------ configuration
def local_conf(path: str | None = None) -> Conf:
    """The embedded configuration, or the file named by --conf / CIGRICONFFILE."""
    path = path or os.environ.get("CIGRICONFFILE")
    try:
        return Conf(path) if path else embedded_conf()
    except ConfigError as e:
        die(str(e))
        raise


def data_dir(conf: Conf) -> Path:
    """Where local mode keeps its files: next to the SQLite database."""
    db = conf.get("DATABASE_PATH")
    return Path(db).parent if db and conf.get("DATABASE_TYPE") == "SQLite" else user_data_dir()


def daemon_conf(conf: Conf, cores: int | None) -> Path:
    """Write the configuration the daemons read (CIGRICONFFILE): the given one plus local
    mode's defaults (log file, JWT secret and admins in the data directory)."""
    d = data_dir(conf)
    d.mkdir(parents=True, exist_ok=True)
    d.chmod(0o700)  # the API socket is in it: only this user may submit tasks that run as this user
    values = dict(conf._raw)
    values.setdefault("LOG_FILE", str(d / "cigri.log"))
    values.setdefault("API_JWT_SECRET_FILE", str(d / "api-jwt.secret"))
    values.setdefault("API_ADMINS", f"root,{getpass.getuser()}")
    if cores is not None:
        values["LOCAL_CORES"] = str(cores)
    path = d / "cigri-local.conf"
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write("# Written by `cigri local run`: the configuration of the local daemons.\n")
        for k, v in values.items():
            f.write(f'{k} = "{v}"\n')
    os.replace(tmp, path)
    return path


def open_db(conf: Conf) -> Any:
    from cigri.db import clusters as dbclusters
    from cigri.db.admin import init_schema, is_initialised
    from cigri.db.engine import get_engine, transaction

    engine = get_engine(conf)  # (an existing database gets the columns added since it was made)
    if not is_initialised(engine):
        init_schema(engine)
    with transaction(engine) as conn:
        dbclusters.ensure_local_cluster(conn)
    return engine


# ------------------------------------------------------------------ campaign
def load_jdl(path: str) -> tuple[dict[str, Any], str]:
    """The JDL as a dict; campaigns written for other clusters run on `local` (the
    settings of their first cluster are kept), so they can be tried here first."""
    from cigri.jdl import parse_jdl

    try:
        raw = Path(find_jdl(path)).read_bytes()
    except OSError as e:
        die(f"cannot read {path}: {e.strerror}")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw[:e.start].count(b"\n") + 1
        die(f"{path}: line {line}: not UTF-8 text (byte 0x{raw[e.start]:02x}); save the JDL as UTF-8")
    try:
        parse_jdl(text)
        data = json.loads(text)
    except CigriError as e:
        die(f"{path}: {e}")
    clusters = {k: v for k, v in data.items() if k.lower() == "clusters"}
    key, value = next(iter(clusters.items()))
    if isinstance(value, dict) and value and "local" not in value:
        first = next(iter(value))
        print(f"cigri: the JDL targets {', '.join(value)}: running it on the local cluster "
              f"(with the settings of {first})", file=sys.stderr)
        data[key] = {"local": value[first]}
    check_exec_file(path, data)
    return data, hashlib.sha256(text.encode()).hexdigest()


def check_exec_file(path: str, data: dict[str, Any]) -> None:
    """The program runs on this machine: a missing or non-executable exec_file is found now,
    not as thousands of failed tasks (exit code 127 or 126)."""
    import shlex
    import shutil

    clusters: dict[str, Any] = next((v for k, v in data.items() if k.lower() == "clusters"), {})
    settings: dict[str, Any] = clusters.get("local") or {} if isinstance(clusters, dict) else {}
    exec_file = settings.get("exec_file") or data.get("exec_file")
    if not isinstance(exec_file, str) or not exec_file.strip() or settings.get("container") or data.get("container"):
        return
    try:
        program = shlex.split(exec_file)[0]
    except (ValueError, IndexError):
        return
    if program.startswith("$") or "=" in program:  # a variable or an assignment: the shell decides
        return
    if "/" not in program:
        if shutil.which(program) is None and program not in _SHELL_BUILTINS:
            die(f"{path}: exec_file: {program}: command not found in PATH")
        return
    directory = settings.get("exec_directory") or data.get("exec_directory") or "~"
    full = os.path.join(os.path.expanduser(os.path.expandvars(str(directory))), os.path.expanduser(program))
    if not os.path.exists(full):
        die(f"{path}: exec_file: {full}: no such file")
    if os.path.isdir(full) or not os.access(full, os.X_OK):
        die(f"{path}: exec_file: {full}: not executable (chmod +x {full})")


_SHELL_BUILTINS = frozenset({"true", "false", "echo", "printf", "exit", "cd", "export", "test", "[", ":", "exec",
                             "eval", "set", "read", "sleep"})


def find_jdl(path: str) -> str:
    """The JDL file; `examples/hello.jdl` also names the example shipped with CiGri."""
    if os.path.exists(path) or os.path.isabs(path):
        return path
    name = os.path.basename(path)
    for d in (Path(__file__).resolve().parent.parent.parent / "conf" / "examples",
              Path(sys.prefix) / "share" / "cigri" / "examples", Path("/usr/local/share/cigri/examples")):
        if (d / name).is_file():
            return str(d / name)
    return path


def runs_file(conf: Conf) -> Path:
    return data_dir(conf) / "local-runs.json"


def find_run(conf: Conf, jdl_path: str, digest: str) -> int | None:
    try:
        runs = json.loads(runs_file(conf).read_text())
    except (OSError, ValueError):
        return None
    r = runs.get(os.path.abspath(jdl_path))
    return int(r["campaign"]) if r and r.get("sha") == digest else None


def remember_run(conf: Conf, jdl_path: str, digest: str, cid: int) -> None:
    p = runs_file(conf)
    try:
        runs = json.loads(p.read_text())
    except (OSError, ValueError):
        runs = {}
    runs[os.path.abspath(jdl_path)] = {"sha": digest, "campaign": cid}
    tmp = p.with_suffix(".tmp")
    tmp.write_text(json.dumps(runs, indent=1))
    os.replace(tmp, p)


def submit_or_resume(conf: Conf, engine: Any, jdl_path: str, new: bool,
                     rerun_failed: bool = False) -> tuple[int, bool]:
    from cigri.campaigns import resume_campaign, submit_campaign
    from cigri.db import progress

    data, digest = load_jdl(jdl_path)
    user = getpass.getuser()
    if not new:
        cid = find_run(conf, jdl_path, digest)
        if cid is not None:
            with engine.connect() as conn:
                p = progress.overview(conn, cid)
            state = p.get("state")
            if p and p["failed"] and p["active"] == 0 and state in ("in_treatment", "paused"):
                if not rerun_failed:
                    print(f"Campaign {cid} of this JDL has run: {p['done']}/{p['total']} tasks done, "
                          f"{p['failed']} failed{', ' + str(p['waiting']) + ' not run' if p['waiting'] else ''}.\n"
                          f"  cigri local summary {cid}                  lists the failed tasks\n"
                          f"  cigri local run {jdl_path} --rerun-failed   runs the failed tasks again "
                          f"(and the ones not run)\n"
                          f"  cigri local run {jdl_path} --new           runs every task again")
                    raise SystemExit(EXIT_EVENTS)
                from cigri.events import fix_campaign_events

                n = len(fix_campaign_events(engine, cid, user, (user,), resubmit=True))
                print(f"Re-running the {p['failed']} failed tasks of campaign {cid} ({n} events fixed).")
            elif rerun_failed:
                print(f"Campaign {cid} of this JDL has no failed task to re-run.")
            if state == "terminated" and not rerun_failed:
                print(f"Campaign {cid} of this JDL is finished: {p['done']}/{p['total']} tasks done "
                      f"(`cigri local summary {cid}`). `--new` runs every task again.")
                raise SystemExit(EXIT_OK)
            if state == "paused":
                resume_campaign(engine, cid, user)
            if state in ("in_treatment", "paused"):
                return cid, True
        elif rerun_failed:
            die(f"{jdl_path}: no campaign of this JDL (as it is now) to re-run: run it without --rerun-failed")
    try:
        cid = submit_campaign(engine, data, user, conf)
    except CigriError as e:
        die(f"{jdl_path}: {e}")
    remember_run(conf, jdl_path, digest, cid)
    return cid, False


# ------------------------------------------------------------------ daemons
def _pdeathsig() -> None:
    """Children die with `cigri local run`, even on kill -9."""
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


class Daemons:
    """Almighty (engine) and the API server as children of this process."""

    def __init__(self, conf: Conf, conf_path: Path, api: bool = True):
        self.conf = conf
        self.env = dict(os.environ, CIGRICONFFILE=str(conf_path), PYTHONUNBUFFERED="1")
        self.log_path = Path(Conf(conf_path).get("LOG_FILE"))
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.api = api

    def start(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "ab")  # noqa: SIM115 - handed to the children
        try:
            if self.api:
                sock = Path(str(self.conf.get("API_LISTEN_SOCKET")))
                sock.parent.mkdir(parents=True, exist_ok=True)
                self.procs["api"] = subprocess.Popen(
                    [sys.executable, "-P", "-m", "cigri.modules.api", "--workers", "1", "--log-level", "warning"],
                    env=self.env, stdin=subprocess.DEVNULL, stdout=log, stderr=log, preexec_fn=_pdeathsig)
            self.procs["engine"] = subprocess.Popen(
                [sys.executable, "-P", "-m", "cigri.localexec.engine"], env=self.env, stdin=subprocess.DEVNULL,
                stdout=log, stderr=log, preexec_fn=_pdeathsig)
        finally:
            log.close()

    def dead(self) -> list[str]:
        return [name for name, p in self.procs.items() if p.poll() is not None]

    def signal(self) -> None:
        """Ask every daemon to stop (without waiting)."""
        for p in self.procs.values():
            if p.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    p.send_signal(signal.SIGTERM)

    def stop(self, timeout: float = 30.0) -> None:
        self.signal()
        end = time.monotonic() + timeout
        for p in self.procs.values():
            try:
                p.wait(max(0.1, end - time.monotonic()))
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


def run_lock(conf: Conf) -> tuple[int, bool]:
    """(fd, True) when this process runs the daemons of this data directory."""
    d = data_dir(conf)
    d.mkdir(parents=True, exist_ok=True)
    fd = os.open(d / "local-run.lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return fd, False
    os.ftruncate(fd, 0)
    os.write(fd, str(os.getpid()).encode())
    return fd, True


def client_hint(conf: Conf, wait: bool = False) -> str | None:
    """How to point gridstat & co here, when their own configuration lookup does not."""
    sock = Path(str(conf.get("API_LISTEN_SOCKET")))
    end = time.monotonic() + (10 if wait else 0)
    while not sock.exists() and time.monotonic() < end:  # the clients find the local API by its socket
        time.sleep(0.1)
    try:
        from cigri.cli.client import load_client_conf

        c = load_client_conf()
        if not c.get("API_URL") and str(c.get("API_SOCKET")) == str(conf.get("API_LISTEN_SOCKET")):
            return None
    except Exception:  # noqa: BLE001 - only a hint
        pass
    return f"gridstat, gridevents, griddel: export CIGRICONFFILE={data_dir(conf) / 'cigri-local.conf'}"


# ------------------------------------------------------------------ display
def exit_text(return_code: int | None) -> str:
    """A stored wait status as a person reads it: `exit code 3`, `signal 9 (KILL)`."""
    if return_code is None:
        return "no exit code"
    from cigri.clusters.base import ExitStatus

    ex = ExitStatus.from_wait_status(int(return_code))
    if ex.signal:
        try:
            return f"signal {ex.signal} ({signal.Signals(ex.signal).name[3:]})"
        except ValueError:
            return f"signal {ex.signal}"
    return f"exit code {ex.code}"


def failure_line(name: str | None, code: str, return_code: int | None, message: str | None) -> str:
    """One line per failed task: its name, how it ended, the last line of its stderr."""
    lines = (message or "").splitlines()
    tail = ""
    if len(lines) > 1 and lines[1].startswith("Last "):
        tail = lines[-1].strip()
    how = exit_text(return_code) if code == "EXIT_ERROR" else f"{code}: {lines[0] if lines else ''}"
    return f"task {name or '?'} failed: {how}" + (f" | {tail[:100]}" if tail else "")


def _duration(seconds: float) -> str:
    s = int(seconds)
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60:d}:{s % 60:02d}"


class Display:
    """The progress line (a bar, task counts that add up to the total, rate, ETA), redrawn
    in place on a terminal, and one line per failed task as it fails."""

    WIDTH = 24

    def __init__(self, quiet: bool = False):
        self.tty = sys.stdout.isatty() and not quiet
        self.quiet = quiet
        self.last = ""
        self.last_print = 0.0
        self.t0 = time.monotonic()
        self.seen_events: set[int] = set()
        self.samples: list[tuple[float, int]] = []  # (time, done) of the last minute

    def rate(self, done: int) -> float | None:
        t = time.monotonic()
        if not self.samples or self.samples[-1][1] != done:
            self.samples.append((t, done))
        self.samples = [x for x in self.samples if t - x[0] <= 60] or [(t, done)]
        t0, d0 = self.samples[0]
        return (done - d0) / (t - t0) if t - t0 >= 1 and done > d0 else None

    def line(self, cid: int, p: dict[str, Any]) -> str:
        total = p["total"] or 0
        done, running, failed = p["done"], p["running"], p["failed"]
        fill = (done * self.WIDTH // total) if total else 0
        bad = (failed * self.WIDTH // total) if total else 0
        bar = "#" * fill + "x" * min(bad, self.WIDTH - fill) + "." * max(0, self.WIDTH - fill - bad)
        rate = self.rate(done)
        left = total - done - failed
        speed = f"{rate:.0f}/s" if rate and rate >= 10 else (f"{rate:.1f}/s" if rate else "-/s")
        eta = f"ETA {_duration(left / rate)}" if rate and left > 0 and p["state"] == "in_treatment" else ""
        return (f"[{bar}] {done}/{total} done, {running} running, {p['waiting']} waiting, {failed} failed"
                f" | {speed} {eta} | {_duration(time.monotonic() - self.t0)} (campaign {cid})").replace("  ", " ")

    def show(self, cid: int, p: dict[str, Any]) -> None:
        for e in p["events"]:
            if e["id"] not in self.seen_events and e["code"] not in ("RESUBMIT", "RESUBMIT_END", "BLACKLIST"):
                self.seen_events.add(e["id"])
                if not self.quiet:
                    self._clear()
                    print("  " + failure_line(e.get("task"), e["code"], e.get("return_code"), e["message"]),
                          flush=True)
        text = self.line(cid, p)
        if self.quiet:
            return
        if self.tty:
            sys.stdout.write("\r\x1b[K" + text)
            sys.stdout.flush()
        elif text != self.last and time.monotonic() - self.last_print > 2:
            print(text, flush=True)
            self.last_print = time.monotonic()
        self.last = text

    def _clear(self) -> None:
        if self.tty:
            sys.stdout.write("\r\x1b[K")

    def end(self, cid: int, p: dict[str, Any] | None) -> None:
        self._clear()
        if p and not self.quiet:
            print(self.line(cid, p), flush=True)


def print_failed(conn: Any, cid: int, limit: int | None = 20, tail: int = 5) -> int:
    """The failed tasks of a campaign by name, with their exit code and the tail of their stderr."""
    from cigri.db import progress

    rows = progress.failed_tasks(conn, cid, None if limit is None else limit + 1)
    for r in rows[:limit]:
        # the headline names the cause (its first line; the stderr tail is printed below)
        print("  " + failure_line(r["name"], r["code"], r["return_code"], (r["message"] or "").split("\n", 1)[0]))
        lines = (r["message"] or "").splitlines()
        body = lines[2:] if len(lines) > 1 and lines[1].startswith("Last ") else lines[1:]
        for line in body[-tail:]:
            print(f"      {line}")
    if limit is not None and len(rows) > limit:
        print(f"  ... (`cigri local summary {cid} --all` lists them all)")
    return len(rows)


# ------------------------------------------------------------------ commands
def cmd_run(args: argparse.Namespace) -> int:
    from cigri.db import campaigns as dbcampaigns
    from cigri.db import progress

    conf = local_conf(args.conf)
    if args.cores is not None:
        conf = conf.with_values(LOCAL_CORES=args.cores)
    try:
        engine = open_db(conf)
    except Exception as e:  # noqa: BLE001 - one clear message, never a traceback
        die(f"cannot open the database: {e}")
    cid, resumed = submit_or_resume(conf, engine, args.jdl, args.new, args.rerun_failed)
    print(f"{'Resuming' if resumed else 'Submitted'} campaign {cid} (CAMPAIGN_ID={cid})", flush=True)
    lock_fd, owner = run_lock(conf)
    daemons: Daemons | None = None
    if owner:
        _stop_idle_executor(conf)  # a new one starts with this run's LOCAL_CORES, now (in the
        threading.Thread(target=_start_executor, args=(conf,), daemon=True).start()  # background)
        daemons = Daemons(conf, daemon_conf(conf, args.cores), api=args.api)
        stop_api_on_demand(conf)
        daemons.start()
        stop_how = "kills them" if args.kill_tasks else "lets them end (--kill-tasks kills them)"
        print(f"CiGri is running (log: {daemons.log_path}). Ctrl-C: no new task starts; it {stop_how}.",
              flush=True)
        hint = client_hint(conf, wait=args.api) if not args.quiet else None
        if hint:
            print(hint, flush=True)
    else:
        print("Another `cigri local run` runs CiGri here: following the campaign.", flush=True)
    # Ctrl-C stops this command (and the daemons, cleanly) even when started with SIGINT
    # ignored (`cigri local run … &` in a script): the daemons handle SIGINT themselves.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    from cigri.db.notify import CAMPAIGNS, Waiter

    waiter = Waiter(engine, [CAMPAIGNS]).start()  # the end of the campaign is shown at once
    display = Display(quiet=args.quiet)
    p: dict[str, Any] | None = None
    code = EXIT_OK
    cancelled_since: float | None = None
    block_wait = max(10.0, 6 * float(conf.get("ALMIGHTY_CYCLE")))
    refresh_at = 0.0
    try:
        while True:
            with engine.connect() as conn:
                # The full progress counts the campaign's jobs: its cost grows with the campaign,
                # so it is refreshed at most 5 % of the time; a state change shows at once.
                state = dbcampaigns.state_of(conn, cid)
                if p is None or time.monotonic() >= refresh_at or state != p.get("state"):
                    t = time.monotonic()
                    p = progress.overview(conn, cid)
                    refresh_at = time.monotonic() + max(0.5, 20 * (time.monotonic() - t))
            if not p:
                display.end(cid, None)
                print(f"Campaign {cid} disappeared (purged?)")
                code = EXIT_EVENTS
                break
            display.show(cid, p)
            if p["state"] == "terminated":
                display.end(cid, p)
                if p["failed"] or p["open_events"]:
                    print(f"Campaign {cid} terminated: {p['done']}/{p['total']} tasks done, {p['failed']} failed:")
                    with engine.connect() as conn:
                        print_failed(conn, cid)
                    code = EXIT_EVENTS
                else:
                    print(f"Campaign {cid} terminated: {p['done']}/{p['total']} tasks done.")
                break
            if p["state"] == "cancelled":
                # The daemons stop with this command: let nikita kill the jobs first.
                cancelled_since = cancelled_since or time.monotonic()
                if p["active"] and daemons is not None and time.monotonic() - cancelled_since < block_wait * 6:
                    time.sleep(0.2)
                    continue
                display.end(cid, p)
                print(f"Campaign {cid} was cancelled.")
                code = EXIT_EVENTS
                break
            if p["state"] == "in_treatment" and p["active"] == 0 and p["blacklisted"] and p["failed"]:
                # Colombo stopped sending the campaign's tasks: its failures blacklisted the
                # local cluster for it, as on a grid. Say why and what to type, once.
                display.end(cid, p)
                print(f"Campaign {cid} stopped: {p['failed']} tasks failed, so CiGri stopped starting its tasks "
                      f"({p['done']} done, {p['waiting']} not run). Failed tasks:")
                with engine.connect() as conn:
                    print_failed(conn, cid, limit=10)
                print(f"Re-run the failed tasks (and the rest): cigri local run {args.jdl} --rerun-failed\n"
                      f"All the failures: cigri local summary {cid}")
                code = EXIT_BLOCKED
                break
            if daemons is not None and daemons.dead():
                display.end(cid, p)
                print(f"CiGri's {', '.join(daemons.dead())} stopped unexpectedly: see {daemons.log_path}",
                      file=sys.stderr)
                code = EXIT_DAEMONS
                break
            if args.timeout and time.monotonic() - display.t0 > args.timeout:
                display.end(cid, p)
                print(f"Timeout: campaign {cid} not finished after {args.timeout} s "
                      f"(it goes on at the next `cigri local run`).")
                code = EXIT_BLOCKED
                break
            waiter.wait(0.25)
    except KeyboardInterrupt:
        if daemons is not None:
            # No task starts from now on: the executor stops at once (its running tasks go on
            # under their shepherds; the next run adopts them), then the daemons.
            signal.signal(signal.SIGINT, signal.SIG_IGN)
            daemons.signal()
            _store(conf).stop_executor()
            if args.kill_tasks:
                kill_running_tasks(conf)
        display.end(cid, p)
        print(f"Interrupted: no new task starts; {'running tasks killed' if args.kill_tasks else 'running tasks go on'}"
              f". `cigri local run {args.jdl}` resumes the campaign.", flush=True)
        code = EXIT_INTERRUPTED
    finally:
        waiter.close()
        if daemons is not None:
            with contextlib.suppress(KeyboardInterrupt):
                daemons.stop()
                if code == EXIT_INTERRUPTED:  # (the runner may have restarted it meanwhile)
                    _store(conf).stop_executor()
        os.close(lock_fd)
        if daemons is not None:
            stop_api_on_demand(conf)  # (a grid* command started it during the run)
        if daemons is not None and code != EXIT_INTERRUPTED:
            _stop_idle_executor(conf)
    return code


def stop_api_on_demand(conf: Conf) -> None:
    """The API the grid* commands started after a run (it would exit by itself when idle)."""
    pid_file = data_dir(conf) / "api-on-demand.pid"
    with contextlib.suppress(OSError, ValueError):
        pid = int(pid_file.read_text())
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            if b"cigri.modules.api" in f.read():
                os.kill(pid, signal.SIGTERM)
        pid_file.unlink()


def kill_running_tasks(conf: Conf) -> int:
    n = 0
    for rec in _store(conf).running_records():
        with contextlib.suppress(ProcessLookupError, PermissionError):
            if rec.get("shepherd"):
                os.killpg(int(rec["shepherd"]), signal.SIGKILL)
                n += 1
    return n


def _store(conf: Conf) -> Any:
    from cigri.clusters.local import state_dir_for
    from cigri.localexec.store import Store

    return Store(state_dir_for("local://", conf))


def _start_executor(conf: Conf) -> None:
    """Start the local executor before the runner needs it (its start-up is then off the
    path of the first tasks); the runner would start it anyway."""
    from cigri.clusters.local import local_cores

    with contextlib.suppress(Exception):
        _store(conf).ensure_executor(local_cores(conf))


def _stop_idle_executor(conf: Conf) -> None:
    store = _store(conf)
    if not store.running_records():
        store.stop_executor()


def cmd_status(args: argparse.Namespace) -> int:
    from cigri.db import campaigns as dbcampaigns
    from cigri.db import progress
    from cigri.db.admin import is_initialised
    from cigri.db.engine import get_engine

    conf = local_conf(args.conf)
    d = data_dir(conf)
    print(f"Data directory: {d}")
    lock = d / "local-run.lock"
    running_pid = None
    if lock.exists():
        fd = os.open(lock, os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError:
            running_pid = lock.read_text().strip()
        finally:
            os.close(fd)
    print(f"CiGri daemons: {'running (pid ' + running_pid + ')' if running_pid else 'stopped'}")
    store = _store(conf)
    print(f"Local executor: {'running' if store.executor_running() else 'stopped'}, "
          f"{len(store.running_records())} tasks running")
    engine = get_engine(conf)
    if not Path(str(conf.get("DATABASE_PATH"))).exists() or not is_initialised(engine):
        print("No campaign yet.")
        return 0
    with engine.connect() as conn:
        for cid in reversed(dbcampaigns.latest_campaign_ids(conn, args.last)):
            p = progress.overview(conn, cid)
            print(f"  {cid:>5} {p['name'][:30]:<30} {p['state']:<13} {p['done']}/{p['total']} done, "
                  f"{p['running']} running, {p['open_events']} open events")
    return 0


def cmd_stop(args: argparse.Namespace) -> int:
    conf = local_conf(args.conf)
    lock = data_dir(conf) / "local-run.lock"
    with contextlib.suppress(OSError, ValueError):
        pid = int(lock.read_text().strip())
        fd = os.open(lock, os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError:
            os.kill(pid, signal.SIGINT)
            print(f"Asked `cigri local run` (pid {pid}) to stop.")
        finally:
            os.close(fd)
    stop_api_on_demand(conf)
    store = _store(conf)
    store.stop_executor()  # first: no task starts after the kills (and every started one has its pid)
    if args.kill_tasks:
        kill_running_tasks(conf)
        print("Killed the running tasks.")
    print("Local executor stopped." if not store.running_records() else
          "Local executor stopped; running tasks go on (a new executor adopts them).")
    return 0


def cmd_summary(args: argparse.Namespace) -> int:
    from cigri.db import campaigns as dbcampaigns
    from cigri.db import progress
    from cigri.db.admin import is_initialised
    from cigri.db.engine import get_engine

    conf = local_conf(args.conf)
    if not Path(str(conf.get("DATABASE_PATH"))).exists():
        die("no campaign yet: `cigri local run JDL` runs one")
    engine = get_engine(conf)
    if not is_initialised(engine):
        die("no campaign yet: `cigri local run JDL` runs one")
    with engine.connect() as conn:
        if args.campaign is None:
            ids = dbcampaigns.latest_campaign_ids(conn, 1)
            if not ids:
                die("no campaign yet: `cigri local run JDL` runs one")
            cid = ids[0]
        elif args.campaign.isdigit():
            cid = int(args.campaign)
        else:
            data, digest = load_jdl(args.campaign)
            found = find_run(conf, args.campaign, digest)
            if found is None:
                die(f"{args.campaign}: no campaign of this JDL (as it is now)")
            cid = found
        p = progress.overview(conn, cid)
        if not p:
            die(f"campaign {cid} not found")
        print(f"Campaign {cid} {p['name']} ({p['state']}): {p['done']}/{p['total']} done, {p['running']} running, "
              f"{p['waiting']} waiting, {p['failed']} failed")
        if p["failed"]:
            print("Failed tasks:")
            print_failed(conn, cid, limit=None if args.all else 50)
    return EXIT_EVENTS if p["failed"] else EXIT_OK


def cmd_env(args: argparse.Namespace) -> int:
    conf = local_conf(args.conf)
    print(f"export CIGRICONFFILE={daemon_conf(conf, None)}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="cigri", description="CiGri, a lightweight grid middleware.")
    ap.add_argument("--version", action="store_true", help="print the version")
    sub = ap.add_subparsers(dest="cmd")
    lp = sub.add_parser("local", help="CiGri on this machine (SQLite database, local cluster)")
    lsub = lp.add_subparsers(dest="lcmd")
    r = lsub.add_parser("run", help="run a campaign to completion on this machine")
    r.add_argument("jdl", help="the campaign's JDL file")
    r.add_argument("--new", action="store_true", help="submit a new campaign even if this JDL has one running")
    r.add_argument("--cores", type=int, help="cores to use (default LOCAL_CORES, 0 = all)")
    r.add_argument("--api", action="store_true", help="start the API server with the run (by default the "
                   "grid* commands start it when they need it)")
    r.add_argument("--no-api", action="store_true", help=argparse.SUPPRESS)  # (the default now)
    r.add_argument("--quiet", action="store_true", help="no progress display")
    r.add_argument("--timeout", type=float, default=0, help="give up waiting after this many seconds")
    r.add_argument("--rerun-failed", action="store_true",
                   help="run the failed tasks of this JDL's campaign again (and those not run)")
    r.add_argument("--kill-tasks", action="store_true",
                   help="on Ctrl-C, also kill the running tasks (by default they run to their end)")
    r.set_defaults(func=cmd_run)
    sm = lsub.add_parser("summary", help="a campaign's result: counts, and its failed tasks with their "
                         "exit code and stderr tail")
    sm.add_argument("campaign", nargs="?", help="campaign id or JDL file (default: the latest campaign)")
    sm.add_argument("--all", action="store_true", help="list every failed task (default: the first 50)")
    sm.set_defaults(func=cmd_summary)
    s = lsub.add_parser("status", help="daemons, executor and recent campaigns")
    s.add_argument("--last", type=int, default=10, help="campaigns to list")
    s.set_defaults(func=cmd_status)
    st = lsub.add_parser("stop", help="stop `cigri local run` and the local executor")
    st.add_argument("--kill-tasks", action="store_true", help="also kill the running tasks")
    st.set_defaults(func=cmd_stop)
    e = lsub.add_parser("env", help="print the CIGRICONFFILE export that points grid* commands here")
    e.set_defaults(func=cmd_env)
    for p in (r, s, st, e, sm):
        p.add_argument("--conf", help="configuration file (default: CIGRICONFFILE, else the embedded one)")
    return ap


def main(argv: list[str] | None = None) -> int:
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)  # `cigri local run … | head`: no traceback
    ap = build_parser()
    args = ap.parse_args(argv)
    if args.version:
        from cigri import __version__

        print(f"cigri {__version__}")
        return 0
    if args.cmd != "local" or not getattr(args, "lcmd", None):
        ap.print_help()
        return 1
    try:
        return int(args.func(args))
    except CigriError as e:
        die(str(e))
    return 1


if __name__ == "__main__":
    sys.exit(main())
