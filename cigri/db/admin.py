"""Create, check and upgrade a CiGri database (used by `cigri-db` and the tests)."""

from __future__ import annotations

import sys
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from cigri.db.engine import is_sqlite


def sql_dir() -> Path:
    """sql/ of the source tree, or share/cigri/sql of an installed CiGri."""
    here = Path(__file__).resolve().parent.parent.parent / "sql"
    for d in (here, Path(sys.prefix) / "share" / "cigri" / "sql", Path("/usr/local/share/cigri/sql")):
        if (d / "cigri3.sql").is_file():
            return d
    raise FileNotFoundError("cannot find CiGri's sql/ directory")


def run_sql_script(engine: Engine, text: str) -> None:
    """Run a multi-statement SQL script in one transaction."""
    raw = engine.raw_connection()
    try:
        cur = raw.cursor()
        if is_sqlite(engine):
            raw.driver_connection.executescript(text)  # type: ignore[union-attr]
        else:
            cur.execute(text)
        raw.commit()
    finally:
        raw.close()


def is_initialised(engine: Engine) -> bool:
    return sa.inspect(engine).has_table("campaigns")


def init_schema(engine: Engine) -> None:
    """Create every table, enum and index, the null parameter (id 0) and the seeded rule."""
    d = sql_dir()
    if is_sqlite(engine):
        run_sql_script(engine, (d / "cigri3-sqlite.sql").read_text())
        return
    run_sql_script(engine, (d / "cigri3.sql").read_text())
    run_sql_script(engine, (d / "cigri-py-additions.sql").read_text())
