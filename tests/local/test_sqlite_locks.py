"""SQLite (local mode) never locks a reader out: reads begin deferred and, in WAL mode,
see the last committed state while a write transaction is open."""

from __future__ import annotations

import threading
from pathlib import Path

import sqlalchemy as sa

from cigri.config import Conf
from cigri.db.engine import make_engine, transaction


def test_a_read_does_not_wait_for_an_open_write_transaction(tmp_path: Path):
    engine = make_engine(Conf(values={"DATABASE_TYPE": "SQLite", "DATABASE_PATH": str(tmp_path / "db.sqlite")}))
    with transaction(engine) as c:
        c.exec_driver_sql("CREATE TABLE t (x INTEGER)")
        c.exec_driver_sql("INSERT INTO t VALUES (1)")
    seen: list[object] = []

    def read() -> None:
        try:
            with engine.connect() as conn:
                seen.append(conn.execute(sa.text("SELECT count(*) FROM t")).scalar())
        except Exception as e:  # noqa: BLE001 - reported by the assertion
            seen.append(e)

    with transaction(engine) as w:
        w.exec_driver_sql("INSERT INTO t VALUES (2)")
        reader = threading.Thread(target=read)
        reader.start()
        reader.join()  # before the writer commits: a read that took the write lock would wait here
        assert seen == [1]
    read()
    assert seen == [1, 2]
    engine.dispose()


def test_a_read_connection_does_not_block_writers(tmp_path: Path):
    engine = make_engine(Conf(values={"DATABASE_TYPE": "SQLite", "DATABASE_PATH": str(tmp_path / "db.sqlite")}))
    with transaction(engine) as c:
        c.exec_driver_sql("CREATE TABLE t (x INTEGER)")
    with engine.connect() as r:
        assert r.execute(sa.text("SELECT count(*) FROM t")).scalar() == 0  # a read transaction stays open
        done: list[object] = []

        def write() -> None:
            try:
                with transaction(engine) as w:
                    w.exec_driver_sql("INSERT INTO t VALUES (1)")
                done.append(True)
            except Exception as e:  # noqa: BLE001
                done.append(e)

        t = threading.Thread(target=write)
        t.start()
        t.join()
        assert done == [True]
    engine.dispose()
