"""Meta-scheduler (spec §6): AC-39 orders, prologue/epilogue, max_jobs, test mode,
blacklists, nightly / semi-best-effort, on PostgreSQL and SQLite."""

from __future__ import annotations

import json
from datetime import datetime

import pytest
import sqlalchemy as sa

from cigri.db import events as eventsdb
from cigri.db.schema import (
    bag_of_tasks,
    campaign_properties,
    campaigns,
    clusters,
    jobs,
    jobs_to_launch,
    now,
    parameters,
    users_priority,
)
from cigri.engine import metascheduler as ms
from tests.conftest import add_cluster

DEFAULT_PROPS = {"type": "best-effort", "test_mode": "false", "exec_file": "/bin/true", "walltime": "00:10:00",
                 "resources": "/resource_id=1", "temporal_grouping": "false", "dimensional_grouping": "false"}


def make_campaign(engine, user: str, cluster_ids, n_tasks: int = 10, props=None, state="in_treatment") -> int:
    """A campaign with properties on each cluster and n tasks in the bag (what the API creates)."""
    with engine.begin() as c:
        cid = c.execute(campaigns.insert().values(grid_user=user, state=state, type="normal", name="t",
                                                  submission_time=now(), nb_jobs=n_tasks, jdl="{}")
                        .returning(campaigns.c.id)).scalar_one()
        rows = []
        for cl in cluster_ids:
            p = DEFAULT_PROPS | (props or {}).get(cl, (props or {}).get("*", {}))
            rows += [{"campaign_id": cid, "cluster_id": cl, "name": k, "value": v} for k, v in p.items()]
        c.execute(campaign_properties.insert(), rows)
        if n_tasks:
            c.execute(parameters.insert(), [{"campaign_id": cid, "name": f"p{i}", "param": f"p{i} {i}"}
                                            for i in range(n_tasks)])
            pids = [r[0] for r in c.execute(sa.select(parameters.c.id).where(parameters.c.campaign_id == cid)
                                            .order_by(parameters.c.id))]
            c.execute(bag_of_tasks.insert(), [{"campaign_id": cid, "param_id": p, "priority": 10} for p in pids])
        return int(cid)


def queue_rows(engine, campaign_id=None):
    with engine.connect() as c:
        q = (sa.select(jobs_to_launch.c.cluster_id, bag_of_tasks.c.campaign_id, bag_of_tasks.c.id,
                       jobs_to_launch.c.runner_options, jobs_to_launch.c.order_num)
             .select_from(jobs_to_launch.join(bag_of_tasks, bag_of_tasks.c.id == jobs_to_launch.c.task_id))
             .order_by(jobs_to_launch.c.id))
        if campaign_id is not None:
            q = q.where(bag_of_tasks.c.campaign_id == campaign_id)
        return [tuple(r) for r in c.execute(q)]


@pytest.fixture(autouse=True)
def _fresh_scheduler_memo():
    from cigri.engine import scheduler

    scheduler._exhausted_at.clear()
    yield
    scheduler._exhausted_at.clear()


@pytest.fixture
def three_clusters(engine):
    return [add_cluster(engine, f"c{i}") for i in (1, 2, 3)]


def _conf(engine, request, **kw):
    conf = request.getfixturevalue("pg_conf" if engine.dialect.name == "postgresql" else "sqlite_conf")
    return conf.with_values(**({"RUNNER_DEFAULT_INITIAL_NUMBER_OF_JOBS": 3} | kw))


