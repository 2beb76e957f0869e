"""Wake-ups between daemons (cigri.db.notify): NOTIFY delivered at commit, LISTEN wakes."""

from __future__ import annotations

import threading
import time

from cigri.db.notify import Waiter, notify, runner_channel


def test_notify_wakes_a_waiter_only_after_commit(pg_engine):
    with Waiter(pg_engine, ["cigri_judas", runner_channel(3)]) as w:
        assert w.wait(0) is False
        with pg_engine.begin() as c:
            notify(c, runner_channel(3))
            assert w.wait(0.2) is False  # not committed yet: nothing delivered
        assert w.wait(30) is True
        assert w.wait(0) is False  # consumed
        with pg_engine.begin() as c:
            notify(c, "cigri_other")
        assert w.wait(0.5) is False  # not one of our channels


def test_wait_returns_early_on_notify_from_another_thread(pg_engine):
    with Waiter(pg_engine, ["cigri_metascheduler"]) as w:
        def later():
            time.sleep(0.2)
            with pg_engine.begin() as c:
                notify(c, "cigri_metascheduler")
        t = threading.Thread(target=later)
        t.start()
        assert w.wait(60) is True  # long before the timeout
        t.join()


def test_sqlite_waits_and_wake(sqlite_engine):
    with Waiter(sqlite_engine, ["cigri_judas"]) as w:
        with sqlite_engine.begin() as c:
            notify(c, "cigri_judas")  # no-op
        assert w.wait(0.1) is False
        threading.Timer(0.1, w.wake).start()
        assert w.wait(60) is True


def test_wake_from_signal_handler_style(pg_engine):
    w = Waiter(pg_engine, ["cigri_judas"]).start()
    try:
        w.wake()
        assert w.wait(60) is True
    finally:
        w.close()
