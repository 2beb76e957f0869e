"""campaigns and campaign_properties rows, and the per-campaign deletions."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from cigri.db.engine import chunked
from cigri.db.schema import (
    bag_of_tasks,
    campaign_properties,
    campaigns,
    events,
    jobs,
    jobs_to_launch,
    now,
    parameters,
    taps,
    tasks_affinity,
)
from cigri.states import LIVE_CAMPAIGN_STATES


def insert_campaign(conn: Connection, user: str, type_: str, name: str, jdl: dict[str, Any],
                    state: str = "in_treatment") -> int:
    q = campaigns.insert().values(grid_user=user, state=state, type=type_, name=name, submission_time=now(),
                                  nb_jobs=0, jdl=json.dumps(jdl)).returning(campaigns.c.id)
    return int(conn.execute(q).scalar_one())


def insert_properties(conn: Connection, campaign_id: int, rows: list[tuple[int, str, str]]) -> None:
    """rows: (cluster_id, name, value)."""
    if rows:
        conn.execute(campaign_properties.insert(),
                     [{"campaign_id": campaign_id, "cluster_id": c, "name": n, "value": v} for c, n, v in rows])


def get_campaign(conn: Connection, campaign_id: int, for_update: bool = False) -> dict[str, Any] | None:
    q = sa.select(campaigns).where(campaigns.c.id == campaign_id)
    if for_update and conn.dialect.name == "postgresql":
        q = q.with_for_update()
    row = conn.execute(q).mappings().first()
    return dict(row) if row else None


def owners(conn: Connection, campaign_ids: list[int]) -> dict[int, str]:
    """campaign id -> grid_user."""
    if not campaign_ids:
        return {}
    q = sa.select(campaigns.c.id, campaigns.c.grid_user).where(campaigns.c.id.in_(campaign_ids))
    return {int(i): u for i, u in conn.execute(q)}


def update_campaign(conn: Connection, campaign_id: int, **values: Any) -> None:
    if "jdl" in values and not isinstance(values["jdl"], str):
        values["jdl"] = json.dumps(values["jdl"])
    conn.execute(campaigns.update().where(campaigns.c.id == campaign_id).values(**values))


def get_properties(conn: Connection, campaign_id: int) -> dict[int, dict[str, str]]:
    """cluster_id -> {property: value}."""
    q = sa.select(campaign_properties.c.cluster_id, campaign_properties.c.name, campaign_properties.c.value
                  ).where(campaign_properties.c.campaign_id == campaign_id)
    out: dict[int, dict[str, str]] = {}
    for cl, name, value in conn.execute(q):
        out.setdefault(int(cl) if cl is not None else 0, {})[name] = value
    return out


def delete_queue_and_bag(conn: Connection, campaign_id: int) -> int:
    """Pending work of a campaign: its jobs_to_launch entries and bag_of_tasks rows."""
    tasks = sa.select(bag_of_tasks.c.id).where(bag_of_tasks.c.campaign_id == campaign_id)
    conn.execute(jobs_to_launch.delete().where(jobs_to_launch.c.task_id.in_(tasks)))
    res = conn.execute(bag_of_tasks.delete().where(bag_of_tasks.c.campaign_id == campaign_id))
    return int(res.rowcount or 0)


def delete_campaign_rows(conn: Connection, campaign_id: int, keep_campaign: bool = False) -> None:
    """Every row of a campaign (hard delete), or all but the campaigns row (purge)."""
    delete_queue_and_bag(conn, campaign_id)
    params = sa.select(parameters.c.id).where(parameters.c.campaign_id == campaign_id)
    conn.execute(tasks_affinity.delete().where(tasks_affinity.c.param_id.in_(params)))
    conn.execute(jobs.delete().where(jobs.c.campaign_id == campaign_id))
    conn.execute(parameters.delete().where(parameters.c.campaign_id == campaign_id, parameters.c.id != 0))
    conn.execute(taps.delete().where(taps.c.campaign_id == campaign_id))
    if keep_campaign:
        return
    conn.execute(events.delete().where(events.c.campaign_id == campaign_id))
    conn.execute(campaign_properties.delete().where(campaign_properties.c.campaign_id == campaign_id))
    conn.execute(campaigns.delete().where(campaigns.c.id == campaign_id))


def count_active_jobs(conn: Connection, campaign_id: int, states: tuple[str, ...]) -> int:
    q = sa.select(sa.func.count()).select_from(jobs).where(jobs.c.campaign_id == campaign_id,
                                                           jobs.c.state.in_(states))
    return int(conn.execute(q).scalar_one())


def max_resubmit_setting(conn: Connection, campaign_id: int) -> Any:
    """The campaign's `max_resubmit` as given (property, else JDL field), None when unset."""
    v = conn.execute(sa.select(campaign_properties.c.value).where(
        campaign_properties.c.campaign_id == campaign_id, campaign_properties.c.name == "max_resubmit")
        .limit(1)).scalar()
    if v is not None:
        return v
    jdl = conn.execute(sa.select(campaigns.c.jdl).where(campaigns.c.id == campaign_id)).scalar()
    try:
        return json.loads(jdl).get("max_resubmit") if jdl else None
    except (ValueError, AttributeError):
        return None


