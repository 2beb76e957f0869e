"""`cigri-updator`: one updator pass (finished campaigns, autofix, blacklists, grid usage,
stress factors), or `--loop` as almighty runs it (NOTIFY cigri_updator, at least every
ALMIGHTY_CYCLE seconds)."""

from __future__ import annotations

import sys
from collections.abc import Sequence

from sqlalchemy.engine import Engine

from cigri.config import Conf
from cigri.db.notify import UPDATOR
from cigri.engine.almighty import module_main


def cycle(engine: Engine, conf: Conf) -> None:
    """Detect finished campaigns and refresh cluster state."""
    from cigri.engine import updator

    updator.run_once(engine, conf)


def main(argv: Sequence[str] | None = None) -> int:
    return module_main("updator", cycle, [UPDATOR], lambda c: float(c.get("ALMIGHTY_CYCLE")), argv)


if __name__ == "__main__":
    sys.exit(main())