def test_ac39_compute_campaigns_orders(engine, request, three_clusters):
    conf = _conf(engine, request)
    cl1, cl2, cl3 = three_clusters
    c1 = make_campaign(engine, "obiwan", [cl1, cl2])
    c2 = make_campaign(engine, "yoda", [cl2, cl3])
    with engine.begin() as c:
        fifo = ms.compute_campaigns_orders(c, conf)
    assert fifo == [[cl1, c1, 30], [cl2, c1, 30], [cl2, c2, 30], [cl3, c2, 30]]

    with engine.begin() as c:
        c.execute(clusters.update().where(clusters.c.id == cl2).values(stress_factor=1.2))
        assert ms.compute_campaigns_orders(c, conf) == [[cl1, c1, 30], [cl3, c2, 30]]
        c.execute(clusters.update().where(clusters.c.id == cl2).values(stress_factor=0))

        c.execute(users_priority.insert().values(grid_user="yoda", cluster_id=cl2, priority=10))
        assert ms.compute_campaigns_orders(c, conf) == [[cl1, c1, 30], [cl2, c2, 30], [cl2, c1, 30], [cl3, c2, 30]]
        c.execute(users_priority.delete())
        assert ms.compute_campaigns_orders(c, conf) == fifo

        c.execute(campaign_properties.update().where(campaign_properties.c.campaign_id == c2,
                                                     campaign_properties.c.cluster_id == cl2,
                                                     campaign_properties.c.name == "test_mode").values(value="true"))
        assert ms.compute_campaigns_orders(c, conf) == [[cl1, c1, 30], [cl2, c2, 1], [cl2, c1, 30], [cl3, c2, 30]]


def test_test_mode_campaigns_all_first_stably(engine, request, three_clusters):
    """CiGri3 gave [t1, n1, t2] for [n1, t1, t2] (spec §15.2 #14)."""
    conf = _conf(engine, request)
    cl = three_clusters[0]
    n1 = make_campaign(engine, "u", [cl])
    t1 = make_campaign(engine, "u", [cl], props={"*": {"test_mode": "true"}})
    t2 = make_campaign(engine, "u", [cl], props={"*": {"test_mode": "true"}})
    with engine.begin() as c:
        assert [t[1] for t in ms.compute_campaigns_orders(c, conf)] == [t1, t2, n1]


def test_clusters_ordered_by_power_then_first_appearance(engine, request):
    conf = _conf(engine, request)
    a = add_cluster(engine, "a", power=10)
    b = add_cluster(engine, "b")
    d = add_cluster(engine, "d", power=50)
    make_campaign(engine, "u", [a, b, d])
    with engine.begin() as c:
        assert [t[0] for t in ms.compute_campaigns_orders(c, conf)] == [d, a, b]


def test_blacklists_and_disabled_clusters_are_respected(engine, request, three_clusters):
    """CiGri3 queued tasks on clusters blacklisted for the campaign (spec §15.2 #15)."""
    conf = _conf(engine, request)
    cl1, cl2, cl3 = three_clusters
    c1 = make_campaign(engine, "u", [cl1, cl2, cl3])
    c2 = make_campaign(engine, "v", [cl1, cl2])
    with engine.begin() as c:
        cause = eventsdb.create_event(c, "job", "EXIT_ERROR", campaign_id=c1, cluster_id=cl1)
        eventsdb.create_event(c, "campaign", "BLACKLIST", campaign_id=c1, cluster_id=cl1, parent=cause)
        cause2 = eventsdb.create_event(c, "cluster", "TIMEOUT", cluster_id=cl2)
        eventsdb.create_event(c, "cluster", "BLACKLIST", cluster_id=cl2, parent=cause2)
        c.execute(clusters.update().where(clusters.c.id == cl3).values(enabled=False))
        assert ms.compute_campaigns_orders(c, conf) == [[cl1, c2, 30]]
    res = ms.run_once(engine, conf)
    assert res.queued == {cl1: 10}
    assert {r[1] for r in queue_rows(engine)} == {c2}


def test_scheduler_queues_each_task_once_round_robin(engine, request, three_clusters):
    conf = _conf(engine, request)
    cl1, cl2, cl3 = three_clusters
    cid = make_campaign(engine, "u", [cl1, cl2, cl3], n_tasks=10)
    res = ms.run_once(engine, conf)
    rows = queue_rows(engine)
    assert sum(res.queued.values()) == 10
    tasks = [r[2] for r in rows]
    assert len(tasks) == len(set(tasks)) == 10  # every task queued exactly once
    assert {r[0] for r in rows} == {cl1, cl2, cl3}  # spread over the clusters
    per_cluster = {cl: sorted(r[2] for r in rows if r[0] == cl) for cl in (cl1, cl2, cl3)}
    # round-robin: the best task (lowest id) goes to the first cluster, the next to the second...
    first = min(tasks)
    assert per_cluster[cl1][0] == first and per_cluster[cl2][0] == first + 1 and per_cluster[cl3][0] == first + 2
    for r in rows:
        assert json.loads(r[3]) == {"besteffort": True}  # no batch_id without grouping (spec §15.2 #12)
    # AC-53: the campaign still lists its 10 tasks
    with engine.connect() as c:
        assert c.execute(sa.select(sa.func.count()).select_from(parameters)
                         .where(parameters.c.campaign_id == cid)).scalar() == 10
    # a second pass adds nothing: everything is queued
    assert sum(ms.run_once(engine, conf).queued.values()) == 0


