"""What the oar2_5 adapter POSTs for a CiGri job request, without a cluster."""

from __future__ import annotations

from typing import Any

import pytest

from cigri.clusters import get_adapter
from cigri.clusters.base import ClusterInfo, ExitStatus, JobRequest, Outcome, RemoteJob
from cigri.clusters.oar2_5 import (
    escape_for_oar25_command,
    filter_resources,
    oar_outcome,
    oar_resource_available,
    parse_properties,
)


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
    assert isinstance(job, RemoteJob) and job.exit == ExitStatus(code=3) and job.owner == "alice"
    assert (job.outcome, job.raw_state, job.exit.wait_status) == (Outcome.DONE, "Terminated", 768)
    assert job.output_path("stderr") == "/home/alice/d/sample.69.err"
    waiting = oar25().to_remote_job({"id": "70", "state": "Waiting", "start_time": 0, "exit_code": None})  # type: ignore[attr-defined]
    assert waiting.id == 70 and waiting.start_time is None and waiting.exit is None
    assert waiting.outcome is Outcome.WAITING


@pytest.mark.parametrize("status,code,signal,ok", [
    (0, 0, None, True), (768, 3, None, False), (9, None, 9, False), (36608, 143, None, False), (15, None, 15, False)])
def test_exit_status_decodes_wait_statuses(status: int, code: int | None, signal: int | None, ok: bool) -> None:
    ex = ExitStatus.from_wait_status(status)
    assert (ex.code, ex.signal, ex.ok) == (code, signal, ok)
    assert ex.wait_status == status  # what CiGri stores and shows, as CiGri3


@pytest.mark.parametrize("state,exit_code,events,outcome", [
    ("Waiting", None, [], Outcome.WAITING),
    ("Hold", None, [], Outcome.HELD),
    ("Finishing", None, [], Outcome.RUNNING),
    ("Terminated", 0, [{"type": "FRAG_JOB_REQUEST"}], Outcome.DONE),  # ended by itself first
    ("Terminated", 768, [], Outcome.DONE),
    ("Error", None, [{"type": "FRAG_JOB_REQUEST"}, {"type": "BESTEFFORT_KILL"}], Outcome.PREEMPTED),
    ("Error", 9, [{"type": "WALLTIME"}], Outcome.WALLTIME),
    ("Error", None, [{"type": "EXTERMINATE"}], Outcome.LOST),
    ("Error", None, [{"type": "SEND_KILL_JOB"}, {"type": "FRAG_JOB_REQUEST"}], Outcome.KILLED),
    ("Error", None, [{"type": "WORKING_DIRECTORY"}], Outcome.FAILED_TO_START),
    ("Error", None, [{"type": "SWITCH_INTO_ERROR_STATE"}], Outcome.ERROR),
])
def test_oar_translation_table(state: str, exit_code: int | None, events: list[dict[str, Any]],
                               outcome: Outcome) -> None:
    assert oar_outcome(state, exit_code, events)[0] is outcome


def test_oar_automatic_resubmission_names_the_new_job() -> None:
    ev = [{"type": "RESUBMIT_JOB_AUTOMATICALLY", "description": "The job 7 was resubmitted (new id = 12)"}]
    assert oar_outcome("Error", None, ev) == (Outcome.REQUEUED, None, 12)
    assert oar_outcome("Error", None, [{"type": "RESUBMIT_JOB_AUTOMATICALLY"}])[0] is Outcome.ERROR


@pytest.mark.parametrize("res,ok", [
    ({"state": "Alive"}, True), ({"state": "Suspected"}, False), ({"state": "Dead"}, False),
    ({"state": "Absent", "available_upto": 2000}, True),  # asleep, wakes up on demand
    ({"state": "Absent", "available_upto": 500}, False), ({"state": "Absent"}, False)])
def test_oar_resource_availability(res: dict[str, Any], ok: bool) -> None:
    assert oar_resource_available(res, at=1000) is ok
