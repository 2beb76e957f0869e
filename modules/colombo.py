"""`cigri-colombo`: the decision daemon (spec §9). Decides on every new open unchecked event
within one short cycle: woken by NOTIFY on PostgreSQL, else it polls every COLOMBO_POLL
(≤ 1 s). Several colombos may run at once: events are locked with SKIP LOCKED."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import time
from types import FrameType

from cigri.config import Conf, get_conf, set_conf
from cigri.errors import ConfigError
from cigri.log import setup_daemon_logging

log = logging.getLogger("cigri.colombo")
POLL = 0.5


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="cigri-colombo", description="Take the decisions on CiGri events.")
    p.add_argument("--conf", help="cigri.conf to use")
    p.add_argument("--once", action="store_true", help="one pass and exit")
    args = p.parse_args(argv)
    try:
        conf = Conf(args.conf) if args.conf else get_conf()
    except ConfigError as e:
        print(f"cigri-colombo: {e}", file=sys.stderr)
        return 1
    set_conf(conf)
    setup_daemon_logging("COLOMBO", conf)
    from cigri.db.engine import get_engine, wait_for_database
    from cigri.engine import colombo

    stopping = {"flag": False}
    waiter = None

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        stopping["flag"] = True  # no logging in a signal handler
        if waiter is not None:
            waiter.wake()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    engine = get_engine(conf)
    if not wait_for_database(engine, stop=lambda: stopping["flag"]):
        log.info("Interruption caught: exiting.")
        return 0
    try:
        from cigri.db.notify import COLOMBO, Waiter

        waiter = Waiter(engine, [COLOMBO]).start()
    except Exception as e:  # noqa: BLE001
        log.info("No wake-up channel (%s): polling", e)
    log.info("Colombo started")
    try:
        while not stopping["flag"]:
            try:
                n = colombo.check_events(engine, conf=conf)
                with engine.begin() as conn:
                    colombo.check_blacklists(conn)
                if n:
                    log.debug("Decided on %s events", n)
                    try:
                        from cigri.db.notify import JUDAS, METASCHEDULER, notify

                        with engine.begin() as conn:
                            notify(conn, JUDAS)
                            notify(conn, METASCHEDULER)
                    except ImportError:
                        pass
            except Exception:  # noqa: BLE001 - keep deciding
                log.exception("Colombo pass failed")
                time.sleep(POLL)
            if args.once:
                break
            if waiter is not None:
                waiter.wait(POLL)
            else:
                time.sleep(POLL)
        if stopping["flag"]:
            log.info("Interruption caught: exiting.")
    finally:
        if waiter is not None:
            waiter.close()
        engine.dispose()
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