def test_queue_depth_topped_up_to_ten_times_the_tap_rate(engine, request, three_clusters):
    conf = _conf(engine, request)
    cl1 = three_clusters[0]
    make_campaign(engine, "u", [cl1], n_tasks=100)
    assert ms.run_once(engine, conf).queued == {cl1: 30}
    assert ms.run_once(engine, conf).queued == {}
    with engine.begin() as c:  # the runner takes 5 tasks
        ids = [r[0] for r in c.execute(sa.select(jobs_to_launch.c.id).order_by(jobs_to_launch.c.id).limit(5))]
        c.execute(jobs_to_launch.delete().where(jobs_to_launch.c.id.in_(ids)))
    assert ms.run_once(engine, conf).queued == {cl1: 5}


def test_max_jobs_respected(engine, request, three_clusters):
    conf = _conf(engine, request)
    cl1, cl2, _ = three_clusters
    cid = make_campaign(engine, "u", [cl1, cl2], n_tasks=50, props={"*": {"max_jobs": "4"}})
    with engine.begin() as c:
        c.execute(jobs.insert(), [{"campaign_id": cid, "param_id": 1, "cluster_id": cl1, "state": "running"}] * 3)
    res = ms.run_once(engine, conf)
    assert res.queued == {cl1: 1, cl2: 4}
    assert ms.run_once(engine, conf).queued == {}


def test_test_mode_one_job_per_cluster_not_besteffort(engine, request, three_clusters):
    conf = _conf(engine, request)
    cl1 = three_clusters[0]
    make_campaign(engine, "u", [cl1], n_tasks=5, props={"*": {"test_mode": "true"}})
    assert ms.run_once(engine, conf).queued == {cl1: 1}
    assert json.loads(queue_rows(engine)[0][3]) == {"besteffort": False}
    assert ms.run_once(engine, conf).queued == {}


def test_temporal_grouping_gets_a_real_batch_id(engine, request, three_clusters):
    conf = _conf(engine, request)
    cl1, cl2, _ = three_clusters
    make_campaign(engine, "u", [cl1, cl2], n_tasks=6, props={"*": {"temporal_grouping": "true"}})
    ms.run_once(engine, conf)
    opts = [json.loads(r[3]) for r in queue_rows(engine)]
    assert all(o["temporal_grouping"] is True and isinstance(o["batch_id"], int) for o in opts)
    by_cluster = {}
    for r in queue_rows(engine):
        by_cluster.setdefault(r[0], set()).add(json.loads(r[3])["batch_id"])
    assert len(by_cluster[cl1]) == 1 and len(by_cluster[cl2]) == 1
    assert by_cluster[cl1] != by_cluster[cl2]  # one batch id per batch, not per pass


def test_affinity_orders_tasks_within_priority(engine, request, three_clusters):
    conf = _conf(engine, request, RUNNER_DEFAULT_INITIAL_NUMBER_OF_JOBS=1)
    cl1 = three_clusters[0]
    cid = make_campaign(engine, "u", [cl1], n_tasks=20)
    from cigri.db import jobs as jobsdb

    with engine.begin() as c:
        pids = [r[0] for r in c.execute(sa.select(parameters.c.id).where(parameters.c.campaign_id == cid)
                                        .order_by(parameters.c.id))]
        jobsdb.decrease_affinity(c, pids[0], cl1)  # the first task failed here
        c.execute(bag_of_tasks.insert().values(campaign_id=cid, param_id=pids[19], priority=20))  # resubmitted
    ms.run_once(engine, conf)
    with engine.connect() as c:
        got = [r[0] for r in c.execute(
            sa.select(bag_of_tasks.c.param_id).select_from(
                jobs_to_launch.join(bag_of_tasks, bag_of_tasks.c.id == jobs_to_launch.c.task_id))
            .order_by(jobs_to_launch.c.id))]
    # 10 slots: the resubmitted task first, then tasks 1..9 (task 0 has a lower affinity)
    assert got == [pids[19]] + pids[1:10]


