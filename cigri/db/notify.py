"""Wake-ups between daemons: PostgreSQL NOTIFY/LISTEN; on SQLite (local mode, one
machine) a FIFO per channel in `<database>.notify/`.

CiGri3 woke judas with SIGUSR1 through almighty and everything else ran on fixed
sleeps. Here a writer calls `notify(conn, channel)` inside its own transaction (the
notification is delivered only if that transaction commits, so a woken daemon always
sees the new rows), and a daemon sleeps in `Waiter.wait(timeout)`, which returns as
soon as one of its channels is notified. Channels: "cigri_metascheduler",
"cigri_judas", "cigri_colombo", "cigri_updator", `runner_channel(cluster_id)`."""

from __future__ import annotations

import contextlib
import logging
import os
import select
import threading
import time
from collections.abc import Iterable
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from cigri import fifo

log = logging.getLogger("cigri.notify")

METASCHEDULER = "cigri_metascheduler"
JUDAS = "cigri_judas"
COLOMBO = "cigri_colombo"
UPDATOR = "cigri_updator"
NIKITA = "cigri_nikita"
CAMPAIGNS = "cigri_campaigns"  # a campaign ended


def runner_channel(cluster_id: int) -> str:
    return f"cigri_runner_{int(cluster_id)}"


def notify(conn: Connection, channel: str) -> None:
    """NOTIFY `channel` when the caller's transaction commits."""
    if conn.dialect.name == "postgresql":
        conn.execute(sa.text("SELECT pg_notify(:ch, '')"), {"ch": channel})
    elif fifo_dir(conn.engine) is not None:
        _install_sqlite_hooks(conn.engine)
        conn.info.setdefault(_PENDING, set()).add(channel)


# ---------------------------------------------------------------- SQLite: FIFOs
_PENDING, _READY = "cigri_notify_pending", "cigri_notify_ready"
_hooked: set[int] = set()


def fifo_dir(engine: Engine) -> str | None:
    """Where the FIFOs of a SQLite database live (None: in-memory database, no wake-ups)."""
    if engine.dialect.name != "sqlite":
        return None
    db = engine.url.database
    return f"{db}.notify" if db and db != ":memory:" else None


def _install_sqlite_hooks(engine: Engine) -> None:
    """Channels noted in a transaction are sent when its connection goes back to the pool
    after the commit (as NOTIFY: a rolled-back transaction wakes nobody)."""
    if id(engine) in _hooked:
        return
    _hooked.add(id(engine))
    directory = fifo_dir(engine)

    def on_commit(conn: Connection) -> None:
        pending = conn.info.pop(_PENDING, None)
        if pending:
            conn.info.setdefault(_READY, set()).update(pending)

    def on_rollback(conn: Connection) -> None:
        conn.info.pop(_PENDING, None)

    def on_checkin(_dbapi_conn: object, record: object) -> None:
        ready = getattr(record, "info", {}).pop(_READY, None)
        for ch in ready or ():
            send_fifo(directory, ch)

    sa.event.listen(engine, "commit", on_commit)
    sa.event.listen(engine, "rollback", on_rollback)
    sa.event.listen(engine.pool, "checkin", on_checkin)


def send_fifo(directory: str | None, channel: str) -> None:
    """Poke the daemon listening on `channel`; nobody listening is not an error."""
    if directory is None:
        return
    try:
        fifo.poke(os.path.join(directory, channel))
    except OSError as e:
        log.debug("notify %s: %s", channel, e)


class Waiter:
    """Sleep until one of `channels` is notified, `wake()` is called, or the timeout ends.

    PostgreSQL: a dedicated autocommit psycopg connection LISTENs (reconnected after an
    error; a reconnection counts as a wake-up so nothing is missed). SQLite: a plain
    interruptible sleep. `wake()` is safe from signal handlers and other threads."""

    def __init__(self, engine: Engine, channels: Iterable[str]):
        self.engine = engine
        self.channels = list(dict.fromkeys(channels))
        self._event = threading.Event()
        self._conn: Any = None  # a psycopg.Connection, imported only when LISTEN is used
        self._pg = engine.dialect.name == "postgresql"
        self._fifos: list[int] = []
        self._extra: list[int] = []
        self._wake_r = self._wake_w = -1

    # -- connection
    def _connect(self) -> None:
        import psycopg
        from psycopg import sql

        u = self.engine.url
        kw: dict[str, Any] = {"host": u.host, "port": u.port, "dbname": u.database, "user": u.username,
                                 "password": u.password, "autocommit": True, "connect_timeout": 10}
        for k, v in u.query.items():
            kw[k] = v if isinstance(v, str) else v[0]
        conn = psycopg.connect(**{k: v for k, v in kw.items() if v is not None})
        for ch in self.channels:
            conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(ch)))
        self._conn = conn

    def _open_fifos(self) -> None:
        directory = fifo_dir(self.engine)
        if directory is None or self._fifos:
            return
        try:
            os.makedirs(directory, mode=0o700, exist_ok=True)
            for ch in self.channels:
                self._fifos.append(fifo.listen(os.path.join(directory, ch)))
            self._wake_r, self._wake_w = os.pipe()
            os.set_blocking(self._wake_r, False)
            os.set_blocking(self._wake_w, False)
        except OSError as e:
            log.warning("No wake-up FIFOs in %s (%s): polling instead", directory, e)
            self._close_fifos()

    def add_fd(self, fd: int) -> None:
        """Also return from wait() when `fd` becomes readable (its data is consumed); the
        caller keeps ownership of `fd`."""
        self._extra.append(fd)

    def _close_fifos(self) -> None:
        for fd in [*self._fifos, self._wake_r, self._wake_w]:
            if fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(fd)
        self._fifos, self._wake_r, self._wake_w = [], -1, -1

    def start(self) -> Waiter:
        """LISTEN now (before the caller's first cycle), so no notification is lost."""
        if not self._pg:
            self._open_fifos()
        if self._pg and self._conn is None:
            try:
                self._connect()
            except Exception as e:  # noqa: BLE001 - keep running on polling
                log.warning("LISTEN connection failed (%s); polling instead", e)
        return self

    def close(self) -> None:
        self._close_fifos()
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
        if self._wake_w >= 0:
            with contextlib.suppress(OSError):
                os.write(self._wake_w, b"w")

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
                if self._wake_r >= 0:
                    fifo.drain(self._wake_r)
                return True
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            slice_ = min(remaining, 0.5)  # re-check wake() twice a second
            if self._fifos or (self._extra and self._conn is None):
                fds = [*self._fifos, *self._extra] + ([self._wake_r] if self._wake_r >= 0 else [])
                ready, _, _ = select.select(fds, [], [], slice_)
                if ready:
                    for fd in ready:
                        fifo.drain(fd)
                    self._event.clear()
                    return True
                continue
            if self._conn is None:
                self._event.wait(slice_)
                continue
            try:
                r, _, _ = select.select([self._conn.fileno(), *self._extra], [], [], slice_)
                extra = [fd for fd in r if fd in self._extra]
                for fd in extra:
                    fifo.drain(fd)
                if extra or (r and self._drain()):
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
