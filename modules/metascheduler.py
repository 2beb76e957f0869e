"""`cigri-metascheduler`: one meta-scheduler pass (CiGri3's one-shot module), or `--loop`
as almighty runs it: woken by NOTIFY cigri_metascheduler (new campaign, queue running
low, blacklist lifted), at least every ALMIGHTY_CYCLE seconds."""

from __future__ import annotations

import sys
from collections.abc import Sequence

from sqlalchemy.engine import Engine

from cigri.config import Conf
from cigri.db.notify import METASCHEDULER
from cigri.engine.almighty import module_main


def cycle(engine: Engine, conf: Conf) -> None:
    """Launch prologues/epilogues and fill the per-cluster queues."""
    from cigri.engine import metascheduler

    metascheduler.run_once(engine, conf)


def main(argv: Sequence[str] | None = None) -> int:
    return module_main("metascheduler", cycle, [METASCHEDULER], lambda c: float(c.get("ALMIGHTY_CYCLE")), argv)


if __name__ == "__main__":
    sys.exit(main())
