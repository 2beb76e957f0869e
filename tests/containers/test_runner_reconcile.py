"""A runner killed between its POST and its record adopts the containerised jobs the cluster
accepted (their commands are CiGri's container commands) instead of running them twice."""

from __future__ import annotations

from typing import Any

from sqlalchemy.engine import Engine

from cigri import containers
from cigri.clusters.base import ClusterAPITimeoutPOST
from cigri.engine.runner import Runner
from tests.engine.test_runner import (  # noqa: F401 - fixtures
    FakeOAR,
    cluster,
    events_of,
    fake,
    jobs_of,
    make_campaign,
    runner,
)

BLOCK = {"engine": "charliecloud", "image": "$HOME/img", "bind": ["$HOME/data:/data:ro"]}


def test_crash_after_post_adopts_container_jobs(pg_engine: Engine, runner: Runner, fake: FakeOAR,  # noqa: F811
                                                 cluster: int) -> None:  # noqa: F811
    props = {"container": containers.to_property(BLOCK), "exec_file": "/opt/app/run"}
    cid = make_campaign(pg_engine, [cluster], ["1", "a 'b c'", "100"], props=props, queue_on=cluster)
    fake.accept_then_fail = ClusterAPITimeoutPOST("POST timed out")  # the cluster got it, we never saw the answer
    runner.run_cycle()
    assert [j["state"] for j in jobs_of(pg_engine, cid)] == ["launching"] * 3
    fake.accept_then_fail = None
    runner.run_cycle()
    jobs = jobs_of(pg_engine, cid)
    assert {j["state"] for j in jobs} <= {"submitted", "remote_waiting"}
    assert len(fake.jobs) == 3  # nothing submitted twice
    assert events_of(pg_engine, "STUCK_LAUNCHING_JOB") == []
    command: Any = fake.requests[0].command
    assert command.startswith(f"export CIGRI_CAMPAIGN_ID={cid};echo ") and command.endswith("|base64 -d|bash -s --")
    assert [fake.jobs[j["remote_id"]].command for j in jobs] == [f"{command} 1", f"{command} a 'b c'",
                                                                 f"{command} 100"]