#: the campaigns GET /campaigns lists
LISTED_CAMPAIGN_STATES = LIVE_CAMPAIGN_STATES


def list_campaigns(conn: Connection, states: Sequence[str] = LISTED_CAMPAIGN_STATES, user: str | None = None,
                   limit: int | None = None, offset: int = 0) -> tuple[list[dict[str, Any]], int]:
    """Campaign rows (without the JDL, which may be megabytes) and the total count."""
    cols = [campaigns.c.id, campaigns.c.name, campaigns.c.grid_user, campaigns.c.state,
            campaigns.c.submission_time, campaigns.c.nb_jobs]
    cond: list[sa.ColumnElement[bool]] = [campaigns.c.state.in_(list(states))]
    if user:
        cond.append(campaigns.c.grid_user == user)
    q = sa.select(*cols).where(*cond).order_by(campaigns.c.id).offset(offset)
    if limit is not None:
        q = q.limit(limit)
    rows = [dict(r) for r in conn.execute(q).mappings()]
    if limit is None and offset == 0:
        total = len(rows)
    else:
        total = int(conn.execute(sa.select(sa.func.count()).select_from(campaigns).where(*cond)).scalar_one())
    return rows, total


def campaign_cluster_ids(conn: Connection, campaign_ids: Sequence[int]) -> dict[int, list[int]]:
    """campaign id -> the clusters it runs on (ordered as in the JDL, i.e. property ids)."""
    out: dict[int, list[int]] = {}
    for chunk in chunked(list(campaign_ids), 5000):
        q = (sa.select(campaign_properties.c.campaign_id, campaign_properties.c.cluster_id,
                       sa.func.min(campaign_properties.c.id).label("first"))
             .where(campaign_properties.c.campaign_id.in_(chunk), campaign_properties.c.cluster_id.is_not(None))
             .group_by(campaign_properties.c.campaign_id, campaign_properties.c.cluster_id)
             .order_by(sa.text("first")))
        for cid, cl, _ in conn.execute(q):
            out.setdefault(int(cid), []).append(int(cl))
    return out


def stored_jdl(campaign: dict[str, Any]) -> Any:
    """The campaign's stored JDL, parsed (as text if it is not JSON: a CiGri3-era row)."""
    try:
        return json.loads(campaign["jdl"] or "{}")
    except ValueError:
        return campaign["jdl"]


def state_of(conn: Connection, campaign_id: int) -> str | None:
    return conn.execute(sa.select(campaigns.c.state).where(campaigns.c.id == campaign_id)).scalar()


def latest_campaign_ids(conn: Connection, n: int) -> list[int]:
    """The ids of the `n` most recent campaigns, newest first."""
    q = sa.select(campaigns.c.id).order_by(campaigns.c.id.desc()).limit(n)
    return [int(r[0]) for r in conn.execute(q)]
