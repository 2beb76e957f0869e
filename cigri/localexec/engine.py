"""CiGri's engine for `cigri local run`, in one process: the meta-scheduler, the runner of
the local cluster, colombo, the updator, nikita and judas take turns in one loop.

On a grid each of them is a process of its own under almighty, so that one slow module
never delays another and any of them can be restarted alone. On one machine with an
embedded SQLite database (one writer at a time anyway) the same cycles, run in turn,
cost one interpreter instead of seven (about 300 MB less) and never wait for each other's
write lock. The cycles are exactly the daemons' own (`cigri.modules.*`): every state
change is still one transaction, so killing this process loses nothing.

Run as `python -P -m cigri.localexec.engine` with CIGRICONFFILE set (by `cigri local run`)."""

from __future__ import annotations

import logging
import signal
import sys
import time
from collections.abc import Callable
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from cigri.config import Conf, get_conf, set_conf
from cigri.errors import ConfigError

log = logging.getLogger("cigri.local")

#: seconds of database trouble before it is logged as an error (short waits are normal)
SLOW_DB = 30.0


class LocalEngine:
    def __init__(self, conf: Conf, cluster: str = "local"):
        from cigri.db.engine import get_engine

        self.conf = conf
        self.cluster = cluster
        self.engine: Engine = get_engine(conf)
        self.stopping = False
        self.waiter: Any = None
        self.due: dict[str, float] = {}
        self.db_trouble_since: float | None = None
        self.spent: dict[str, list[Any]] = {}  # module -> [cycles, seconds]: logged at exit

    def _on_term(self, _signum: int, _frame: Any) -> None:
        self.stopping = True  # no logging in a signal handler
        if self.waiter is not None:
            self.waiter.wake()

    def _guarded(self, name: str, fn: Callable[[], Any]) -> Any:
        """One module's cycle: a busy or failing database is waited for (and said so when it
        lasts), an error in one module never stops the others."""
        t = time.monotonic()
        try:
            res = fn()
            spent = self.spent.setdefault(name, [0, 0.0])
            spent[0] += 1
            spent[1] += time.monotonic() - t
            if self.db_trouble_since is not None:
                log.info("Database usable again after %.0f s", time.monotonic() - self.db_trouble_since)
                self.db_trouble_since = None
            return res
        except sa.exc.OperationalError as e:
            t = time.monotonic()
            self.db_trouble_since = self.db_trouble_since or t
            if t - self.db_trouble_since > SLOW_DB:
                log.error("%s: database unusable for %.0f s (%s); retrying", name, t - self.db_trouble_since,
                          str(e).splitlines()[0])
            else:
                log.info("%s: database busy (%s); retrying", name, str(e).splitlines()[0])
            time.sleep(0.5)
        except Exception:  # noqa: BLE001 - one bad cycle must not stop local mode
            log.exception("%s cycle failed", name)
            time.sleep(0.5)
        return None

    def _periodic(self, name: str, period: float, woken: bool, fn: Callable[[], Any]) -> None:
        now = time.monotonic()
        if woken or now >= self.due.get(name, 0.0):
            self.due[name] = now + period
            self._guarded(name, fn)

    def run(self) -> int:
        from cigri.db.engine import wait_for_database
        from cigri.db.notify import COLOMBO, JUDAS, METASCHEDULER, NIKITA, UPDATOR, Waiter, runner_channel
        from cigri.engine.runner import ClusterGone, CycleResult, Runner
        from cigri.modules import colombo, judas, metascheduler, nikita, updator  # type: ignore[import-not-found]

        signal.signal(signal.SIGTERM, self._on_term)
        signal.signal(signal.SIGINT, self._on_term)
        if not wait_for_database(self.engine, stop=lambda: self.stopping):
            return 0
        runner = Runner(self.engine, self.cluster, self.conf)
        info = runner.load()
        self.waiter = Waiter(self.engine, [METASCHEDULER, COLOMBO, UPDATOR, NIKITA, JUDAS,
                                           runner_channel(info.id)]).start()
        fd = runner.adapter.wakeup_fd() if runner.adapter is not None else None
        if fd is not None:
            self.waiter.add_fd(fd)
        conf, engine = self.conf, self.engine
        cycle = float(conf.get("ALMIGHTY_CYCLE"))
        idle = float(conf.get("RUNNER_MIN_CYCLE_DURATION"))
        busy = min(1.0, idle)
        log.info("Local engine started (cluster %s, id %s)", info.name, info.id)
        # The runner's turn comes at every wake-up (the executor's, most often); the meta-
        # scheduler's when the runner has nothing queued, or woken by a notification seen
        # while the runner had work queued; the others' once per period.
        woken, starved = True, True
        try:
            while not self.stopping:
                self._periodic("metascheduler", cycle, woken and starved, lambda: metascheduler.cycle(engine, conf))
                res = self._guarded("runner", runner.run_cycle) or CycleResult(in_flight=1)
                starved = not res.queued
                self._periodic("colombo", colombo.POLL, False, lambda: colombo.cycle(engine, conf))
                self._periodic("nikita", cycle, False, lambda: nikita.cycle(engine, conf))
                self._periodic("updator", cycle, False, lambda: updator.cycle(engine, conf))
                self._periodic("judas", float(conf.get("JUDAS_POLL")), False, lambda: judas.cycle(engine, conf))
                if res.submitted:
                    woken = True
                    continue
                woken = self.waiter.wait(min(cycle, busy if (res.in_flight or res.queued) else idle))
        except ClusterGone as e:
            log.warning("%s: local engine exiting.", e)
        finally:
            self._guarded("judas", lambda: judas.cycle(engine, conf))  # the last notifications
            self.waiter.close()
            engine.dispose()
        log.info("Interruption caught: exiting (cycles: %s)", ", ".join(
            f"{k} {n} in {sec:.1f} s" for k, (n, sec) in sorted(self.spent.items())))
        return 0


def main(argv: list[str] | None = None) -> int:
    from cigri.log import setup_daemon_logging

    try:
        conf = get_conf()
    except ConfigError as e:
        print(f"cigri local engine: {e}", file=sys.stderr)
        return 1
    set_conf(conf)
    setup_daemon_logging("LOCAL", conf)
    return LocalEngine(conf).run()


if __name__ == "__main__":
    sys.exit(main())
