"""`cigri-runner <cluster_name>`: the runner of one cluster.

Exits 0 with a clear log line when its cluster is disabled or removed (almighty does not
restart it then); SIGTERM/SIGINT end it cleanly between two cycles."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
from types import FrameType

from cigri.clusters.base import ClusterConfigError
from cigri.config import Conf, get_conf, set_conf
from cigri.errors import ConfigError
from cigri.log import setup_daemon_logging

log = logging.getLogger("cigri.runner")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="cigri-runner", description="Submit and follow the jobs of one cluster.")
    p.add_argument("cluster", help="name of the (enabled) cluster")
    p.add_argument("--conf", help="cigri.conf to use")
    p.add_argument("--once", action="store_true", help="run one cycle and exit")
    args = p.parse_args(argv)
    try:
        conf = Conf(args.conf) if args.conf else get_conf()
    except ConfigError as e:
        print(f"cigri-runner: {e}", file=sys.stderr)
        return 1
    set_conf(conf)
    setup_daemon_logging(f"RUNNER {args.cluster}", conf)
    from cigri.db.engine import get_engine, wait_for_database
    from cigri.engine.runner import ClusterGone, Runner, run_forever

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
    runner = Runner(engine, args.cluster, conf)
    try:
        info = runner.load()
    except ClusterGone as e:
        log.warning("%s: runner not started.", e)
        engine.dispose()
        return 0
    except ClusterConfigError as e:  # e.g. a batch type without adapter, cert auth without a certificate
        log.error("Cluster %s cannot be used: %s", args.cluster, e)
        engine.dispose()
        return 2
    try:
        if args.once:
            runner.run_cycle()
            return 0
        try:
            from cigri.db.notify import Waiter, runner_channel

            waiter = Waiter(engine, [runner_channel(info.id)]).start()
            fd = runner.adapter.wakeup_fd() if runner.adapter is not None else None
            if fd is not None:
                waiter.add_fd(fd)
        except Exception as e:  # noqa: BLE001
            log.info("No wake-up channel (%s): polling", e)
        log.info("Runner of cluster %s (id %s) started", info.name, info.id)
        run_forever(runner, lambda: stopping["flag"], waiter)
        if stopping["flag"]:
            log.info("Interruption caught: exiting.")
    except ClusterGone as e:
        log.warning("%s: runner exiting.", e)
    finally:
        if waiter is not None:
            waiter.close()
        engine.dispose()
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
