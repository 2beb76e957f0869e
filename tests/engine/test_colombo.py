"""Colombo's decisions and the analysis of finished OAR jobs."""

from __future__ import annotations

from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from cigri.clusters.base import RemoteJob
from cigri.clusters.oar2_5 import _describe, oar_outcome
from cigri.db import schema
from cigri.db.events import close_event, cluster_blacklisted, create_event, get_event
from cigri.engine import colombo
from cigri.engine.analysis import analyze_remote_job
from tests.conftest import add_cluster
from tests.engine.test_runner import bag_of, events_of, make_campaign


@pytest.mark.parametrize("code,blacklist,state", [
    ("CONNECTION_REFUSED", True, "open"), ("TIMEOUT", True, "open"), ("GET_JOB", True, "open"),
    ("CLUSTER_MANUALLY_DISABLED", True, "open"), ("PERMISSION_DENIED", False, "open"),
    ("SUBMIT_JOB", False, "closed"), ("RUNNER_GET_JOB_SERVER_ERROR", False, "closed"),
    ("UNDER_STRESS", False, "open")])
def test_cluster_event_decisions(pg_engine: Engine, code: str, blacklist: bool, state: str) -> None:
    cl = add_cluster(pg_engine, "c1")
    with pg_engine.begin() as c:
        eid = create_event(c, "cluster", code, cluster_id=cl, message="x")
    assert colombo.check_events(pg_engine) == 1
    with pg_engine.connect() as c:
        ev = get_event(c, eid)
        assert ev is not None and ev["checked"] == "yes" and ev["state"] == state
        assert cluster_blacklisted(c, cl) is blacklist
    assert colombo.check_events(pg_engine) == 0  # decided once


def test_delete_job_already_killed_is_closed_else_blacklisted(pg_engine: Engine) -> None:
    cl = add_cluster(pg_engine, "c1")
    with pg_engine.begin() as c:
        a = create_event(c, "cluster", "DELETE_JOB", cluster_id=cl, message="This job was already killed")
        b = create_event(c, "cluster", "DELETE_JOB", cluster_id=cl, message="boom")
    colombo.check_events(pg_engine)
    with pg_engine.connect() as c:
        assert get_event(c, a)["state"] == "closed"  # type: ignore[index]
        assert get_event(c, b)["state"] == "open"  # type: ignore[index]
        assert [e["parent"] for e in events_of(pg_engine, "BLACKLIST")] == [b]


def test_job_failure_blacklists_the_cluster_for_the_campaign_and_fix_lifts_it(pg_engine: Engine) -> None:
    cl = add_cluster(pg_engine, "c1")
    cid = make_campaign(pg_engine, [cl], ["a"])
    with pg_engine.begin() as c:
        jid = c.execute(schema.jobs.insert().values(campaign_id=cid, param_id=1, cluster_id=cl, state="event")
                        .returning(schema.jobs.c.id)).scalar_one()
        eid = create_event(c, "job", "MANUAL_EVENT", job_id=jid)  # no cluster/campaign: taken from the job
    colombo.check_events(pg_engine)
    with pg_engine.begin() as c:
        assert cluster_blacklisted(c, cl, cid) and not cluster_blacklisted(c, cl)
        assert colombo.check_blacklists(c) == 0
        close_event(c, eid)
        assert colombo.check_blacklists(c) == 1
        assert not cluster_blacklisted(c, cl, cid)


def test_user_requests_and_blacklist_markers_are_not_decided(pg_engine: Engine) -> None:
    cl = add_cluster(pg_engine, "c1")
    with pg_engine.begin() as c:
        create_event(c, "campaign", "USER_FRAG", campaign_id=1)
        create_event(c, "cluster", "BLACKLIST", cluster_id=cl)
    assert colombo.check_events(pg_engine) == 0
    assert len(events_of(pg_engine, "BLACKLIST")) == 1


def test_resubmit_of_a_cancelled_campaign_does_nothing_and_decisions_join_a_transaction(pg_engine: Engine) -> None:
    cl = add_cluster(pg_engine, "c1")
    cid = make_campaign(pg_engine, [cl], ["a"], state="cancelled")
    with pg_engine.begin() as c:
        c.execute(schema.bag_of_tasks.delete())
        jid = c.execute(schema.jobs.insert().values(campaign_id=cid, param_id=1, cluster_id=cl, state="event")
                        .returning(schema.jobs.c.id)).scalar_one()
        eid = create_event(c, "job", "RESUBMIT", job_id=jid, campaign_id=cid, cluster_id=cl)
        assert colombo.check_events(c, [eid]) == 1
    assert bag_of(pg_engine, cid) == []
    assert events_of(pg_engine, "RESUBMIT")[0]["state"] == "closed"


