"""The runner against the fake OAR 3 server (no OAR 3 can run here; the fake behaves as a
real one, tests/fixtures/oar3) and the real PostgreSQL."""

from __future__ import annotations

from typing import Any

from sqlalchemy.engine import Engine

from cigri.db import schema
from cigri.engine import colombo
from cigri.engine.runner import Runner
from tests.clusters.fakehttp import serve
from tests.clusters.test_oar3_fixtures import FakeOar3, token
from tests.conftest import add_cluster
from tests.engine.test_runner import events_of, jobs_of, make_campaign, queue_all, setc


def test_one_campaigns_bad_request_on_oar3_blacklists_that_campaign_only(pg_engine: Engine, pg_conf: Any) -> None:
    """#11.5: a malformed `resources` makes OAR 3 answer 500 and drop the connection. That is
    the campaign's bad request: a job event blacklists the campaign on this cluster; the
    cluster is not blacklisted (no CONNECTION_RESET), nothing loops through STUCK_LAUNCHING_JOB,
    and another campaign keeps running there."""
    setc(pg_conf, {"RUNNER_DEFAULT_INITIAL_NUMBER_OF_JOBS": "2"})
    fake = FakeOar3()
    with serve(fake, close_after_5xx=True) as srv:
        cl = add_cluster(pg_engine, "o3", batch="oar3", api_url=f"http://127.0.0.1:{srv.server_address[1]}/",
                         api_auth_type="jwt")
        with pg_engine.begin() as c:
            c.execute(schema.users_mapping.insert(), [
                {"grid_login": u, "cluster_login": f"Bearer {token(u)}", "cluster_id": cl} for u in ("alice", "oar")])
        bad = make_campaign(pg_engine, [cl], ["1", "2"], props={"resources": "/nodes=abc"})
        good = make_campaign(pg_engine, [cl], ["1", "2"])
        queue_all(pg_engine, bad, cl)
        runner = Runner(pg_engine, "o3", pg_conf)
        runner.run_cycle()
        queue_all(pg_engine, good, cl)
        for _ in range(3):
            runner.run_cycle()
            colombo.check_events(pg_engine, conf=pg_conf)
    assert {j["state"] for j in jobs_of(pg_engine, bad)} == {"event"}
    assert {e["code"] for e in events_of(pg_engine) if e["class"] == "job"} == {"RUNNER_SUBMIT_ERROR"}
    assert not [e for e in events_of(pg_engine) if e["class"] == "cluster" and e["state"] == "open"]
    assert {(e["class"], e["campaign_id"]) for e in events_of(pg_engine, "BLACKLIST")} == {("campaign", bad)}
    assert not events_of(pg_engine, "STUCK_LAUNCHING_JOB") and not events_of(pg_engine, "CONNECTION_RESET")
    assert {j["state"] for j in jobs_of(pg_engine, good)} == {"remote_waiting"}  # on the cluster, followed
