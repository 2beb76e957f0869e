"""Queries of local mode (`cigri local`): the local cluster row and a campaign's progress."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from cigri.db.schema import bag_of_tasks, campaigns, clusters, events, jobs, parameters
from cigri.states import UNFINISHED_JOB_STATES

ACTIVE = UNFINISHED_JOB_STATES


def ensure_local_cluster(conn: Connection, name: str = "local", api_url: str = "local://") -> int:
    """The `local` cluster row (created enabled if missing; re-enabled if disabled)."""
    row = conn.execute(sa.select(clusters.c.id, clusters.c.enabled).where(clusters.c.name == name)).first()
    if row is not None:
        if not row.enabled:
            conn.execute(clusters.update().where(clusters.c.id == row.id).values(enabled=True))
        return int(row.id)
    return int(conn.execute(clusters.insert().values(
        name=name, api_url=api_url, batch="local", api_auth_type="none", resource_unit="core",
        api_chunk_size=1000, api_limit=1000, power=1, stress_factor=0.0, enabled=True,
    ).returning(clusters.c.id)).scalar_one())


def campaign_state(conn: Connection, campaign_id: int) -> str | None:
    return conn.execute(sa.select(campaigns.c.state).where(campaigns.c.id == campaign_id)).scalar()


#: open events that are a task's own failure (not a resubmission in progress)
_NOT_FAILURES = ("RESUBMIT", "RESUBMIT_END", "BLACKLIST")


def _failed_jobs(campaign_id: int) -> sa.Select[Any]:
    """Jobs of tasks that failed and stay failed: an open event on the job that is not a
    resubmission, and no later attempt of the task done, under way or queued."""
    j2 = jobs.alias("j2")
    return (sa.select(jobs.c.id, jobs.c.param_id, jobs.c.return_code, events.c.code, events.c.message)
            .join(events, sa.and_(events.c.job_id == jobs.c.id, events.c.state == "open",
                                  events.c.code.not_in(_NOT_FAILURES)))
            .where(jobs.c.campaign_id == campaign_id, jobs.c.param_id > 0, jobs.c.state == "event",
                   ~sa.exists().where(j2.c.campaign_id == campaign_id, j2.c.param_id == jobs.c.param_id,
                                      j2.c.state.in_(("terminated", *ACTIVE))),
                   ~sa.exists().where(bag_of_tasks.c.campaign_id == campaign_id,
                                      bag_of_tasks.c.param_id == jobs.c.param_id)))


def progress(conn: Connection, campaign_id: int) -> dict[str, Any]:
    """What the live display shows, counted in tasks (parameters): done, running, failed
    (and staying so) and waiting (the rest) add up to the total; plus open events."""
    camp = conn.execute(sa.select(campaigns.c.state, campaigns.c.nb_jobs, campaigns.c.name)
                        .where(campaigns.c.id == campaign_id)).first()
    if camp is None:
        return {}
    by_state = {r.state: int(r.n) for r in conn.execute(
        sa.select(jobs.c.state, sa.func.count(sa.distinct(jobs.c.param_id)).label("n"))
        .where(jobs.c.campaign_id == campaign_id, jobs.c.param_id > 0,
               jobs.c.state.in_(("terminated", "running", *ACTIVE))).group_by(jobs.c.state))}
    done = by_state.get("terminated", 0)
    sub = _failed_jobs(campaign_id).subquery()
    failed = conn.execute(sa.select(sa.func.count(sa.distinct(sub.c.param_id)))).scalar() or 0
    active_special = conn.execute(sa.select(sa.func.count()).where(
        jobs.c.campaign_id == campaign_id, jobs.c.param_id == 0, jobs.c.state.in_(ACTIVE))).scalar() or 0
    ev = [dict(r._mapping) for r in conn.execute(
        sa.select(events.c.id, events.c["class"].label("class_"), events.c.code, events.c.job_id,
                  events.c.message, jobs.c.param_id, jobs.c.return_code, parameters.c.name.label("task"))
        .select_from(events.outerjoin(jobs, jobs.c.id == events.c.job_id)
                     .outerjoin(parameters, parameters.c.id == jobs.c.param_id))
        .where(events.c.campaign_id == campaign_id, events.c.state == "open")
        .order_by(events.c.id.desc()).limit(50))][::-1]
    n_events = conn.execute(sa.select(sa.func.count()).where(
        events.c.campaign_id == campaign_id, events.c.state == "open")).scalar() or 0
    blacklisted = conn.execute(sa.select(sa.func.count()).where(
        events.c.campaign_id == campaign_id, events.c.state == "open", events.c.code == "BLACKLIST")).scalar() or 0
    total = int(camp.nb_jobs or 0)
    running = min(by_state.get("running", 0), max(0, total - done))
    failed = min(int(failed), max(0, total - done - running))
    return {
        "state": camp.state, "name": camp.name, "total": total, "done": int(done), "running": running,
        "failed": failed, "waiting": max(0, total - done - running - failed),
        "active": sum(by_state.get(s, 0) for s in ACTIVE) + int(active_special),
        "open_events": int(n_events), "events": ev, "blacklisted": bool(blacklisted),
    }


def failed_tasks(conn: Connection, campaign_id: int, limit: int | None = None) -> list[dict[str, Any]]:
    """The tasks that failed and stay failed: name, job, wait status, event code and message."""
    sub = _failed_jobs(campaign_id).subquery()
    q = (sa.select(sub.c.id.label("job_id"), sub.c.param_id, sub.c.return_code, sub.c.code, sub.c.message,
                   parameters.c.name)
         .join(parameters, parameters.c.id == sub.c.param_id).order_by(sub.c.param_id, sub.c.id.desc()))
    out: dict[int, dict[str, Any]] = {}
    for r in conn.execute(q):
        out.setdefault(int(r.param_id), dict(r._mapping))
        if limit is not None and len(out) >= limit:
            break
    return list(out.values())


def latest_campaign_ids(conn: Connection, n: int) -> list[int]:
    """The ids of the `n` most recent campaigns, newest first."""
    q = sa.select(campaigns.c.id).order_by(campaigns.c.id.desc()).limit(n)
    return [int(r[0]) for r in conn.execute(q)]
