"""Updator (spec §10.2): finished campaigns, blacklist lifting, grid usage, stress factors."""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from cigri.clusters.base import ClusterAPITimeout, Outcome, RemoteJob
from cigri.db import events as eventsdb
from cigri.db.schema import bag_of_tasks, campaigns, clusters, events, grid_usage, jobs
from cigri.db.schema import now as schema_now
from cigri.engine import updator
from tests.conftest import add_cluster
from tests.engine.test_metascheduler import make_campaign


def _campaign_state(engine, cid):
    with engine.connect() as c:
        return c.execute(sa.select(campaigns.c.state, campaigns.c.completion_time).where(campaigns.c.id == cid)).one()


def _job(engine, cid, cl, state, **kw):
    with engine.begin() as c:
        return c.execute(jobs.insert().values(campaign_id=cid, cluster_id=cl, param_id=kw.pop("param_id", 1),
                                              state=state, **kw).returning(jobs.c.id)).scalar_one()


def test_campaign_finishes_only_when_nothing_is_left(engine):
    cl = add_cluster(engine, "a")
    cid = make_campaign(engine, "alice", [cl], n_tasks=1)
    assert updator.run_once(engine, with_clusters=False).finished == []  # a task in the bag
    with engine.begin() as c:
        c.execute(bag_of_tasks.delete())
    bw = _job(engine, cid, cl, "batch_waiting", tag="batch")
    # batch_waiting is active (CiGri3 terminated the campaign here, spec §15.2 #1)
    assert updator.run_once(engine, with_clusters=False).finished == []
    with engine.begin() as c:
        c.execute(jobs.update().where(jobs.c.id == bw).values(state="event"))
        ev = eventsdb.create_event(c, "job", "EXIT_ERROR", job_id=bw, campaign_id=cid, cluster_id=cl)
    assert updator.run_once(engine, with_clusters=False).finished == []  # open event on a failed job
    with engine.begin() as c:
        eventsdb.close_event(c, ev)
    res = updator.run_once(engine, with_clusters=False)
    assert res.finished == [cid]
    state, completion = _campaign_state(engine, cid)
    assert state == "terminated" and completion is not None
    with engine.connect() as c:
        fin = c.execute(sa.select(events.c["class"], events.c.state, events.c.message).where(
            events.c.code == "FINISHED_CAMPAIGN")).one()
    assert tuple(fin) == ("notify", "closed", f"Campaign {cid} is finished")
    assert updator.run_once(engine, with_clusters=False).finished == []  # once


def test_epilogue_must_terminate_on_every_enabled_cluster(engine):
    """CiGri3's finished? never checked the epilogue (spec §15.2 #11)."""
    a, b, off = add_cluster(engine, "a"), add_cluster(engine, "b"), add_cluster(engine, "off", enabled=False)
    cid = make_campaign(engine, "alice", [a, b, off], n_tasks=0, props={"*": {"epilogue": "echo bye"}})
    _job(engine, cid, a, "terminated", param_id=0, tag="epilogue")
    assert updator.run_once(engine, with_clusters=False).finished == []
    _job(engine, cid, b, "terminated", param_id=0, tag="epilogue")
    assert updator.run_once(engine, with_clusters=False).finished == [cid]


def test_blacklist_lifted_when_its_cause_is_fixed(engine):
    cl = add_cluster(engine, "a")
    cid = make_campaign(engine, "alice", [cl], n_tasks=1)
    with engine.begin() as c:
        cause = eventsdb.create_event(c, "job", "EXIT_ERROR", campaign_id=cid, cluster_id=cl)
        bl = eventsdb.create_event(c, "campaign", "BLACKLIST", campaign_id=cid, cluster_id=cl, parent=cause)
    assert updator.run_once(engine, with_clusters=False).lifted == 0
    with engine.begin() as c:
        eventsdb.close_event(c, cause)
    assert updator.run_once(engine, with_clusters=False).lifted == 1
    with engine.connect() as c:
        assert eventsdb.get_event(c, bl)["state"] == "closed"
        assert not eventsdb.cluster_blacklisted(c, cl, cid)


class FakeClusterAdapter:
    stress: dict[str, float | Exception] = {}

    def __init__(self, info, conf=None, mapping=None):
        self.info = info

    def get_resources(self):
        # 4 cores on 2 nodes; node n2's second core is Suspected
        return [{"id": 1, "core": 1, "network_address": "n1", "state": "Alive", "available": True},
                {"id": 2, "core": 2, "network_address": "n1", "state": "Alive", "available": True},
                {"id": 3, "core": 3, "network_address": "n2", "state": "Alive", "available": True},
                {"id": 4, "core": 4, "network_address": "n2", "state": "Suspected", "available": False}]

    def get_running_jobs(self):
        return [RemoteJob(id=10, outcome=Outcome.RUNNING, resources=[{"id": 1}, {"id": 2}]),  # CiGri's job
                RemoteJob(id=11, outcome=Outcome.RUNNING, resources=[{"id": 3}]),
                RemoteJob(id=12, outcome=Outcome.WAITING, resources=[])]

    def get_stress_factor(self):
        v = self.stress.get(self.info.name, 0.0)
        if isinstance(v, Exception):
            raise v
        return v

    def close(self):
        pass


@pytest.fixture
def fake_adapters(monkeypatch):
    monkeypatch.setattr(updator, "get_adapter", FakeClusterAdapter)
    FakeClusterAdapter.stress = {}
    return FakeClusterAdapter


