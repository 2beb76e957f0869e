"""Connections to PostgreSQL (psycopg 3) or SQLite, and the one way to open a
transaction. Every state change in CiGri is one `with transaction(engine) as conn:`."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.engine.url import URL

from cigri.config import Conf, get_conf

log = logging.getLogger("cigri.db")

_engines: dict[str, Engine] = {}


def database_url(conf: Conf) -> URL:
    if conf.get("DATABASE_TYPE") == "SQLite":
        path = conf.get("DATABASE_PATH") or ":memory:"
        return URL.create("sqlite", database=path)
    return URL.create(
        "postgresql+psycopg",
        username=conf.get("DATABASE_USER_NAME"),
        password=conf.get("DATABASE_USER_PASSWORD"),
        host=conf.get("DATABASE_HOST"),
        port=conf.get("DATABASE_PORT"),
        database=conf.get("DATABASE_NAME"),
        query={"sslmode": conf.get("DATABASE_SSL_MODE")},
    )


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA busy_timeout=60000")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.close()
    # Let SQLAlchemy's begin() issue BEGIN IMMEDIATE so writers queue instead of deadlocking.
    dbapi_conn.isolation_level = None


class _SQLiteConnection(Connection):
    """Reads (a connection's implicit transaction) begin deferred: in WAL mode they never
    take the write lock, so a reader never holds up a writer nor waits for one. An explicit
    begin() (`engine.begin()`, `transaction()`, `conn.begin()`) is a write transaction."""

    _cigri_read = False

    def _autobegin(self) -> None:
        self._cigri_read = True
        try:
            super()._autobegin()
        finally:
            self._cigri_read = False


def _sqlite_begin(conn: Connection) -> None:
    # A write transaction takes the write lock first (BEGIN IMMEDIATE, waiting up to the busy
    # timeout): a deferred one that reads, then writes, fails at once if another writer
    # committed meanwhile, which no busy timeout can help.
    conn.exec_driver_sql("BEGIN" if getattr(conn, "_cigri_read", False) else "BEGIN IMMEDIATE")


def make_engine(conf: Conf | None = None, url: str | URL | None = None, **kw: Any) -> Engine:
    conf = conf or get_conf()
    u = sa.make_url(url) if url is not None else database_url(conf)
    if u.get_backend_name() == "sqlite":
        if u.database and u.database != ":memory:":
            Path(u.database).parent.mkdir(parents=True, exist_ok=True)
        eng = sa.create_engine(u, connect_args={"timeout": 60, "check_same_thread": False}, **kw)
        eng._connection_cls = _SQLiteConnection
        sa.event.listen(eng, "connect", _sqlite_pragmas)
        sa.event.listen(eng, "begin", _sqlite_begin)
        if u.database and u.database != ":memory:" and Path(u.database).is_file():
            from cigri.db.admin import upgrade_sqlite

            try:
                for what in upgrade_sqlite(eng):  # a database made by an older CiGri-py
                    log.info("%s: added %s", u.database, what)
            except sa.exc.DBAPIError as e:  # unreadable, read-only...: its first use says so
                log.warning("%s: cannot bring it up to date: %s", u.database, str(e).splitlines()[0])
        return eng
    kw.setdefault("pool_pre_ping", True)
    kw.setdefault("pool_size", 5)
    kw.setdefault("max_overflow", 10)
    return sa.create_engine(u, **kw)


def get_engine(conf: Conf | None = None) -> Engine:
    """One engine per process and database (created after fork: engines are not fork-safe)."""
    conf = conf or get_conf()
    key = f"{os.getpid()}:{database_url(conf).render_as_string(hide_password=False)}"
    eng = _engines.get(key)
    if eng is None:
        eng = _engines[key] = make_engine(conf)
    return eng


def reset_engines() -> None:
    for e in _engines.values():
        e.dispose(close=False)
    _engines.clear()


def chunked(items: Sequence[int], size: int) -> Iterator[list[int]]:
    """`items` in lists of at most `size` (bounded IN lists)."""
    for i in range(0, len(items), size):
        yield list(items[i:i + size])


def is_sqlite(bind: Engine | Connection) -> bool:
    return bind.dialect.name == "sqlite"


@contextmanager
def transaction(engine: Engine | None = None) -> Iterator[Connection]:
    """One database transaction: committed on success, rolled back on any exception."""
    eng = engine or get_engine()
    with eng.begin() as conn:
        yield conn


def wait_for_database(engine: Engine, delay: float | None = None,
                      stop: Callable[[], bool] | None = None) -> bool:
    """CiGri3 retries forever when the database is down: log, sleep, retry. `stop` lets a
    daemon's SIGTERM end the wait (returns False then)."""
    delay = delay if delay is not None else get_conf().get("DB_RECONNECT_DELAY")
    while True:
        try:
            with engine.connect() as c:
                c.execute(sa.text("SELECT 1"))
            return True
        except sa.exc.OperationalError as e:
            log.error("Database not reachable (%s); retrying in %.0f s", str(e).splitlines()[0], delay)
            deadline = time.monotonic() + float(delay)
            while time.monotonic() < deadline:
                if stop is not None and stop():
                    return False
                time.sleep(min(0.5, max(0.0, deadline - time.monotonic())))
