"""A 100,000-task campaign in local mode while 4 users poll it: nobody is locked out of
the SQLite database (no "database is locked" anywhere) and every call answers."""

from __future__ import annotations

import threading

import pytest

from tests.local.conftest import LocalMode, wait_for

pytestmark = pytest.mark.slow

N = 100_000
CALLS = (("gridstat", "-c", "1"), ("gridstat", "-c", "1", "-f"), ("gridevents", "-c", "1"), ("gridstat",))


def test_hundred_thousand_tasks_with_four_clients_polling(local_mode: LocalMode):
    jdl = local_mode.jdl("big", exec_file="true", nb_jobs=N)
    p = local_mode.start(str(jdl), "--quiet")
    wait_for(lambda: "CiGri is running" in local_mode.output(p), what="the run to start")
    results: list[tuple[tuple[str, ...], int, str]] = []
    stop = threading.Event()

    def poll(call: tuple[str, ...]) -> None:
        while not stop.is_set() and p.poll() is None:
            r = local_mode.grid(*call, timeout=300)
            results.append((call, r.returncode, r.stderr + (r.stdout if r.returncode else "")))

    clients = [threading.Thread(target=poll, args=(c,)) for c in CALLS]
    for t in clients:
        t.start()
    try:
        rc = p.wait(3600)
    finally:
        stop.set()
        for t in clients:
            t.join()
    out = local_mode.output(p)
    assert rc == 0 and f"Campaign 1 terminated: {N}/{N} tasks done." in out, out[-2000:]
    failed = [r for r in results if r[1] != 0]
    assert not failed, failed[:3]
    assert {r[0] for r in results} == set(CALLS)  # every client got answers
    log = (local_mode.data / "cigri.log").read_text()
    assert "database is locked" not in log and "database is locked" not in out
    assert "Traceback" not in log
    [(done,)] = local_mode.query("SELECT count(DISTINCT param_id) FROM jobs WHERE state='terminated'")
    assert done == N