def test_prologue_first_then_tasks_then_epilogue(engine, request, three_clusters):
    conf = _conf(engine, request)
    cl1, cl2, _ = three_clusters
    cid = make_campaign(engine, "u", [cl1, cl2], n_tasks=3,
                        props={"*": {"prologue": "echo start", "epilogue": "echo end"}})
    res = ms.run_once(engine, conf)
    assert len(res.prologues) == 2 and res.queued == {}
    assert ms.run_once(engine, conf).prologues == []  # in progress: not launched twice
    with engine.begin() as c:
        c.execute(jobs.update().where(jobs.c.tag == "prologue", jobs.c.cluster_id == cl1).values(state="terminated"))
    res = ms.run_once(engine, conf)
    assert res.queued == {cl1: 3}  # only where the prologue terminated
    with engine.begin() as c:  # the tasks run and end; the other prologue is still running
        c.execute(jobs_to_launch.delete())
        c.execute(bag_of_tasks.delete())
        c.execute(jobs.update().where(jobs.c.tag == "prologue").values(state="terminated"))
    res = ms.run_once(engine, conf)
    with engine.connect() as c:
        epi = c.execute(sa.select(jobs.c.cluster_id, jobs.c.state, jobs.c.param_id).where(
            jobs.c.tag == "epilogue", jobs.c.campaign_id == cid).order_by(jobs.c.cluster_id)).all()
    assert [tuple(r) for r in epi] == [(cl1, "to_launch", 0), (cl2, "to_launch", 0)]
    assert ms.run_once(engine, conf).prologues == []


def test_prologue_not_launched_on_blacklisted_cluster(engine, request, three_clusters):
    conf = _conf(engine, request)
    cl1, cl2, _ = three_clusters
    cid = make_campaign(engine, "u", [cl1, cl2], n_tasks=3, props={"*": {"prologue": "echo start"}})
    with engine.begin() as c:
        cause = eventsdb.create_event(c, "job", "PROLOG_EXIT_ERROR", campaign_id=cid, cluster_id=cl1)
        eventsdb.create_event(c, "campaign", "BLACKLIST", campaign_id=cid, cluster_id=cl1, parent=cause)
    res = ms.run_once(engine, conf)
    with engine.connect() as c:
        assert [r[0] for r in c.execute(sa.select(jobs.c.cluster_id).where(jobs.c.tag == "prologue"))] == [cl2]
    assert len(res.prologues) == 1


def test_nightly_only_inside_the_window(engine, request, three_clusters):
    conf = _conf(engine, request, NIGHTLY_START="19:00", NIGHTLY_END="07:00")
    cl1 = three_clusters[0]
    make_campaign(engine, "u", [cl1], n_tasks=5, props={"*": {"type": "nightly"}})
    noon, night = datetime(2026, 1, 5, 12, 0), datetime(2026, 1, 5, 23, 30)
    assert ms.run_once(engine, conf, when=noon).queued == {}
    assert ms.run_once(engine, conf, when=night).queued == {cl1: 5}
    assert json.loads(queue_rows(engine)[0][3]) == {"besteffort": False, "nightly": True}
    res = ms.run_once(engine, conf, when=noon)  # the window closed: queue withdrawn
    assert res.withdrawn == 5 and queue_rows(engine) == []


def test_semi_best_effort_resubmitted_tasks_run_as_normal_jobs(engine, request, three_clusters):
    conf = _conf(engine, request)
    cl1 = three_clusters[0]
    cid = make_campaign(engine, "u", [cl1], n_tasks=2, props={"*": {"type": "semi-best-effort"}})
    with engine.begin() as c:
        c.execute(bag_of_tasks.insert().values(campaign_id=cid, param_id=1, priority=20))
    ms.run_once(engine, conf)
    opts = [json.loads(r[3]) for r in queue_rows(engine)]
    assert opts[0] == {"besteffort": False, "semi_best_effort": True}
    assert opts[1:] == [{"besteffort": True, "semi_best_effort": True}] * 2
    assert [r[4] for r in queue_rows(engine)] == [1, 2, 2]  # a new batch when the options change


