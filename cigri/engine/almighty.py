"""Almighty, the supervisor (spec §1.3), and the loop every engine daemon runs.

Process tree (each child is `sys.executable -P -m cigri.modules.<x>`, so it works in any
virtual environment; the configuration reaches it through CIGRICONFFILE):

    almighty ─┬─ judas            long-lived, woken by NOTIFY cigri_judas / SIGUSR1
              ├─ colombo          long-lived, woken by NOTIFY cigri_colombo
              ├─ runner <name>    one per enabled cluster
              ├─ metascheduler --loop ┐ long-lived loops woken by NOTIFY, at least every
              ├─ updator --loop       │ ALMIGHTY_CYCLE s: no fixed sleep limits throughput,
              └─ nikita --loop        ┘ and a slow updator never delays the scheduler.

Differences from CiGri3: the periodic modules are long-lived loops instead of one-shot
processes run in sequence every 10 s (MODULE_TIMEOUT still applies to each cycle: the
loop reports cycle start/end on a heartbeat pipe and almighty kills and restarts a
module stuck in one cycle, CHILD_TIMEOUT); the clusters table is polled, so clusters
enabled, disabled or added while running get or lose their runner without a restart;
every crashed child (not only runners) is restarted after RESTART_DELAY (doubled for
quick successive crashes, up to 16x) and recorded (RUNNER_FAILED, JUDAS_FAILED,
<MODULE>_FAILED); children get PR_SET_PDEATHSIG so even a
`kill -9` of almighty leaves no orphan; no enabled cluster is not fatal (waits for one)."""

from __future__ import annotations

import argparse
import ctypes
import logging
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy.engine import Engine
from sqlalchemy.exc import OperationalError

from cigri.config import Conf, get_conf, set_conf
from cigri.db import events as eventsdb
from cigri.db.clusters import enabled_cluster_names
from cigri.db.engine import get_engine, transaction, wait_for_database
from cigri.db.events import is_notified
from cigri.db.notify import JUDAS, Waiter, notify
from cigri.db.parameters import ensure_null_parameter
from cigri.errors import ConfigError
from cigri.log import setup_daemon_logging

log = logging.getLogger("cigri.almighty")

HEARTBEAT_ENV = "CIGRI_HEARTBEAT_FD"
PERIODIC = ("metascheduler", "updator", "nikita")
STAGGER = 1.0  # seconds between the start of the feeding children and the others

# ---------------------------------------------------------------- logging (spec §1.6)



def _set_title(title: str) -> None:
    try:  # best effort, like CiGri3's $0 = "cigri: runner <name>"
        libc = ctypes.CDLL(None)
        libc.prctl(15, ctypes.c_char_p(title.encode()[:15]), 0, 0, 0)  # PR_SET_NAME
    except Exception:  # noqa: BLE001, S110
        pass


# ---------------------------------------------------------------- the daemon loop


class Stop(Exception):
    pass


class DaemonLoop:
    """Run `cycle(engine, conf)` until SIGTERM/SIGINT, sleeping in a Waiter between cycles
    (woken by NOTIFY on `channels` or SIGUSR1). Reports cycles on the heartbeat pipe."""

    def __init__(self, name: str, cycle: Callable[[Engine, Conf], Any], channels: Sequence[str],
                 period: Callable[[Conf], float], conf: Conf | None = None):
        self.name, self.cycle, self.channels, self.period = name, cycle, list(channels), period
        self.conf = conf or get_conf()
        self.stopping = False
        self.waiter: Waiter | None = None
        fd = os.environ.get(HEARTBEAT_ENV)
        self.hb_fd = int(fd) if fd and fd.isdigit() else None

    def _beat(self, what: bytes) -> None:
        if self.hb_fd is None:
            return
        try:
            os.write(self.hb_fd, what)
        except (BlockingIOError, BrokenPipeError, OSError):
            pass

    def _on_term(self, signum: int, _frame: Any) -> None:
        # No logging here: a handler interrupting the logging machinery could deadlock.
        self.stopping = True
        if self.waiter is not None:
            self.waiter.wake()

    def _on_usr1(self, _signum: int, _frame: Any) -> None:
        if self.waiter is not None:
            self.waiter.wake()

    def run(self, once: bool = False) -> int:
        engine = get_engine(self.conf)
        signal.signal(signal.SIGTERM, self._on_term)
        signal.signal(signal.SIGINT, self._on_term)
        signal.signal(signal.SIGUSR1, self._on_usr1)
        if not wait_for_database(engine, self.conf.get("DB_RECONNECT_DELAY"), stop=lambda: self.stopping):
            log.info("Interruption caught: exiting.")
            return 0
        if once:
            self.cycle(engine, self.conf)
            return 0
        self.waiter = Waiter(engine, self.channels).start()
        try:
            while not self.stopping:
                self._beat(b"B")
                try:
                    self.cycle(engine, self.conf)
                except OperationalError as e:
                    log.error("Database error in %s: %s", self.name, str(e).splitlines()[0])
                    self._beat(b"E")
                    self.waiter.wait(float(self.conf.get("DB_RECONNECT_DELAY")))
                    continue
                except Exception:  # noqa: BLE001 - one bad cycle must not kill the daemon
                    log.exception("%s cycle failed", self.name)
                    self._beat(b"E")
                    self.waiter.wait(float(self.conf.get("RESTART_DELAY")))
                    continue
                self._beat(b"E")
                if self.stopping:
                    break
                self.waiter.wait(self.period(self.conf))
            log.info("Interruption caught: exiting.")
        finally:
            self.waiter.close()
        return 0


