"""Whether a campaign is finished, and its completion.

Fixes of CiGri3: batch_waiting jobs count as active, the epilogue check is
real (every enabled cluster with an `epilogue` property must have a
terminated epilogue job), completion_time is written, and the check runs under a lock
of the campaign row so tasks added concurrently by the API are never lost."""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from cigri.db.scheduling import Progress, progress
from cigri.db.schema import campaign_properties, campaigns, clusters, jobs, now


def epilogue_pending(conn: Connection, campaign_id: int) -> list[int]:
    """Enabled clusters where the campaign has an epilogue that has not terminated yet."""
    cp = campaign_properties
    q = (sa.select(cp.c.cluster_id)
         .select_from(cp.join(clusters, clusters.c.id == cp.c.cluster_id))
         .where(cp.c.name == "epilogue", cp.c.campaign_id == campaign_id, clusters.c.enabled.is_(True),
                ~sa.exists(sa.select(jobs.c.id).where(jobs.c.campaign_id == campaign_id,
                                                      jobs.c.cluster_id == cp.c.cluster_id,
                                                      jobs.c.tag == "epilogue", jobs.c.state == "terminated")))
         .order_by(cp.c.id))
    return [int(r[0]) for r in conn.execute(q)]


def is_finished(conn: Connection, campaign_id: int, snapshot: Progress | None = None) -> bool:
    p = snapshot or progress(conn, [campaign_id]).get(campaign_id)
    return p is not None and p.empty and not epilogue_pending(conn, campaign_id)


def candidates(conn: Connection, campaign_ids: Sequence[int]) -> list[int]:
    """Running campaigns with nothing left in flight (cheap pre-check, one statement)."""
    return [cid for cid, p in progress(conn, campaign_ids).items() if p.empty]


def complete_if_finished(conn: Connection, campaign_id: int) -> bool:
    """in_treatment -> terminated (completion_time = now) when finished. Locks the campaign
    row first (PostgreSQL) so a concurrent add of tasks either is seen or waits."""
    q = sa.select(campaigns.c.state).where(campaigns.c.id == campaign_id)
    if conn.dialect.name == "postgresql":
        q = q.with_for_update()
    state = conn.execute(q).scalar()
    if state != "in_treatment" or not is_finished(conn, campaign_id):
        return False
    res = conn.execute(campaigns.update().where(campaigns.c.id == campaign_id, campaigns.c.state == "in_treatment")
                       .values(state="terminated", completion_time=now()))
    return bool(res.rowcount)
