"""Queries of local mode (`cigri local`): the local cluster row and a campaign's progress."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from cigri.db.schema import bag_of_tasks, campaigns, clusters, events, jobs
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


def progress(conn: Connection, campaign_id: int) -> dict[str, Any]:
    """What the live display shows: tasks done/total, jobs by state, open events."""
    camp = conn.execute(sa.select(campaigns.c.state, campaigns.c.nb_jobs, campaigns.c.name)
                        .where(campaigns.c.id == campaign_id)).first()
    if camp is None:
        return {}
    by_state = {r.state: int(r.n) for r in conn.execute(
        sa.select(jobs.c.state, sa.func.count().label("n"))
        .where(jobs.c.campaign_id == campaign_id, jobs.c.param_id > 0).group_by(jobs.c.state))}
    done = conn.execute(sa.select(sa.func.count(sa.distinct(jobs.c.param_id))).where(
        jobs.c.campaign_id == campaign_id, jobs.c.param_id > 0, jobs.c.state == "terminated")).scalar() or 0
    pending = conn.execute(sa.select(sa.func.count()).select_from(bag_of_tasks)
                           .where(bag_of_tasks.c.campaign_id == campaign_id)).scalar() or 0
    active_special = conn.execute(sa.select(sa.func.count()).where(
        jobs.c.campaign_id == campaign_id, jobs.c.param_id == 0, jobs.c.state.in_(ACTIVE))).scalar() or 0
    ev = [dict(r._mapping) for r in conn.execute(
        sa.select(events.c.id, events.c["class"].label("class_"), events.c.code, events.c.job_id,
                  events.c.message)
        .where(events.c.campaign_id == campaign_id, events.c.state == "open")
        .order_by(events.c.id).limit(50))]
    n_events = conn.execute(sa.select(sa.func.count()).where(
        events.c.campaign_id == campaign_id, events.c.state == "open")).scalar() or 0
    return {
        "state": camp.state, "name": camp.name, "total": int(camp.nb_jobs or 0), "done": int(done),
        "running": by_state.get("running", 0),
        "active": sum(by_state.get(s, 0) for s in ACTIVE) + int(active_special),
        "failed": by_state.get("event", 0), "pending": int(pending), "jobs": by_state,
        "open_events": int(n_events), "events": ev,
    }


def latest_campaign_ids(conn: Connection, n: int) -> list[int]:
    """The ids of the `n` most recent campaigns, newest first."""
    q = sa.select(campaigns.c.id).order_by(campaigns.c.id.desc()).limit(n)
    return [int(r[0]) for r in conn.execute(q)]