CONF_EPILOG = ("Configuration: --conf FILE, else $CIGRICONFFILE, else cigri.conf in $CIGRICONFDIR, "
               "$CIGRIDIR, ., ./etc, /etc/cigri; with none at all, the embedded SQLite configuration "
               "of local mode. Logs go to LOG_FILE (default: standard output).")


def _daemon_conf(prog: str, path: str | None) -> Conf | None:
    """The daemon's configuration, or None after printing one line naming the problem."""
    try:
        if path:
            conf = Conf(path)
            os.environ["CIGRICONFFILE"] = os.path.abspath(path)  # children read the same file
            set_conf(conf)
            return conf
        return get_conf()
    except ConfigError as e:
        print(f"{prog}: {e}", file=sys.stderr)
        return None


def module_main(name: str, cycle: Callable[[Engine, Conf], Any], channels: Sequence[str],
                period: Callable[[Conf], float], argv: Sequence[str] | None = None,
                loop_default: bool = False) -> int:
    """Entry point of cigri-<name>: one pass (CiGri3's one-shot modules) or `--loop`."""
    ap = argparse.ArgumentParser(prog=f"cigri-{name}", description=(cycle.__doc__ or name).splitlines()[0],
                                 epilog=CONF_EPILOG)
    ap.add_argument("--conf", metavar="FILE", help="cigri.conf to use")
    ap.add_argument("--loop", action="store_true", default=loop_default,
                    help="run until SIGTERM, woken by NOTIFY and at least once per period "
                         "(as almighty runs it)" + (" [default]" if loop_default else ""))
    ap.add_argument("--once", action="store_true",
                    help="run one pass and exit" + ("" if loop_default else " [default]"))
    a = ap.parse_args(argv)
    conf = _daemon_conf(f"cigri-{name}", a.conf)
    if conf is None:
        return 1
    setup_daemon_logging(name.upper(), conf)
    _set_title(f"cigri: {name}")
    return DaemonLoop(name, cycle, channels, period, conf).run(once=a.once or not a.loop)


# ---------------------------------------------------------------- almighty


@dataclass
class Child:
    key: str  # "runner:<cluster id>", "judas", "colombo", "metascheduler"...
    kind: str  # runner | judas | colombo | periodic
    argv: list[str]
    label: str  # for messages
    proc: subprocess.Popen[bytes] | None = None
    restart_at: float = 0.0
    hb_read: int | None = None
    cycle_since: float | None = None
    wanted: bool = True
    failures: int = 0
    extra: dict[str, Any] = field(default_factory=dict)


def _pdeathsig() -> None:
    """Children die with almighty, even after a kill -9 (Linux PR_SET_PDEATHSIG). SIGUSR1 starts
    ignored (the disposition survives exec) so a wake-up sent before the child installed its
    handler cannot kill it; judas then installs its own handler."""
    signal.signal(signal.SIGUSR1, signal.SIG_IGN)
    try:
        ctypes.CDLL(None).prctl(1, signal.SIGTERM, 0, 0, 0)
    except Exception:  # noqa: BLE001, S110
        pass


