"""Contract tests of the oar2_5 adapter against the REAL OAR 2.5.9 testbed
(tools/oar-testbed/oar-testbed up). Jobs of independent tests run concurrently: one
module fixture submits them all first, the tests then wait for their own outcome."""

from __future__ import annotations

import json
import os
import subprocess
import time
from typing import Any

import pytest
import requests

from cigri.clusters import get_adapter
from cigri.clusters.base import (
    ClusterAPIBadRequest,
    ClusterAPIConnectionError,
    ClusterAPINotFound,
    ClusterAPIPermissionDenied,
    ClusterInfo,
    ExitStatus,
    JobRequest,
    Outcome,
    RemoteJob,
)
from tests.oar_testbed import requires_oar, set_stress, testbed_api, wait_for

pytestmark = [pytest.mark.oar, requires_oar]

FINAL = ("Terminated", "Error")
DEADLINE = 240
# parameter lines with spaces, quotes, shell metacharacters, '#', substrings of each other
PARAMS = ["1", "10", "1 0", '"two words" x', "'a;b|c&d>e' f", "'$HOME' '`id`'", r"x\ y", "a#b", "é 日本", "1"]
SCRIPT = '#!/bin/bash\nprintf "[%s]" "$@" > "$(dirname "$0")/args.$OAR_JOB_ID"\n'


def adapter(name: str, **kw: Any) -> Any:
    row = {"id": int(name[1:]), "name": name, "api_url": testbed_api(name), "batch": "oar2_5",
           "api_auth_type": "none", "api_auth_header": "X_REMOTE_IDENT", "resource_unit": "core",
           "properties": f"cluster='{name}'", "api_chunk_size": 100, "api_limit": 100} | kw
    return get_adapter(ClusterInfo.from_row(row))


def expected_args(line: str) -> str:
    """What bash makes of `script <line>` (the job runs the command through bash)."""
    return subprocess.run(["bash", "-c", f'printf "[%s]" {line}'], capture_output=True, text=True,
                          env={"PATH": "/usr/bin:/bin"}).stdout


def upload(name: str, path: str, content: str, mode: str = "755") -> None:
    """Write a file in alice's home through the OAR media API (no root needed)."""
    h = {"X_REMOTE_IDENT": "alice", "Accept": "application/json"}
    r = requests.post(testbed_api(name) + "media/force" + path, data=content.encode(), timeout=60,
                      headers=h | {"Content-Type": "application/octet-stream"})
    assert r.status_code in (200, 201), r.text
    r = requests.post(testbed_api(name) + "media/chmod" + path, json={"mode": mode}, timeout=60,
                      headers=h | {"Content-Type": "application/json"})
    assert r.status_code in (200, 202), r.text


def wait_job(a: Any, rid: int, states: tuple[str, ...] = FINAL, deadline: float = DEADLINE) -> RemoteJob:
    def probe() -> RemoteJob | None:
        try:
            j = a.get_job(rid, "alice")
        except ClusterAPIConnectionError:  # another test may stop this API for a moment
            return None
        return j if j.raw_state in states else None
    return wait_for(probe, deadline=deadline, interval=1.0, what=f"job {rid} on {a.cluster.name} in {states}")


@pytest.fixture(scope="module")
def work() -> dict[str, Any]:
    """Submit every independent job at once (c2 and c3), return ids and adapters."""
    c2, c3 = adapter("c2"), adapter("c3")
    d = f"/home/alice/cigri-contract/{os.getpid()}-{int(time.time())}"
    upload("c2", f"{d}/args.sh", SCRIPT)
    w: dict[str, Any] = {"c2": c2, "c3": c3, "dir": d}
    w["array"] = c2.submit(JobRequest(command=f"{d}/args.sh", params=PARAMS, resources="/core=1",
                                      walltime="00:05:00", directory=d, name="cigri.contract",
                                      property="", project=""), "alice")
    w["exit3"] = c2.submit(JobRequest(command="echo out; echo err1 >&2; echo err2 >&2; exit 3",
                                      resources="/core=1", walltime="00:05:00", directory=d,
                                      stdout="contract.%jobid%.out", stderr="contract.%jobid%.err"), "alice")[0]
    w["walltime"] = c2.submit(JobRequest(command="sleep 300", resources="/core=1", walltime="00:00:03"),
                              "alice")[0]
    w["delete"] = c3.submit(JobRequest(command="sleep 300", resources="/core=1", walltime="00:10:00"),
                            "alice")[0]
    return w


def test_array_ids_match_parameter_lines_exactly(work: dict[str, Any]) -> None:
    a, ids = work["c2"], work["array"]
    assert len(ids) == len(PARAMS) and len(set(ids)) == len(ids)
    jobs = wait_for(lambda: (lambda js: js if all(js[i].raw_state in FINAL for i in ids) else None)(a.get_jobs(ids)),
                    deadline=DEADLINE, what="array jobs finished")
    for rid, line in zip(ids, PARAMS, strict=True):
        j = jobs[rid]
        assert j.command == f"{work['dir']}/args.sh {line}", (rid, line, j.command)
        assert (j.raw_state, j.outcome, j.exit) == ("Terminated", Outcome.DONE, ExitStatus(code=0)), (line, j)
        got = a.get_file(f"{work['dir']}/args.{rid}", "alice")
        assert got == expected_args(line), (line, got)


