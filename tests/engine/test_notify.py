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


def test_sqlite_notify_wakes_another_process_only_after_commit(sqlite_engine, tmp_path):
    """Local mode: a notification from another process (a FIFO per channel next to the
    database) wakes the waiter at once, and only once its transaction has committed."""
    import subprocess
    import sys

    url = sqlite_engine.url.database
    writer = (
        "import sys, time\n"
        "from cigri.db.engine import make_engine\n"
        "from cigri.db.notify import notify\n"
        f"e = make_engine(url='sqlite:///{url}')\n"
        "with e.begin() as c:\n"
        "    notify(c, sys.argv[1])\n"
        "    time.sleep(float(sys.argv[2]))\n"
        "    if sys.argv[3] == 'rollback':\n"
        "        raise RuntimeError('rollback')\n"
    )
    with Waiter(sqlite_engine, ["cigri_judas"]) as w:
        assert w.wait(0) is False
        p = subprocess.Popen([sys.executable, "-c", writer, "cigri_judas", "1.5", "commit"])
        t = time.monotonic()
        assert w.wait(60) is True
        assert time.monotonic() - t >= 1.0  # not before the commit
        p.wait(60)
        assert w.wait(0) is False  # consumed
        subprocess.run([sys.executable, "-c", writer, "cigri_other", "0", "commit"], check=True)
        rolled_back = subprocess.run([sys.executable, "-c", writer, "cigri_judas", "0", "rollback"],
                                     capture_output=True, text=True)
        assert "RuntimeError: rollback" in rolled_back.stderr
        assert w.wait(0.5) is False  # another channel; a rolled-back transaction
        threading.Timer(0.1, w.wake).start()
        assert w.wait(60) is True


def test_wake_from_signal_handler_style(pg_engine):
    w = Waiter(pg_engine, ["cigri_judas"]).start()
    try:
        w.wake()
        assert w.wait(60) is True
    finally:
        w.close()
