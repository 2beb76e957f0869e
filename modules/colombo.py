"""`cigri-colombo`: the decision daemon. Decides on every new open unchecked event
within one short cycle: woken by NOTIFY cigri_colombo on PostgreSQL, at least every
COLOMBO_POLL seconds. Several colombos may run at once: events are locked with SKIP LOCKED.
Runs until SIGTERM (`--once`: one pass)."""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence

from sqlalchemy.engine import Engine

from cigri.config import Conf
from cigri.db.notify import COLOMBO, JUDAS, METASCHEDULER, notify
from cigri.engine.almighty import module_main

log = logging.getLogger("cigri.colombo")
POLL = 0.5


def cycle(engine: Engine, conf: Conf) -> None:
    """Take the decisions on new CiGri events and lift blacklists whose cause is closed."""
    from cigri.engine import colombo

    n = colombo.check_events(engine, conf=conf)
    with engine.begin() as conn:
        colombo.check_blacklists(conn)
        if n:
            log.debug("Decided on %s events", n)
            notify(conn, JUDAS)
            notify(conn, METASCHEDULER)


def main(argv: Sequence[str] | None = None) -> int:
    return module_main("colombo", cycle, [COLOMBO], lambda c: POLL, argv, loop_default=True)


if __name__ == "__main__":
    sys.exit(main())