def _r(state: str = "Error", exit_code: int | None = None, events: list[dict[str, Any]] | None = None) -> RemoteJob:
    """A job as the OAR adapter reports it (its translation table, then CiGri's outcome)."""
    events = events or []
    outcome, exit_, new_id = oar_outcome(state, exit_code, events)
    reason, detail = _describe(events)
    return RemoteJob(id=9, outcome=outcome, raw_state=state, exit=exit_, new_id=new_id, reason=reason,
                     detail=detail)


@pytest.mark.parametrize("remote,code", [
    (_r(state="Terminated", exit_code=66 << 8), "RESUBMIT"),
    (_r(state="Terminated", exit_code=67 << 8), "RESUBMIT_END"),
    (_r(events=[{"type": "WALLTIME"}]), "RESUBMIT"),
    (_r(events=[{"type": "EXTERMINATE"}]), "RESUBMIT"),
    (_r(events=[{"type": "FRAG_JOB_REQUEST"}, {"type": "SEND_KILL_JOB"}]), "RESUBMIT"),
    (_r(events=[{"type": "FRAG_JOB_REQUEST"}, {"type": "BESTEFFORT_KILL"}]), "RESUBMIT"),
    (_r(events=[{"type": "WORKING_DIRECTORY"}]), "WORKING_DIRECTORY_ERROR"),
    (_r(events=[{"type": "SWITCH_INTO_ERROR_STATE"}]), "UNKNOWN_ERROR"),
    (_r(state="Terminated", exit_code=256), "EXIT_ERROR"),
    (_r(events=[{"type": "RESUBMIT_JOB_AUTOMATICALLY", "description": "(new id = 12)"}]), "OAR_AUTO_RESUBMIT"),
])
def test_analysis_branches(remote: RemoteJob, code: str) -> None:
    an = analyze_remote_job(None, 1, remote, lambda r: "tail line")
    assert an.code == code
    if code == "EXIT_ERROR":
        assert "exit status 256" in an.message and "tail line" in an.message
    if code == "OAR_AUTO_RESUBMIT":
        assert an.new_remote_id == 12 and an.job_state == "remote_waiting" and not an.open
    if remote.reason.endswith("BESTEFFORT_KILL"):
        assert "BESTEFFORT_KILL" in an.message  # the kill wins over the FRAG listed before it
    if remote.reason.startswith("WALLTIME"):
        assert an.notes and an.notes[0][0] == "WALLTIME_WARNING"


def test_analysis_of_prologue_and_epilogue_failures() -> None:
    assert analyze_remote_job("prologue", 1, _r(state="Terminated", exit_code=256)).code == "PROLOG_EXIT_ERROR"
    assert analyze_remote_job("epilogue", 1, _r(state="Terminated", exit_code=256)).code == "EPILOG_EXIT_ERROR"


def test_colombo_daemon_one_pass(pg_engine: Engine, pg_conf: Any, tmp_path: Any) -> None:
    cl = add_cluster(pg_engine, "c1")
    with pg_engine.begin() as c:
        create_event(c, "cluster", "TIMEOUT", cluster_id=cl)
    conf_file = tmp_path / "cigri.conf"
    conf_file.write_text("".join(f'{k}="{v}"\n' for k, v in pg_conf._raw.items()))
    from cigri.modules import colombo as mod
    assert mod.main(["--conf", str(conf_file), "--once"]) == 0
    with pg_engine.connect() as c:
        assert c.execute(sa.select(sa.func.count()).select_from(schema.events)
                         .where(schema.events.c.code == "BLACKLIST")).scalar() == 1


def test_updator_too_many_resubmit_blacklists_the_pair_but_the_per_task_cap_does_not(pg_engine: Engine) -> None:
    cl = add_cluster(pg_engine, "c1")
    with pg_engine.begin() as c:
        create_event(c, "campaign", "TOO_MANY_RESUBMIT", cluster_id=cl, campaign_id=7)
        create_event(c, "campaign", "TOO_MANY_RESUBMIT", cluster_id=cl, campaign_id=8, job_id=3, checked="yes")
    colombo.check_events(pg_engine)
    with pg_engine.connect() as c:
        assert cluster_blacklisted(c, cl, 7) and not cluster_blacklisted(c, cl, 8)