def test_states_waiting_running_terminated() -> None:
    a = adapter("c3")
    rid = a.submit(JobRequest(command="sleep 6", resources="/core=1", walltime="00:05:00",
                              property="cluster='c3'"), "alice")[0]
    order = ["Waiting", "toLaunch", "Launching", "Running", "Finishing", "Terminated"]
    seen: list[str] = []
    end = time.monotonic() + DEADLINE
    while time.monotonic() < end:
        try:
            st = a.get_job(rid, "alice").raw_state
        except ClusterAPIConnectionError:  # another test may stop this API for a moment
            time.sleep(1)
            continue
        if not seen or seen[-1] != st:
            seen.append(st)
        if st in FINAL:
            break
        time.sleep(0.3)
    assert seen[-1] == "Terminated" and "Running" in seen, seen
    assert [order.index(s) for s in seen] == sorted(order.index(s) for s in seen), seen
    j = a.get_job(rid)
    assert j.exit == ExitStatus(code=0) and j.outcome is Outcome.DONE
    assert j.start_time and j.stop_time and j.start_time <= j.stop_time
    assert j.owner == "alice"


def test_exit_code_is_wait_status_and_stderr_tail(work: dict[str, Any]) -> None:
    a = work["c2"]
    j = wait_job(a, work["exit3"])
    assert (j.raw_state, j.outcome, j.exit) == ("Terminated", Outcome.DONE, ExitStatus(code=3))
    assert j.exit.wait_status == 768
    path = j.output_path("stderr")
    assert path == f"{work['dir']}/contract.{j.id}.err"
    assert a.get_file(path, "alice", tail=1) == "err2\n"
    assert a.get_file(path, "alice") == "err1\nerr2\n"
    with pytest.raises(ClusterAPINotFound):
        a.get_file(f"{work['dir']}/no-such-file", "alice", tail=5)


def test_walltime_kill(work: dict[str, Any]) -> None:
    j = wait_job(work["c2"], work["walltime"])
    assert j.raw_state == "Error" and j.outcome is Outcome.WALLTIME, j


def test_wrong_user_then_deletion(work: dict[str, Any]) -> None:
    a, rid = work["c3"], work["delete"]
    wait_job(a, rid, ("Running",) + FINAL)
    with pytest.raises(ClusterAPIBadRequest) as e:
        a.delete_job(rid, "bob")
    assert "not the right user" in str(e.value) and e.value.code == "CLUSTER_API_BAD_REQUEST_ERROR"
    assert a.get_job(rid).outcome.live  # bob could not kill it
    a.delete_job(rid, "alice")
    j = wait_job(a, rid)
    assert j.raw_state == "Error" and j.outcome is Outcome.KILLED, j
    a.delete_job(rid, "alice")  # already finished: not an error


def test_besteffort_job_killed_by_normal_job() -> None:
    a = adapter("c3")
    # both jobs want the same core: the normal job makes OAR kill the best-effort one
    be = a.submit(JobRequest(command="sleep 300", resources="/core=1", walltime="00:10:00",
                             types=["besteffort"], property="core=8"), "alice")[0]
    wait_job(a, be, ("Running",) + FINAL)
    normal = a.submit(JobRequest(command="true", resources="/core=1", walltime="00:05:00", property="core=8"),
                      "alice")[0]
    j = wait_job(a, be)
    assert j.raw_state == "Error" and j.outcome is Outcome.PREEMPTED, j
    assert "besteffort" in j.types
    assert wait_job(a, normal).outcome is Outcome.DONE


def test_resources_pagination_and_properties() -> None:
    a = adapter("c1", api_limit=5)
    res = a.get_resources()  # 5 per page: follows the `next` links
    assert len(res) >= 8 and {r["cluster"] for r in res} == {"c1"}
    assert len({r["id"] for r in res}) == len(res)
    assert all("core" in r and r["state"] for r in res)
    one = adapter("c1", properties="cluster='c1' AND core='3'").get_resources()
    assert [r["core"] for r in one] == [3]
    assert adapter("c1", properties="cluster='c2'").get_resources() == []


def test_stress_factor() -> None:
    a = adapter("c3")
    try:
        set_stress("c3", 0.9)
        assert a.get_stress_factor() == pytest.approx(0.9)
    finally:
        set_stress("c3", 0)
    assert a.get_stress_factor() == 0.0


def test_bad_credentials_and_anonymous_submission() -> None:
    a = adapter("c2", api_auth_header="X_REMOTE_IDENT")
    with pytest.raises(ClusterAPIPermissionDenied) as e:
        a.submit(JobRequest(command="true"), "nosuchuser")  # identity unknown to the cluster
    assert e.value.code == "PERMISSION_DENIED" and not e.value.event_open
    anon = adapter("c2", api_auth_header="X-Not-Trusted")  # header the API ignores = anonymous
    with pytest.raises(ClusterAPIPermissionDenied):
        anon.submit(JobRequest(command="true"), "alice")


def test_running_jobs_and_check_api(work: dict[str, Any]) -> None:
    a = adapter("c3")
    assert a.check_api()
    running = a.get_running_jobs()
    assert all(j.raw_state == "Running" and j.outcome is Outcome.RUNNING for j in running)
    assert all(j.resources for j in running)
    assert json.dumps([j.id for j in running])
