"""`cigri-judas`: the notification daemon. A pass runs when woken (NOTIFY cigri_judas or
SIGUSR1) and at least every JUDAS_POLL seconds; `--once` runs a single pass."""

from __future__ import annotations

import sys
from collections.abc import Sequence

from sqlalchemy.engine import Engine

from cigri.config import Conf
from cigri.db.notify import JUDAS
from cigri.engine.almighty import module_main


def cycle(engine: Engine, conf: Conf) -> None:
    """Send the notifications of new events."""
    from cigri.engine import judas

    judas.notification_pass(engine, conf)


def main(argv: Sequence[str] | None = None) -> int:
    return module_main("judas", cycle, [JUDAS], lambda c: float(c.get("JUDAS_POLL")), argv, loop_default=True)


if __name__ == "__main__":
    sys.exit(main())
