"""Taps, resubmission and affinity helpers shared by the engine daemons."""

import sqlalchemy as sa

from cigri.db import jobs as jobsdb
from cigri.db import taps as tapsdb
from cigri.db.schema import bag_of_tasks, campaigns, jobs, now


def _campaign(c, state="in_treatment"):
    return c.execute(campaigns.insert().values(grid_user="alice", state=state, type="normal", name="t",
                                               submission_time=now(), nb_jobs=1).returning(campaigns.c.id)).scalar_one()


def test_tap_sequence_matches_cigri3(engine, request):
    conf = request.getfixturevalue("pg_conf" if engine.dialect.name == "postgresql" else "sqlite_conf")
    conf = conf.with_values(RUNNER_DEFAULT_INITIAL_NUMBER_OF_JOBS=3)
    rates = []
    with engine.begin() as c:
        tap = tapsdb.get_or_create_tap(c, 1, 1, conf)
        for _ in range(11):
            rates.append(tap.rate)
            tapsdb.increase_rate(c, tap, conf)
        assert tapsdb.get_or_create_tap(c, 1, 1, conf).id == tap.id
    assert rates == [3, 4, 6, 9, 13, 19, 28, 42, 63, 94, 100]


def test_resubmit_only_running_campaigns_and_not_prologue(engine):
    with engine.begin() as c:
        cid = _campaign(c)
        dead = _campaign(c, "cancelled")
        j1 = c.execute(jobs.insert().values(campaign_id=cid, param_id=5, state="event").returning(jobs.c.id)).scalar()
        j2 = c.execute(jobs.insert().values(campaign_id=cid, param_id=0, tag="prologue", state="event")
                       .returning(jobs.c.id)).scalar()
        j3 = c.execute(jobs.insert().values(campaign_id=dead, param_id=6, state="event").returning(jobs.c.id)).scalar()
        assert jobsdb.resubmit_job(c, j1) is True
        assert jobsdb.resubmit_job(c, j2) is False
        assert jobsdb.resubmit_job(c, j3) is False
        rows = c.execute(sa.select(bag_of_tasks.c.param_id, bag_of_tasks.c.priority)).all()
        assert [tuple(r) for r in rows] == [(5, 20)]


def test_affinity_and_batch_ids(engine):
    with engine.begin() as c:
        jobsdb.decrease_affinity(c, 7, 1)
        assert jobsdb.get_affinity(c, 7, 1) == -1
        jobsdb.decrease_affinity(c, 7, 1)
        assert jobsdb.get_affinity(c, 7, 1) == -2
        jobsdb.reset_affinity(c, 7, 1)
        assert jobsdb.get_affinity(c, 7, 1) is None
        a, b = jobsdb.new_batch_id(c), jobsdb.new_batch_id(c)
        assert b > a
