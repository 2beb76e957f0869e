"""Wake-ups between daemons: PostgreSQL NOTIFY/LISTEN (SQLite: polling).

CiGri3 woke judas with SIGUSR1 through almighty and everything else ran on fixed
sleeps. Here a writer calls `notify(conn, channel)` inside its own transaction (the
notification is delivered only if that transaction commits, so a woken daemon always
sees the new rows), and a daemon sleeps in `Waiter.wait(timeout)`, which returns as
soon as one of its channels is notified. Channels: "cigri_metascheduler",
"cigri_judas", "cigri_colombo", "cigri_updator", `runner_channel(cluster_id)`."""

from __future__ import annotations

import logging
import select
import threading
import time
from collections.abc import Iterable

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

log = logging.getLogger("cigri.notify")

METASCHEDULER = "cigri_metascheduler"
JUDAS = "cigri_judas"
COLOMBO = "cigri_colombo"
UPDATOR = "cigri_updator"
NIKITA = "cigri_nikita"


def runner_channel(cluster_id: int) -> str:
    return f"cigri_runner_{int(cluster_id)}"


def notify(conn: Connection, channel: str) -> None:
    """NOTIFY `channel` when the caller's transaction commits (no-op on SQLite)."""
    if conn.dialect.name != "postgresql":
        return
    conn.execute(sa.text("SELECT pg_notify(:ch, '')"), {"ch": channel})


class Waiter:
    """Sleep until one of `channels` is notified, `wake()` is called, or the timeout ends.

    PostgreSQL: a dedicated autocommit psycopg connection LISTENs (reconnected after an
    error; a reconnection counts as a wake-up so nothing is missed). SQLite: a plain
    interruptible sleep. `wake()` is safe from signal handlers and other threads."""

    def __init__(self, engine: Engine, channels: Iterable[str]):
        self.engine = engine
        self.channels = list(dict.fromkeys(channels))
        self._event = threading.Event()
        self._conn = None  # psycopg.Connection
        self._pg = engine.dialect.name == "postgresql"

    # -- connection
    def _connect(self) -> None:
        import psycopg
        from psycopg import sql

        u = self.engine.url
        kw: dict[str, object] = {"host": u.host, "port": u.port, "dbname": u.database, "user": u.username,
                                 "password": u.password, "autocommit": True, "connect_timeout": 10}
        for k, v in u.query.items():
            kw[k] = v if isinstance(v, str) else v[0]
        conn = psycopg.connect(**{k: v for k, v in kw.items() if v is not None})
        for ch in self.channels:
            conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(ch)))
        self._conn = conn

    def start(self) -> Waiter:
        """LISTEN now (before the caller's first cycle), so no notification is lost."""
        if self._pg and self._conn is None:
            try:
                self._connect()
            except Exception as e:  # noqa: BLE001 - keep running on polling
                log.warning("LISTEN connection failed (%s); polling instead", e)
        return self

    def close(self) -> None:
        if self._conn is not None:
            try:
                self._conn.close()
            except Exception:  # noqa: BLE001, S110
                pass
            self._conn = None

    def __enter__(self) -> Waiter:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- waking
    def wake(self) -> None:
        self._event.set()

    def _drain(self) -> bool:
        """Consume pending notifications without blocking; True if there was one."""
        conn = self._conn
        if conn is None:
            return False
        got = False
        for _ in conn.notifies(timeout=0):
            got = True
        return got

    def wait(self, timeout: float) -> bool:
        """True if woken (notification or wake()), False on timeout."""
        deadline = time.monotonic() + max(0.0, timeout)
        if self._pg and self._conn is None:
            self.start()
            if self._conn is not None:
                return True  # (re)connected: we may have missed something
        while True:
            if self._event.is_set():
                self._event.clear()
                self._safe_drain()
                return True
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            slice_ = min(remaining, 0.5)  # re-check wake() twice a second
            if self._conn is None:
                self._event.wait(slice_)
                continue
            try:
                r, _, _ = select.select([self._conn.fileno()], [], [], slice_)
                if r and self._drain():
                    return True
            except Exception as e:  # noqa: BLE001 - connection lost: reconnect next call
                log.warning("LISTEN connection lost (%s)", e)
                self.close()
                return True

    def _safe_drain(self) -> None:
        try:
            self._drain()
        except Exception:  # noqa: BLE001
            self.close()
