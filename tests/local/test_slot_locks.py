"""No core is lost to a transient lock: the runner's liveness probe (a shared lock on a
slot file) may coincide with the executor taking that slot for a new task."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from cigri.clusters.base import JobRequest, Outcome
from tests.local.conftest import ME, wait_ended

pytestmark = pytest.mark.slow


def probe_slots(store, stop: threading.Event) -> int:  # type: ignore[no-untyped-def]
    """Take and release a shared lock on every slot file, in a loop, as a liveness probe does."""
    n = 0
    while not stop.is_set():
        for slot in store.slot_names():
            store.lock_alive(store.slot_path(slot))
            n += 1
    return n


@pytest.mark.parametrize("round_", range(3))
def test_ten_thousand_tasks_finish_despite_a_concurrent_liveness_probe(make_adapter, workdir: Path, round_: int):
    a = make_adapter(cores=2, name=f"state{round_}")
    stop = threading.Event()
    probes = [threading.Thread(target=probe_slots, args=(a.store, stop)) for _ in range(2)]
    for t in probes:
        t.start()
    try:
        ids = a.submit(JobRequest(command="true", params=[str(i) for i in range(10_000)],
                                  directory=str(workdir)), ME)
        jobs = wait_ended(a, ids, timeout=600)
    finally:
        stop.set()
        for t in probes:
            t.join()
    assert sum(1 for j in jobs.values() if j.outcome is Outcome.DONE and j.exit is not None and j.exit.ok) == 10_000
    assert "left unused" not in a.store.log_file.read_text()
