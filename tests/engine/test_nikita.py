"""Nikita with a fake adapter recording the kills (fault injection)."""

from __future__ import annotations

from datetime import timedelta

import pytest
import sqlalchemy as sa

from cigri.clusters.base import ClusterAPIConnectionError
from cigri.db import events as eventsdb
from cigri.db import jobs as jobsdb
from cigri.db.schema import bag_of_tasks, campaigns, events, jobs, jobs_to_launch, now, tasks_affinity
from cigri.engine import nikita
from tests.conftest import add_cluster
from tests.engine.test_metascheduler import make_campaign


class FakeAdapter:
    """Records delete_job calls; can be told to fail like an unreachable cluster."""

    calls: list[tuple[str, int, str]] = []
    failing: set[str] = set()

    def __init__(self, info, conf, mapping):
        self.name = info.name

    def delete_job(self, remote_id: int, user: str) -> None:
        if self.name in self.failing:
            raise ClusterAPIConnectionError("connection refused", code="CONNECTION_REFUSED")
        FakeAdapter.calls.append((self.name, remote_id, user))

    def close(self) -> None:
        pass


@pytest.fixture(autouse=True)
def _reset_fake():
    FakeAdapter.calls = []
    FakeAdapter.failing = set()


def _job(engine, campaign_id, cluster_id, state, remote_id=None, **kw) -> int:
    with engine.begin() as c:
        return int(c.execute(jobs.insert().values(campaign_id=campaign_id, cluster_id=cluster_id, param_id=1,
                                                  state=state, remote_id=remote_id, **kw)
                             .returning(jobs.c.id)).scalar_one())


def _cancel(engine, cid):
    with engine.begin() as c:
        c.execute(campaigns.update().where(campaigns.c.id == cid).values(state="cancelled"))
        return eventsdb.create_event(c, "campaign", "USER_FRAG", campaign_id=cid, message="cancel")


def _state(engine, job_id):
    with engine.connect() as c:
        return c.execute(sa.select(jobs.c.state).where(jobs.c.id == job_id)).scalar()


def test_cancellation_kills_every_job_once_per_remote_id(engine):
    """CiGri3 skipped every job after the first kill on a cluster."""
    cl1, cl2 = add_cluster(engine, "a"), add_cluster(engine, "b")
    cid = make_campaign(engine, "alice", [cl1, cl2], n_tasks=0)
    r1 = _job(engine, cid, cl1, "running", 101)
    r2 = _job(engine, cid, cl1, "remote_waiting", 102)
    b1 = _job(engine, cid, cl2, "running", 500, tag="batch")  # one OAR batch job, two CiGri jobs
    b2 = _job(engine, cid, cl2, "batch_waiting", 500, tag="batch")
    s1 = _job(engine, cid, cl2, "submitted", 501)
    tl = _job(engine, cid, cl1, "to_launch")
    done = _job(engine, cid, cl1, "terminated", 99)
    ev = _cancel(engine, cid)
    res = nikita.run_once(engine, factory=FakeAdapter)
    assert sorted(FakeAdapter.calls) == [("a", 101, "alice"), ("a", 102, "alice"), ("b", 500, "alice"),
                                         ("b", 501, "alice")]
    for j in (r1, r2, b1, b2, s1, tl):
        assert _state(engine, j) == "event"
    assert _state(engine, done) == "terminated"
    assert res.frag_closed == [ev]
    with engine.connect() as c:
        assert eventsdb.get_event(c, ev)["state"] == "closed"
    # nothing left: a second pass kills nothing
    nikita.run_once(engine, factory=FakeAdapter)
    assert len(FakeAdapter.calls) == 4


def test_cancellation_on_unreachable_or_blacklisted_cluster_is_not_a_success(engine):
    cl1, cl2 = add_cluster(engine, "a"), add_cluster(engine, "b")
    cid = make_campaign(engine, "alice", [cl1, cl2], n_tasks=0)
    j1 = _job(engine, cid, cl1, "running", 101)
    j2 = _job(engine, cid, cl2, "running", 201)
    with engine.begin() as c:
        cause = eventsdb.create_event(c, "cluster", "TIMEOUT", cluster_id=cl2)
        eventsdb.create_event(c, "cluster", "BLACKLIST", cluster_id=cl2, parent=cause)
    FakeAdapter.failing = {"a"}
    ev = _cancel(engine, cid)
    res = nikita.run_once(engine, factory=FakeAdapter)
    assert FakeAdapter.calls == []
    assert _state(engine, j1) == "running" and _state(engine, j2) == "running"
    assert sorted(res.problems) == [j1, j2]
    with engine.connect() as c:
        assert eventsdb.get_event(c, ev)["state"] == "open"  # retried next cycle
        codes = [r[0] for r in c.execute(sa.select(events.c.code).where(events.c.cluster_id == cl1))]
        assert "CONNECTION_REFUSED" in codes  # the adapter error is recorded for colombo
    # the problem is reported once, not every cycle
    assert nikita.run_once(engine, factory=FakeAdapter).problems == []
    # the cluster comes back, the blacklist is lifted: the kill happens and the event closes
    FakeAdapter.failing = set()
    with engine.begin() as c:
        c.execute(events.update().where(events.c.cluster_id == cl2).values(state="closed"))
    res = nikita.run_once(engine, factory=FakeAdapter)
    assert sorted(FakeAdapter.calls) == [("a", 101, "alice"), ("b", 201, "alice")]
    assert res.frag_closed == [ev]