class Almighty:
    def __init__(self, conf: Conf, commands: dict[str, list[str]] | None = None, tick: float = 0.25):
        self.conf = conf
        self.commands = commands or {}
        self.tick = tick
        self.engine = get_engine(conf)
        self.children: dict[str, Child] = {}
        self.stopping = False
        self._tmpdir: str | None = None
        self.env = self._child_env()
        self._last_cluster_poll = 0.0

    # -- configuration for children
    def _child_env(self) -> dict[str, str]:
        env = dict(os.environ)
        path = self.conf.path
        same = False
        if path:
            try:
                same = Conf(path)._raw == self.conf._raw
            except Exception:  # noqa: BLE001
                same = False
        if not same:
            self._tmpdir = tempfile.mkdtemp(prefix="cigri-almighty-")
            path = os.path.join(self._tmpdir, "cigri.conf")
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as f:
                for k, v in self.conf._raw.items():
                    f.write(f'{k} = "{v}"\n')
        env["CIGRICONFFILE"] = str(path)
        return env

    def _argv(self, kind: str, *args: str) -> list[str]:
        base = self.commands.get(kind)
        if base is not None:
            return [*base, *args]
        module = {"runner": "runner", "judas": "judas", "colombo": "colombo"}.get(kind, kind)
        extra = ["--loop"] if kind in PERIODIC else []
        return [sys.executable, "-P", "-m", f"cigri.modules.{module}", *extra, *args]

    # -- children
    def _spawn(self, ch: Child) -> None:
        env = dict(self.env)
        pass_fds: tuple[int, ...] = ()
        if ch.kind == "periodic":
            if ch.hb_read is not None:
                os.close(ch.hb_read)
            r, w = os.pipe()
            os.set_blocking(r, False)
            os.set_blocking(w, False)
            env[HEARTBEAT_ENV] = str(w)
            pass_fds = (w,)
            ch.hb_read = r
            ch.cycle_since = None
        try:
            ch.proc = subprocess.Popen(ch.argv, env=env, pass_fds=pass_fds, preexec_fn=_pdeathsig)  # noqa: PLW1509
            ch.extra["started_at"] = time.monotonic()
            log.info("Started %s (pid %d)", ch.label, ch.proc.pid)
        except OSError as e:
            log.error("Could not start %s: %s", ch.label, e)
            ch.proc = None
            ch.restart_at = time.monotonic() + float(self.conf.get("RESTART_DELAY"))
        finally:
            for fd in pass_fds:
                os.close(fd)

    def _add(self, key: str, kind: str, label: str, argv: list[str], delay: float = 0.0) -> Child:
        ch = Child(key, kind, argv, label)
        self.children[key] = ch
        if delay > 0:
            ch.restart_at = time.monotonic() + delay  # started by _restart_due
        else:
            self._spawn(ch)
        return ch

    def _event(self, code: str, message: str, cluster_id: int | None = None) -> None:
        try:
            with transaction(self.engine) as conn:
                eventsdb.create_event(conn, "log", code, state="closed", cluster_id=cluster_id, message=message)
                notify(conn, JUDAS)
        except Exception as e:  # noqa: BLE001 - the DB may be down: the log still has it
            log.error("Could not record event %s (%s): %s", code, message, e)
        self._wake_judas()

    def _wake_judas(self) -> None:
        j = self.children.get("judas")
        if j is not None and j.proc is not None and j.proc.poll() is None:
            try:
                j.proc.send_signal(signal.SIGUSR1)
            except OSError:
                pass

    def _signal(self, ch: Child, sig: int) -> None:
        if ch.proc is not None and ch.proc.poll() is None:
            try:
                ch.proc.send_signal(sig)
            except OSError:
                pass

    def _reap(self) -> None:
        t = time.monotonic()
        for key, ch in list(self.children.items()):
            if ch.proc is None or ch.proc.poll() is None:
                continue
            rc = ch.proc.returncode
            ch.proc = None
            if self.stopping:
                continue
            if ch.wanted and ch.kind == "runner" and rc == 0:
                enabled = self._enabled_clusters()  # a runner exits 0 when its cluster is disabled
                if enabled is not None and ch.extra.get("cluster_id") not in enabled:
                    ch.wanted = False
            if not ch.wanted:
                log.info("%s stopped (exit %s)", ch.label, rc)
                del self.children[key]
                continue
            if t - ch.extra.get("started_at", t) > 60:
                ch.failures = 0  # it had been running fine: a fresh failure
            ch.failures += 1
            # RESTART_DELAY, doubled for each quick successive crash (at most 16x): a child
            # that cannot start does not flood the admin with RUNNER_FAILED events.
            delay = float(self.conf.get("RESTART_DELAY")) * 2 ** min(ch.failures - 1, 4)
            ch.restart_at = t + delay
            if ch.kind == "runner":
                self._event("RUNNER_FAILED", f"Runner of {ch.extra.get('name')} terminated (exit {rc})! "
                                             "Restarting.", ch.extra.get("cluster_id"))
            else:
                self._event(f"{ch.key.upper()}_FAILED", f"{ch.label} terminated (exit {rc})! Restarting.")

    def _restart_due(self) -> None:
        t = time.monotonic()
        for ch in self.children.values():
            if ch.proc is None and ch.wanted and not self.stopping and t >= ch.restart_at:
                self._spawn(ch)

    def _heartbeats(self) -> None:
        timeout = float(self.conf.get("MODULE_TIMEOUT"))
        t = time.monotonic()
        for ch in self.children.values():
            if ch.kind != "periodic" or ch.hb_read is None:
                continue
            try:
                data = os.read(ch.hb_read, 4096)
            except BlockingIOError:
                data = b""
            except OSError:
                data = b""
            if data:
                last = data[-1:]
                ch.cycle_since = t if last == b"B" else None
            if ch.cycle_since is not None and ch.proc is not None and t - ch.cycle_since > timeout:
                log.error("%s timeout! Canceling!", ch.label)
                self._event("CHILD_TIMEOUT", f"{ch.key} timeout! Canceling!")
                self._signal(ch, signal.SIGTERM)
                ch.extra["kill_at"] = t + 10
                ch.cycle_since = None
            kill_at = ch.extra.get("kill_at")
            if kill_at and t > kill_at:
                self._signal(ch, signal.SIGKILL)
                ch.extra.pop("kill_at", None)

    def _enabled_clusters(self) -> dict[int, str] | None:
        try:
            with self.engine.connect() as conn:
                return enabled_cluster_names(conn)
        except Exception as e:  # noqa: BLE001 - DB down: keep what runs
            log.error("Could not read the clusters table: %s", e)
            return None

    def sync_runners(self) -> None:
        """One runner per enabled cluster: start new ones, stop those of disabled clusters."""
        wanted = self._enabled_clusters()
        if wanted is None:
            return
        for cid, name in wanted.items():
            key = f"runner:{cid}"
            ch = self.children.get(key)
            if ch is not None and ch.extra.get("name") != name:  # renamed: new runner
                ch.wanted = False
                self._signal(ch, signal.SIGTERM)
                self.children.pop(key)
                ch = None
            if ch is None:
                c = Child(key, "runner", self._argv("runner", name), f"runner {name}")
                c.extra.update(name=name, cluster_id=cid)
                self.children[key] = c
                self._spawn(c)
        for key, ch in list(self.children.items()):
            if ch.kind == "runner" and int(key.split(":")[1]) not in wanted and ch.wanted:
                log.info("Cluster %s is no longer enabled: stopping its runner", ch.extra.get("name"))
                ch.wanted = False
                if ch.proc is None:
                    del self.children[key]
                else:
                    self._signal(ch, signal.SIGTERM)

    # -- life cycle
    def _on_term(self, _signum: int, _frame: Any) -> None:
        if not self.stopping:
            print("Interruption caught: exiting.", file=sys.stderr)
        self.stopping = True

    def _on_usr1(self, _signum: int, _frame: Any) -> None:
        self._wake_judas()

    def check_database(self) -> None:
        """The null parameter used by prologue/epilogue jobs (spec §1.3 step 5)."""
        with transaction(self.engine) as conn:
            ensure_null_parameter(conn)

    def stop(self) -> None:
        """Ask run() to shut down (what SIGTERM does; usable when run() is in a thread)."""
        self.stopping = True

    def run(self) -> int:
        try:
            signal.signal(signal.SIGTERM, self._on_term)
            signal.signal(signal.SIGINT, self._on_term)
            signal.signal(signal.SIGUSR1, self._on_usr1)
        except ValueError:  # not the main thread: the embedder calls stop()
            log.info("Almighty runs outside the main thread: stop it with Almighty.stop()")
        pid_file = self.conf.get("PID_FILE")
        if pid_file:
            Path(pid_file).parent.mkdir(parents=True, exist_ok=True)
            Path(pid_file).write_text(f"{os.getpid()}\n")
        try:
            if not wait_for_database(self.engine, self.conf.get("DB_RECONNECT_DELAY"),
                                     stop=lambda: self.stopping):
                return 0
            self.check_database()
            # What feeds the clusters starts first; the others a moment later, so that their
            # start-up (imports) does not compete with it for the CPU.
            self._add("metascheduler", "periodic", "metascheduler", self._argv("metascheduler"))
            self.sync_runners()
            if not any(ch.kind == "runner" for ch in self.children.values()):
                log.warning("No enabled cluster yet: runners will start when clusters are enabled")
            self._add("judas", "judas", "judas", self._argv("judas"), delay=STAGGER)
            self._add("colombo", "colombo", "colombo", self._argv("colombo"), delay=STAGGER)
            for m in PERIODIC:
                if m != "metascheduler":
                    self._add(m, "periodic", m, self._argv(m), delay=STAGGER)
            self._event("ALMIGHTY_STARTING", "Cigri is starting.")
            while not self.stopping:
                self._reap()
                if self.stopping:
                    break
                self._heartbeats()
                if time.monotonic() - self._last_cluster_poll >= 1.0:
                    self._last_cluster_poll = time.monotonic()
                    self.sync_runners()
                self._restart_due()
                time.sleep(self.tick)
            self.shutdown()
            return 0
        finally:
            if pid_file:
                try:
                    Path(pid_file).unlink()
                except OSError:
                    pass
            if self._tmpdir:
                for p in Path(self._tmpdir).glob("*"):
                    p.unlink()
                os.rmdir(self._tmpdir)

    def shutdown(self, grace: float = 10.0) -> None:
        """ALMIGHTY_TERMINATING, give judas a moment to send it, then stop every child."""
        self.stopping = True
        try:
            with transaction(self.engine) as conn:
                eid = eventsdb.create_event(conn, "log", "ALMIGHTY_TERMINATING", state="closed",
                                            message="Cigri is terminating!")
                notify(conn, JUDAS)
        except Exception as e:  # noqa: BLE001
            log.error("Could not record ALMIGHTY_TERMINATING: %s", e)
            eid = None
        self._wake_judas()
        judas = self.children.get("judas")
        for ch in self.children.values():  # the others stop while judas sends the notification
            if ch is not judas:
                self._signal(ch, signal.SIGTERM)
        deadline = time.monotonic() + 3.0
        while eid is not None and judas is not None and judas.proc is not None and judas.proc.poll() is None \
                and time.monotonic() < deadline:
            try:
                with self.engine.connect() as conn:
                    if is_notified(conn, eid):
                        break
            except Exception:  # noqa: BLE001
                break
            time.sleep(0.05)
        if judas is not None:
            self._signal(judas, signal.SIGTERM)
        end = time.monotonic() + grace
        for ch in self.children.values():
            if ch.proc is None:
                continue
            try:
                ch.proc.wait(max(0.1, end - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.warning("%s did not stop: killing it", ch.label)
                ch.proc.kill()
                ch.proc.wait()
        for ch in self.children.values():
            if ch.hb_read is not None:
                os.close(ch.hb_read)
                ch.hb_read = None
        log.info("Almighty stopped")


def run_almighty(conf: Conf | None = None, commands: dict[str, list[str]] | None = None) -> int:
    """Run CiGri's engine in the foreground until SIGTERM/SIGINT (systemd, `cigri local run`).
    `commands` replaces the command of a kind of child (runner, judas, colombo, metascheduler,
    updator, nikita): tests and embedders."""
    conf = conf or get_conf()
    set_conf(conf)
    return Almighty(conf, commands).run()


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="cigri-almighty", epilog=CONF_EPILOG,
        description="CiGri's supervisor, in the foreground: starts judas, colombo, one runner per enabled "
                    "cluster (clusters added, enabled or disabled later are picked up) and the meta-scheduler, "
                    "updator and nikita loops; restarts what crashes; SIGTERM or Ctrl-C stops everything.")
    ap.add_argument("--conf", metavar="FILE", help="cigri.conf to use (passed on to every daemon)")
    a = ap.parse_args(argv)
    conf = _daemon_conf("cigri-almighty", a.conf)
    if conf is None:
        return 1
    setup_daemon_logging("ALMIGHTY", conf)
    _set_title("cigri: almighty")
    return run_almighty(conf)
