"""The state one application instance shares between its routes: the database engine,
the submission slots, the access policy and the cache of the public campaign list."""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from typing import Any

from fastapi import Request

from cigri.api.auth import Authenticator
from cigri.api.policy import Policy
from cigri.config import Conf
from cigri.db.engine import make_engine

log = logging.getLogger("cigri.api")

LIST_CACHE_TTL = 5.0
LIST_MAX_STALE = 30.0
SUBMIT_SLOTS = 3
#: touched on every write; shared by the worker processes of one server (set by cigri.api.server)
GENERATION_FILE: str | None = None
#: lists shorter than this are always computed fresh (cheap)
LIST_CACHE_MIN = 50


class Api:
    def __init__(self, conf: Conf) -> None:
        self.conf = conf
        self.engine = make_engine(conf, pool_size=5, max_overflow=10)
        #: big submissions use extra connections (parallel bag writes): queue them, never
        #: exhaust PostgreSQL's connection slots
        self.submit_slots = threading.BoundedSemaphore(SUBMIT_SLOTS)
        self.auth = Authenticator(conf, self.engine)
        self.policy = Policy(self.auth)
        self.max_body = int(conf.get("API_MAX_BODY_SIZE"))
        #: the public campaign list, rendered: key -> (monotonic time, body, fresh for)
        self.list_cache: dict[Any, tuple[float, bytes, float]] = {}
        self.list_locks: dict[Any, threading.Lock] = {}
        self.small_lists: set[Any] = set()
        self.list_lock = threading.Lock()

    def cached_list(self, key: Any, compute: Callable[[], tuple[bytes, int]]) -> bytes:
        """The campaign list of a big grid is computed by one request at a time (per query)
        and shared while fresh (LIST_CACHE_TTL s, or 10x its computing time); when stale,
        the previous one (at most LIST_MAX_STALE s old) is served while one background
        thread recomputes it. Short lists are always computed fresh, without waiting."""
        if key in self.small_lists:
            body, n = compute()
            if n >= LIST_CACHE_MIN:
                self.small_lists.discard(key)
                self.list_cache[key] = (time.monotonic(), body, LIST_CACHE_TTL)
            return body
        entry = self.list_cache.get(key)
        now = time.monotonic()
        if entry is not None and self.written_since(entry[0]):
            entry = None  # a write through any worker: recompute now
            self.list_cache.pop(key, None)
        if entry is not None and now - entry[0] < entry[2]:
            return entry[1]
        with self.list_lock:
            klock = self.list_locks.setdefault(key, threading.Lock())
        if entry is not None and now - entry[0] < LIST_MAX_STALE:
            if klock.acquire(blocking=False):
                def refresh() -> None:
                    try:
                        self._compute_list(key, compute)
                    except Exception:  # noqa: BLE001 - keep serving the previous list
                        log.exception("campaign list refresh failed")
                    finally:
                        klock.release()

                threading.Thread(target=refresh, daemon=True).start()
            return entry[1]
        with klock:
            entry = self.list_cache.get(key)
            if entry is not None and time.monotonic() - entry[0] < entry[2]:
                return entry[1]
            return self._compute_list(key, compute)

    def written_since(self, mono: float) -> bool:
        """Did a write go through any worker process since `mono` (time.monotonic)?"""
        if not GENERATION_FILE:
            return False
        try:
            mtime = os.stat(GENERATION_FILE).st_mtime
        except OSError:
            return False
        return mtime > time.time() - (time.monotonic() - mono)

    def wrote(self) -> None:
        self.list_cache.clear()
        if GENERATION_FILE:
            try:
                with open(GENERATION_FILE, "a"):
                    os.utime(GENERATION_FILE)
            except OSError:
                pass

    def _compute_list(self, key: Any, compute: Callable[[], tuple[bytes, int]]) -> bytes:
        t = time.monotonic()
        body, n = compute()
        if len(self.list_cache) > 1000 or len(self.small_lists) > 10000:
            self.list_cache.clear()
            self.small_lists.clear()
        if n >= LIST_CACHE_MIN:
            self.list_cache[key] = (time.monotonic(), body, max(LIST_CACHE_TTL, 10 * (time.monotonic() - t)))
        else:
            self.list_cache.pop(key, None)
            self.small_lists.add(key)
        return body


def get_api(request: Request) -> Api:
    """FastAPI dependency: the application's shared state."""
    api: Api = request.app.state.api
    return api
