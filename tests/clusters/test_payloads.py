"""What the oar2_5 adapter POSTs for a CiGri job request (spec §7.5/§8.3), without a cluster."""

from __future__ import annotations

import pytest

from cigri.clusters import get_adapter
from cigri.clusters.base import ClusterInfo, JobRequest, RemoteJob
from cigri.clusters.oar2_5 import escape_for_oar25_command, filter_resources, parse_properties


def oar25() -> object:
    return get_adapter(ClusterInfo(id=1, name="c1", api_url="http://127.0.0.1:1/oarapi/", batch="oar2_5"))


def test_array_payload_and_empty_values_not_sent() -> None:
    req = JobRequest(command=r"export CIGRI_CAMPAIGN_ID=4;~/run \$CIGRI_CAMPAIGN_ID", params=["1", "10", "x y"],
                     resources="/nodes=1/core=2", walltime="01:00:00", name="cigri.4", directory="/home/alice/d",
                     property="", project="", types=["besteffort", "idempotent,timesharing=*,*"])
    [(body, positions)] = oar25().build_payloads(req)  # type: ignore[attr-defined]
    assert positions == [0, 1, 2]
    assert body == {"resource": "/nodes=1/core=2,walltime=01:00:00",
                    "command": r"export CIGRI_CAMPAIGN_ID=4;~/run \$CIGRI_CAMPAIGN_ID",
                    "param_file": "1\n10\nx y", "name": "cigri.4", "directory": "/home/alice/d",
                    "type": ["besteffort", "idempotent", "timesharing=*", "*"]}


def test_single_line_array_is_not_folded_and_hash_lines_are_single_jobs() -> None:
    payloads = oar25().build_payloads(JobRequest(command="t", params=["a $X", "b#c", "  ", "d"]))  # type: ignore[attr-defined]
    assert [p for _, p in payloads] == [[0, 3], [1], [2]]
    assert payloads[0][0]["param_file"] == "a $X\nd"  # no shell on this path: sent verbatim
    assert payloads[1][0]["command"] == "t b#c" and "param_file" not in payloads[1][0]
    [(body, pos)] = oar25().build_payloads(JobRequest(command="t", params=["only"]))  # type: ignore[attr-defined]
    assert body["param_file"] == "only" and pos == [0]
    [(body, pos)] = oar25().build_payloads(JobRequest(command="prologue"))  # type: ignore[attr-defined]
    assert body == {"resource": "/resource_id=1", "command": "prologue"} and pos == []


@pytest.mark.parametrize(("text", "escaped"), [
    ("plain", "plain"),
    ("$HOME", r"\$HOME"),
    ("`id`", r"\`id\`"),
    ('"q"', '"q"'),
    (r"a\b", r"a\\\\b"),
    (r"e\\", r"e\\\\"),
    (r"\$x", r"\\\$x"),
])
def test_escape_for_oar25_command(text: str, escaped: str) -> None:
    # verified against OAR 2.5.9: OAR stores exactly `text` (see tests/clusters/test_oar25_live.py)
    assert escape_for_oar25_command(text) == escaped


def test_properties_filter() -> None:
    assert parse_properties("cluster='c1' AND core = '3' and host=\"n1\"") == [
        ("cluster", "c1"), ("core", "3"), ("host", "n1")]
    assert parse_properties("") == [] and parse_properties(None) == []
    res = [{"id": 1, "cluster": "c1", "core": 3}, {"id": 2, "cluster": "c2", "core": 3}, {"id": 3, "core": 3}]
    assert [r["id"] for r in filter_resources(res, "cluster='c1'")] == [1]
    assert [r["id"] for r in filter_resources(res, "core=3")] == [1, 2, 3]
    assert [r["id"] for r in filter_resources(res, None)] == [1, 2, 3]


def test_remote_job_conversion_oar25_sample() -> None:
    job = oar25().to_remote_job({  # type: ignore[attr-defined]
        "id": 69, "state": "Terminated", "exit_code": 768, "start_time": 1795308459, "stop_time": 1795308461,
        "submission_time": 1795308457, "owner": "alice", "queue": "default", "types": [],
        "events": [{"event_id": 117, "type": "SWITCH_INTO_TERMINATE_STATE", "description": "x"}],
        "launching_directory": "/home/alice/d", "stderr_file": "sample.%jobid%.err", "array_id": 69,
        "array_index": 1, "command": "/home/alice/d/task.sh sample 1 0"})
    assert isinstance(job, RemoteJob) and job.exit_code == 768 and job.owner == "alice"
    assert job.output_path("stderr") == "/home/alice/d/sample.69.err"
    waiting = oar25().to_remote_job({"id": "70", "state": "Waiting", "start_time": 0, "exit_code": None})  # type: ignore[attr-defined]
    assert waiting.id == 70 and waiting.start_time is None and waiting.exit_code is None