def test_grid_usage_in_distinct_units_per_cluster(pg_engine, fake_adapters):
    """used_by_cigri counted resource entries and mixed clusters' ids in CiGri3 (spec §15.2 #30)."""
    by_core = add_cluster(pg_engine, "cores", resource_unit="core")
    by_node = add_cluster(pg_engine, "nodes", resource_unit="network_address")
    cid = make_campaign(pg_engine, "alice", [by_core, by_node], n_tasks=0)
    _job(pg_engine, cid, by_core, "running", remote_id=10)
    _job(pg_engine, cid, by_node, "running", remote_id=11)  # same remote ids, other cluster
    res = updator.run_once(pg_engine, force=True)
    assert res.usage_rows == 2
    with pg_engine.connect() as c:
        rows = {r.cluster_id: (r.max_resources, r.used_resources, r.unavailable_resources, r.used_by_cigri)
                for r in c.execute(sa.select(grid_usage))}
        dates = {r[0] for r in c.execute(sa.select(grid_usage.c.date))}
    assert rows[by_core] == (4, 3, 1, 2)
    assert rows[by_node] == (2, 2, 1, 1)  # job 11 is CiGri's on "nodes" only
    assert len(dates) == 1
    assert updator.run_once(pg_engine).usage_rows == 0  # within GRID_USAGE_UPDATE_PERIOD


def test_stress_factor_events_and_adapter_errors(pg_engine, pg_conf, fake_adapters):
    a, b = add_cluster(pg_engine, "a"), add_cluster(pg_engine, "b")
    fake_adapters.stress = {"a": 0.9, "b": ClusterAPITimeout("timed out")}
    conf = pg_conf.with_values(GRID_USAGE_UPDATE_PERIOD=0)
    res = updator.run_once(pg_engine, conf, force=True)
    assert res.stress_changed == [a]
    with pg_engine.connect() as c:
        assert c.execute(sa.select(clusters.c.stress_factor).where(clusters.c.id == a)).scalar() == 0.9
        opened = c.execute(sa.select(events.c.code, events.c.cluster_id, events.c.state)
                           .order_by(events.c.id)).all()
    assert [tuple(r) for r in opened] == [("UNDER_STRESS", a, "open"), ("TIMEOUT", b, "open")]
    updator.run_once(pg_engine, conf, force=True)  # still stressed: no second event
    fake_adapters.stress = {"a": 0.1, "b": 0.0}
    updator.run_once(pg_engine, conf, force=True)
    with pg_engine.connect() as c:
        states = c.execute(sa.select(events.c.state).where(events.c.code == "UNDER_STRESS")).all()
    assert [r[0] for r in states] == ["closed"]


def test_too_many_resubmit_per_cluster(pg_engine):
    a, b = add_cluster(pg_engine, "a"), add_cluster(pg_engine, "b")
    cid = make_campaign(pg_engine, "alice", [a, b], n_tasks=0)
    for i in range(12):
        j = _job(pg_engine, cid, a, "event", param_id=i + 1)
        with pg_engine.begin() as c:
            eventsdb.create_event(c, "job", "RESUBMIT", job_id=j, campaign_id=cid, cluster_id=a, state="closed")
    for i in range(12):
        _job(pg_engine, cid, b, "terminated", param_id=i + 1)
    assert updator.too_many_resubmit(pg_engine, updator.get_conf(), force=True) == [(a, cid)]
    assert updator.too_many_resubmit(pg_engine, updator.get_conf(), force=True) == []  # already open


def _resubmitted(engine, cid, cl, n, kill_cause=None, first_param=1):
    for i in range(n):
        j = _job(engine, cid, cl, "event", param_id=first_param + i, kill_cause=kill_cause,
                 stop_time=schema_now())
        with engine.begin() as c:
            eventsdb.create_event(c, "job", "RESUBMIT", job_id=j, campaign_id=cid, cluster_id=cl, state="closed",
                                  message="Resubmit cause: BESTEFFORT_KILL" if kill_cause else "Resubmit cause: x")


def test_best_effort_kills_do_not_count_toward_the_resubmission_rate(pg_engine):
    """#11.3: normal jobs preempting best-effort ones is CiGri's main use case, not a fault of
    the campaign: 20 best-effort kills in a row do not blacklist it; 12 other kills do."""
    a = add_cluster(pg_engine, "a")
    cid = make_campaign(pg_engine, "alice", [a], n_tasks=0)
    _resubmitted(pg_engine, cid, a, 20, kill_cause="preempted")
    assert updator.too_many_resubmit(pg_engine, updator.get_conf(), force=True) == []
    _resubmitted(pg_engine, cid, a, 12, kill_cause="walltime", first_param=100)
    assert updator.too_many_resubmit(pg_engine, updator.get_conf(), force=True) == [(a, cid)]


def test_a_fixed_resubmission_rate_event_does_not_come_back_from_the_same_jobs(pg_engine):
    """#11.3: once TOO_MANY_RESUBMIT is fixed, only jobs ended after the fix are evidence."""
    a = add_cluster(pg_engine, "a")
    cid = make_campaign(pg_engine, "alice", [a], n_tasks=0)
    _resubmitted(pg_engine, cid, a, 12)
    [pair] = updator.too_many_resubmit(pg_engine, updator.get_conf(), force=True)
    with pg_engine.begin() as c:
        [eid] = [r[0] for r in c.execute(sa.select(events.c.id).where(events.c.code == "TOO_MANY_RESUBMIT"))]
        eventsdb.close_event(c, eid)  # the user fixes it
    assert updator.too_many_resubmit(pg_engine, updator.get_conf(), force=True) == []
    _resubmitted(pg_engine, cid, a, 12, first_param=100)  # new kills after the fix
    assert updator.too_many_resubmit(pg_engine, updator.get_conf(), force=True) == [pair]
