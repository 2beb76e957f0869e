"""`cigri local …`: CiGri on one machine, with no PostgreSQL and no OAR.

`cigri local run JDL` initialises the embedded SQLite database if needed, makes sure the
`local` cluster exists, submits the campaign (or resumes the one this JDL started),
runs the engine (almighty and its daemons) and the API server (Unix socket) as child
processes, and shows the campaign's progress until it ends.

Ctrl-C stops CiGri's daemons only: running tasks go on under the local executor (like
jobs on a cluster when CiGri stops) and are picked up when `cigri local run` is run
again, which resumes the campaign. `cigri local stop --kill-tasks` also kills them."""

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
    from cigri.db import local as dblocal
    from cigri.db.admin import add_missing_sqlite_columns, init_schema, is_initialised
    from cigri.db.engine import get_engine, transaction

    engine = get_engine(conf)
    if not is_initialised(engine):
        init_schema(engine)
    else:  # made by an older CiGri-py
        add_missing_sqlite_columns(engine)
    with transaction(engine) as conn:
        dblocal.ensure_local_cluster(conn)
    return engine


# ------------------------------------------------------------------ campaign
def load_jdl(path: str) -> tuple[dict[str, Any], str]:
    """The JDL as a dict; campaigns written for other clusters run on `local` (the
    settings of their first cluster are kept), so they can be tried here first."""
    from cigri.jdl import parse_jdl

    try:
        text = Path(find_jdl(path)).read_text()
    except OSError as e:
        die(f"cannot read {path}: {e.strerror}")
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
    return data, hashlib.sha256(text.encode()).hexdigest()


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


def submit_or_resume(conf: Conf, engine: Any, jdl_path: str, new: bool) -> tuple[int, bool]:
    from cigri.campaigns import resume_campaign, submit_campaign
    from cigri.db import local as dblocal

    data, digest = load_jdl(jdl_path)
    user = getpass.getuser()
    if not new:
        cid = find_run(conf, jdl_path, digest)
        if cid is not None:
            with engine.connect() as conn:
                state = dblocal.campaign_state(conn, cid)
            if state == "paused":
                resume_campaign(engine, cid, user)
            if state in ("in_treatment", "paused"):
                return cid, True
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
            self.procs["almighty"] = subprocess.Popen(
                [sys.executable, "-P", "-m", "cigri.modules.almighty"], env=self.env, stdin=subprocess.DEVNULL,
                stdout=log, stderr=log, preexec_fn=_pdeathsig)
        finally:
            log.close()

    def dead(self) -> list[str]:
        return [name for name, p in self.procs.items() if p.poll() is not None]

    def stop(self, timeout: float = 30.0) -> None:
        for p in self.procs.values():
            if p.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    p.send_signal(signal.SIGTERM)
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


def client_hint(conf: Conf) -> str | None:
    """How to point gridstat & co here, when their own configuration lookup does not."""
    sock = Path(str(conf.get("API_LISTEN_SOCKET")))
    end = time.monotonic() + 10
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
class Display:
    def __init__(self, quiet: bool = False):
        self.tty = sys.stdout.isatty() and not quiet
        self.quiet = quiet
        self.last = ""
        self.last_print = 0.0
        self.t0 = time.monotonic()
        self.seen_events: set[int] = set()

    def line(self, cid: int, p: dict[str, Any]) -> str:
        el = int(time.monotonic() - self.t0)
        total = p["total"] or 0
        pct = f" ({100 * p['done'] // total}%)" if total else ""
        return (f"campaign {cid} {p['name']}: {p['done']}/{total} done{pct}, {p['running']} running, "
                f"{p['pending']} waiting, {p['failed']} failed, {p['open_events']} open events "
                f"[{el // 60:02d}:{el % 60:02d}]")

    def show(self, cid: int, p: dict[str, Any]) -> None:
        for e in p["events"]:
            if e["id"] not in self.seen_events and e["code"] not in ("RESUBMIT", "RESUBMIT_END", "BLACKLIST"):
                self.seen_events.add(e["id"])
                if not self.quiet:
                    self._clear()
                    first = (e["message"] or "").splitlines()[0] if e["message"] else ""
                    print(f"  event {e['id']} {e['code']} (job {e['job_id']}): {first}")
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
        if p:
            print(self.line(cid, p), flush=True)


def print_events(p: dict[str, Any]) -> None:
    for e in p["events"]:
        if e["code"] == "BLACKLIST":
            continue
        print(f"event {e['id']} {e['code']} [{e['class_']}] job {e['job_id']}:")
        for line in (e["message"] or "").splitlines():
            print(f"    {line}")


