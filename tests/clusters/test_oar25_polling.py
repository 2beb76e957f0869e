"""How the oar2_5 adapter follows jobs on the REAL OAR 2.5.9 testbed without loading its API:
OAR's detailed job listing costs several SQL queries per job, and a runner polls its jobs
every cycle, so only the jobs whose state changed are detailed again (bench/harvest.py found
the OAR API's CPU to be what disturbed the cluster's normal jobs)."""

from __future__ import annotations

import time
from typing import Any

import pytest

from cigri.clusters import get_adapter
from cigri.clusters.base import ClusterInfo, JobRequest, Outcome
from tests.oar_testbed import requires_oar, testbed_api, wait_for

pytestmark = [pytest.mark.oar, requires_oar]


def adapter(name: str) -> Any:
    return get_adapter(ClusterInfo.from_row({
        "id": int(name[1:]), "name": name, "api_url": testbed_api(name), "batch": "oar2_5",
        "api_auth_type": "none", "api_auth_header": "X_REMOTE_IDENT", "resource_unit": "core",
        "properties": f"cluster='{name}'", "api_chunk_size": 100, "api_limit": 100}))


def paths(spy: Any) -> list[str]:
    return [c.args[0] for c in spy.call_args_list]


def test_unchanged_jobs_are_not_detailed_again(mocker: Any) -> None:
    a = adapter("c3")
    ids = a.submit(JobRequest(command="sleep 300; true", params=["a", "b"], resources="/resource_id=1",
                              walltime="00:10:00", name="cigri.polling"), "alice")
    try:
        wait_for(lambda: all(j.outcome is Outcome.RUNNING and j.raw_state == "Running"
                             for j in a.get_jobs(ids).values()) and len(a.get_jobs(ids)) == 2,
                 deadline=240, interval=1.0, what="both jobs running")
        first = a.get_jobs(ids)
        spy = mocker.spy(a.http, "get_collection")
        again = a.get_jobs(ids)
        assert paths(spy) == ["jobs"], "the second poll of unchanged jobs asked OAR for their details"
        fresh = adapter("c3").get_jobs(ids)  # what a detailed query says now
        for rid in ids:
            assert (again[rid].outcome, again[rid].start_time, again[rid].raw_state) == \
                   (fresh[rid].outcome, fresh[rid].start_time, fresh[rid].raw_state) == \
                   (first[rid].outcome, first[rid].start_time, first[rid].raw_state)

        a.delete_job(ids[0], "alice")
        wait_for(lambda: adapter("c3").get_job(ids[0]).outcome.ended, deadline=240, interval=1.0,
                 what=f"job {ids[0]} deleted")
        spy.reset_mock()
        after = a.get_jobs(ids)
        assert paths(spy) == ["jobs", "jobs/details"]
        assert dict(spy.call_args_list[1].kwargs["params"])["ids"] == str(ids[0])  # only the changed job
        assert after[ids[0]].outcome is Outcome.KILLED and after[ids[0]].stop_time
        assert after[ids[1]].outcome is Outcome.RUNNING
    finally:
        for rid in ids:
            a.delete_job(rid, "alice")
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not all(j.outcome.ended for j in adapter("c3").get_jobs(ids).values()):
            time.sleep(1)
