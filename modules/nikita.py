"""`cigri-nikita`: one nikita pass (cancellations, walltime and waiting kills, queue purge,
affinity cleaning), or `--loop` as almighty runs it (NOTIFY cigri_nikita, at least every
ALMIGHTY_CYCLE seconds)."""

from __future__ import annotations

import sys
from collections.abc import Sequence

from sqlalchemy.engine import Engine

from cigri.config import Conf
from cigri.db.notify import NIKITA
from cigri.engine.almighty import module_main


def cycle(engine: Engine, conf: Conf) -> None:
    """Kill what has to be killed."""
    from cigri.engine import nikita

    nikita.run_once(engine, conf)


def main(argv: Sequence[str] | None = None) -> int:
    return module_main("nikita", cycle, [NIKITA], lambda c: float(c.get("ALMIGHTY_CYCLE")), argv)


if __name__ == "__main__":
    sys.exit(main())