# ------------------------------------------------------------------ commands
def cmd_run(args: argparse.Namespace) -> int:
    from cigri.db import local as dblocal

    conf = local_conf(args.conf)
    if args.cores is not None:
        conf = conf.with_values(LOCAL_CORES=args.cores)
    try:
        engine = open_db(conf)
    except Exception as e:  # noqa: BLE001 - one clear message, never a traceback
        die(f"cannot open the database: {e}")
    cid, resumed = submit_or_resume(conf, engine, args.jdl, args.new)
    print(f"{'Resuming' if resumed else 'Submitted'} campaign {cid} (CAMPAIGN_ID={cid})", flush=True)
    lock_fd, owner = run_lock(conf)
    daemons: Daemons | None = None
    if owner:
        _stop_idle_executor(conf)  # a new one starts with this run's LOCAL_CORES, now (in the
        threading.Thread(target=_start_executor, args=(conf,), daemon=True).start()  # background)
        daemons = Daemons(conf, daemon_conf(conf, args.cores), api=not args.no_api)
        daemons.start()
        print(f"CiGri is running (log: {daemons.log_path}); Ctrl-C stops it, running tasks go on.", flush=True)
        hint = client_hint(conf) if not args.quiet and not args.no_api else None
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
    blocked_since: float | None = None
    cancelled_since: float | None = None
    blocked_shown = False
    block_wait = max(10.0, 6 * float(conf.get("ALMIGHTY_CYCLE")))
    refresh_at = 0.0
    try:
        while True:
            with engine.connect() as conn:
                # The full progress counts the campaign's jobs: its cost grows with the campaign,
                # so it is refreshed at most 5 % of the time; a state change shows at once.
                state = dblocal.campaign_state(conn, cid)
                if p is None or time.monotonic() >= refresh_at or state != p.get("state"):
                    t = time.monotonic()
                    p = dblocal.progress(conn, cid)
                    refresh_at = time.monotonic() + max(0.5, 20 * (time.monotonic() - t))
            if not p:
                display.end(cid, None)
                print(f"Campaign {cid} disappeared (purged?)")
                code = EXIT_EVENTS
                break
            display.show(cid, p)
            if p["state"] == "terminated":
                display.end(cid, p)
                if p["open_events"]:
                    print(f"Campaign {cid} terminated with open events:")
                    print_events(p)
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
            if p["active"] == 0 and p["open_events"] and p["state"] == "in_treatment":
                blocked_since = blocked_since or time.monotonic()
                if time.monotonic() - blocked_since > block_wait and not blocked_shown:
                    display.end(cid, p)
                    print(f"Campaign {cid} is stopped by open events:")
                    print_events(p)
                    fix = f"`gridevents -c {cid} -f -r` (closes them and resubmits the failed tasks)"
                    if display.tty and daemons is not None and not args.no_api:
                        # gridevents needs the API, which lives as long as this command: wait here.
                        print(f"Fix them with {fix} in another shell: CiGri goes on. Ctrl-C stops it.",
                              flush=True)
                        blocked_shown = True
                    else:
                        print(f"Fix them: run `cigri local run {args.jdl}` again and, while it runs, {fix} "
                              "in another shell.")
                        code = EXIT_BLOCKED
                        break
            else:
                blocked_since = None
                blocked_shown = False
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
        display.end(cid, p)
        print("Interrupted: stopping CiGri. Running tasks go on; "
              f"`cigri local run {args.jdl}` resumes the campaign.", flush=True)
        code = EXIT_INTERRUPTED
    finally:
        waiter.close()
        if daemons is not None:
            with contextlib.suppress(KeyboardInterrupt):
                daemons.stop()
        os.close(lock_fd)
        if daemons is not None and code != EXIT_INTERRUPTED:
            _stop_idle_executor(conf)
    return code


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
    from cigri.db import local as dblocal
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
        for cid in reversed(dblocal.latest_campaign_ids(conn, args.last)):
            p = dblocal.progress(conn, cid)
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
    store = _store(conf)
    store.stop_executor()  # first: no task starts after the kills (and every started one has its pid)
    if args.kill_tasks:
        for rec in store.running_records():
            with contextlib.suppress(ProcessLookupError, PermissionError):
                if rec.get("shepherd"):
                    os.killpg(int(rec["shepherd"]), signal.SIGKILL)
        print("Killed the running tasks.")
    print("Local executor stopped." if not store.running_records() else
          "Local executor stopped; running tasks go on (a new executor adopts them).")
    return 0


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
    r.add_argument("--no-api", action="store_true", help="do not start the API server")
    r.add_argument("--quiet", action="store_true", help="no progress display")
    r.add_argument("--timeout", type=float, default=0, help="give up waiting after this many seconds")
    r.set_defaults(func=cmd_run)
    s = lsub.add_parser("status", help="daemons, executor and recent campaigns")
    s.add_argument("--last", type=int, default=10, help="campaigns to list")
    s.set_defaults(func=cmd_status)
    st = lsub.add_parser("stop", help="stop `cigri local run` and the local executor")
    st.add_argument("--kill-tasks", action="store_true", help="also kill the running tasks")
    st.set_defaults(func=cmd_stop)
    e = lsub.add_parser("env", help="print the CIGRICONFFILE export that points grid* commands here")
    e.set_defaults(func=cmd_env)
    for p in (r, s, st, e):
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