def test_single_job_cancellation(engine):
    cl = add_cluster(engine, "a")
    cid = make_campaign(engine, "bob", [cl], n_tasks=0)
    j = _job(engine, cid, cl, "running", 7)
    other = _job(engine, cid, cl, "running", 8)
    with engine.begin() as c:
        ev = eventsdb.create_event(c, "job", "USER_FRAG", job_id=j, campaign_id=cid)
    res = nikita.run_once(engine, factory=FakeAdapter)
    assert FakeAdapter.calls == [("a", 7, "bob")]
    assert _state(engine, j) == "event" and _state(engine, other) == "running"
    assert res.frag_closed == [ev]


def test_expired_walltime_killed_per_cluster_blacklist(engine):
    """CiGri3 skipped jobs of campaigns blacklisted on ANY cluster and wrapped at 24 h."""
    cl1, cl2 = add_cluster(engine, "a"), add_cluster(engine, "b")
    cid = make_campaign(engine, "alice", [cl1, cl2], n_tasks=0, props={"*": {"walltime": "30:00:00"}})
    long_ago = now() - timedelta(hours=40)  # > 24 h: CiGri3's TIME cast never fired
    j1 = _job(engine, cid, cl1, "running", 11, start_time=long_ago)
    young = _job(engine, cid, cl1, "running", 12, start_time=now() - timedelta(hours=29))
    with engine.begin() as c:  # blacklisted for this campaign on ANOTHER cluster only
        cause = eventsdb.create_event(c, "job", "EXIT_ERROR", campaign_id=cid, cluster_id=cl2)
        eventsdb.create_event(c, "campaign", "BLACKLIST", campaign_id=cid, cluster_id=cl2, parent=cause)
    res = nikita.run_once(engine, factory=FakeAdapter)
    assert res.walltime_killed == [j1] and FakeAdapter.calls == [("a", 11, "alice")]
    assert young not in res.walltime_killed
    nikita.run_once(engine, factory=FakeAdapter)  # killed again until the runner notices,
    with engine.connect() as c:  # but one trace event and one affinity decrease
        n = c.execute(sa.select(sa.func.count()).select_from(events).where(events.c.code == "CIGRI_WALLTIME")).scalar()
        assert n == 1
        assert jobsdb.get_affinity(c, 1, cl1) == -1


def test_remote_waiting_timeout_and_queued_too_long(engine, request):
    conf = request.getfixturevalue("pg_conf" if engine.dialect.name == "postgresql" else "sqlite_conf")
    conf = conf.with_values(REMOTE_WAITING_TIMEOUT=60)
    cl = add_cluster(engine, "a")
    cid = make_campaign(engine, "alice", [cl], n_tasks=2)
    w = _job(engine, cid, cl, "remote_waiting", 31, submission_time=now() - timedelta(seconds=120))
    _job(engine, cid, cl, "remote_waiting", 32, submission_time=now())
    with engine.begin() as c:
        tasks = [r[0] for r in c.execute(sa.select(bag_of_tasks.c.id))]
        c.execute(jobs_to_launch.insert(), [{"task_id": tasks[0], "cluster_id": cl, "order_num": 1,
                                             "queuing_date": now() - timedelta(seconds=120)},
                                            {"task_id": tasks[1], "cluster_id": cl, "order_num": 1,
                                             "queuing_date": now()}])
    res = nikita.run_once(engine, conf, factory=FakeAdapter)
    assert res.waiting_killed == [w] and FakeAdapter.calls == [("a", 31, "alice")]
    assert _state(engine, w) == "remote_waiting"  # the runner sees the kill and resubmits
    assert res.unqueued == 1
    with engine.connect() as c:
        assert [r[0] for r in c.execute(sa.select(jobs_to_launch.c.task_id))] == [tasks[1]]
        ev = c.execute(sa.select(events.c.code, events.c.notified).where(
            events.c.code == "QUEUED_FOR_TOO_LONG")).one()
        assert ev.notified is True  # never mailed


def test_affinity_cleanup_hourly_and_not_notified(engine):
    cl = add_cluster(engine, "a")
    done = make_campaign(engine, "alice", [cl], n_tasks=1, state="terminated")
    live = make_campaign(engine, "alice", [cl], n_tasks=1)
    with engine.begin() as c:
        pdone = c.execute(sa.select(bag_of_tasks.c.param_id).where(bag_of_tasks.c.campaign_id == done)).scalar()
        plive = c.execute(sa.select(bag_of_tasks.c.param_id).where(bag_of_tasks.c.campaign_id == live)).scalar()
        jobsdb.decrease_affinity(c, pdone, cl)
        jobsdb.decrease_affinity(c, plive, cl)
    assert nikita.run_once(engine, factory=FakeAdapter).affinity_cleaned is True
    with engine.connect() as c:
        assert [r[0] for r in c.execute(sa.select(tasks_affinity.c.param_id))] == [plive]
    assert nikita.run_once(engine, factory=FakeAdapter).affinity_cleaned is False
    with engine.connect() as c:
        rows = c.execute(sa.select(events.c.notified).where(events.c.code == "NIKITA_CLEAN_AFFINITY")).all()
        assert [r[0] for r in rows] == [True]


def test_parse_walltime():
    assert nikita.parse_walltime("30:00:00") == 108000
    assert nikita.parse_walltime("2") == 7200
    assert nikita.parse_walltime("1:30") == 5400
    assert nikita.parse_walltime("bad") is None