def test_ac54_running_and_paused_campaigns_of_a_cluster(engine, three_clusters):
    from cigri.db import scheduling as sdb

    cl1 = three_clusters[0]
    cid = make_campaign(engine, "u", [cl1])
    with engine.begin() as c:
        assert sdb.cluster_campaigns(c, cl1) == [cid]
        c.execute(campaigns.update().where(campaigns.c.id == cid).values(state="paused"))
        assert sdb.cluster_campaigns(c, cl1, "paused") == [cid]
        assert sdb.cluster_campaigns(c, cl1) == []
    assert ms.run_once(engine).queued == {}  # paused campaigns are not queued


def test_a_pass_queues_at_most_one_full_queue_per_cluster(engine, request, three_clusters):
    """Cold start with many campaigns: the first campaigns (FIFO) fill first, the rest follows."""
    conf = _conf(engine, request, RUNNER_TAP_INCREASE_MAX=2)  # 10 x 2 = 20 entries per cluster per pass
    cl = three_clusters[0]
    c1, c2, c3 = (make_campaign(engine, "u", [cl], n_tasks=100) for _ in range(3))
    assert ms.run_once(engine, conf).queued == {cl: 20}
    assert {r[1] for r in queue_rows(engine)} == {c1}
    assert ms.run_once(engine, conf).queued == {cl: 20}
    counts = {c: sum(1 for r in queue_rows(engine) if r[1] == c) for c in (c1, c2, c3)}
    assert counts == {c1: 30, c2: 10, c3: 0}
    with engine.connect() as c:
        from cigri.db.schema import taps
        assert c.execute(sa.select(sa.func.count()).select_from(taps)).scalar() == 3  # one tap per pair


def test_a_fully_queued_campaign_does_not_starve_the_next_ones(engine, request, three_clusters):
    conf = _conf(engine, request, RUNNER_TAP_INCREASE_MAX=2)  # 20 entries per cluster per pass
    cl = three_clusters[0]
    small = make_campaign(engine, "u", [cl], n_tasks=5)
    big = make_campaign(engine, "u", [cl], n_tasks=100)
    assert ms.run_once(engine, conf).queued == {cl: 20}
    assert ms.run_once(engine, conf).queued == {cl: 15}
    counts = {c: sum(1 for r in queue_rows(engine) if r[1] == c) for c in (small, big)}
    assert counts == {small: 5, big: 30}


def test_resubmitted_task_of_a_fully_queued_campaign_is_queued_at_once(engine, request, three_clusters):
    conf = _conf(engine, request)
    cl = three_clusters[0]
    cid = make_campaign(engine, "u", [cl], n_tasks=200)
    for _ in range(3):  # fill: 30 entries, then the campaign keeps max > 0 but nothing new
        ms.run_once(engine, conf)
    with engine.begin() as c:  # the runner took 25 tasks; only 5 stay queued; bag = queued + 170
        ids = [r[0] for r in c.execute(sa.select(jobs_to_launch.c.task_id).order_by(jobs_to_launch.c.id).limit(25))]
        c.execute(jobs_to_launch.delete().where(jobs_to_launch.c.task_id.in_(ids)))
        c.execute(bag_of_tasks.delete().where(bag_of_tasks.c.id.in_(ids)))
        c.execute(bag_of_tasks.delete().where(bag_of_tasks.c.campaign_id == cid, bag_of_tasks.c.id.notin_(
            sa.select(jobs_to_launch.c.task_id))))  # ...and every other task ran elsewhere
    assert ms.run_once(engine, conf).queued == {}  # the whole bag is queued
    assert ms.run_once(engine, conf).queued == {}  # (cheap probe of the ends)
    with engine.begin() as c:
        c.execute(bag_of_tasks.insert().values(campaign_id=cid, param_id=1, priority=20))  # a resubmission
    assert ms.run_once(engine, conf).queued == {cl: 1}
