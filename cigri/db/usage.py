"""grid_usage snapshots and cluster stress factors."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from cigri.clock import epoch
from cigri.db.clusters import all_cluster_names
from cigri.db.schema import clusters, grid_usage, jobs, now


def last_snapshot(conn: Connection) -> datetime | None:
    return conn.execute(sa.select(sa.func.max(grid_usage.c.date))).scalar()


def running_remote_ids(conn: Connection, cluster_id: int) -> set[int]:
    """Remote ids of CiGri's running jobs on ONE cluster (CiGri3 mixed all clusters)."""
    q = sa.select(jobs.c.remote_id).where(jobs.c.cluster_id == cluster_id, jobs.c.state == "running",
                                          jobs.c.remote_id.is_not(None)).distinct()
    return {int(r[0]) for r in conn.execute(q)}


def insert_usage(conn: Connection, date: datetime, cluster_id: int, max_resources: int, used_resources: int,
                 unavailable_resources: int, used_by_cigri: int) -> None:
    conn.execute(grid_usage.insert().values(date=date, cluster_id=cluster_id, max_resources=max_resources,
                                            used_resources=used_resources,
                                            unavailable_resources=unavailable_resources,
                                            used_by_cigri=used_by_cigri))


def set_stress_factor(conn: Connection, cluster_id: int, value: float) -> bool:
    """Store the stress factor if it changed; True when it did."""
    res = conn.execute(clusters.update().where(clusters.c.id == cluster_id,
                                               sa.or_(clusters.c.stress_factor.is_(None),
                                                      clusters.c.stress_factor != value))
                       .values(stress_factor=value))
    return bool(res.rowcount)


def gridusage(conn: Connection, date_from: datetime | None, date_to: datetime | None) -> list[dict[str, Any]]:
    names = all_cluster_names(conn)
    if date_from is None and date_to is None:
        last = conn.execute(sa.select(sa.func.max(grid_usage.c.date))).scalar()
        if last is None:
            return []
        cond = grid_usage.c.date == last
    else:
        cond = sa.and_(grid_usage.c.date > (date_from or datetime.fromtimestamp(0).astimezone()),
                       grid_usage.c.date <= (date_to or now()))
    out: dict[Any, list[dict[str, Any]]] = {}
    for r in conn.execute(sa.select(grid_usage).where(cond).order_by(grid_usage.c.date, grid_usage.c.cluster_id)):
        out.setdefault(r.date, []).append({
            "cluster_name": names.get(r.cluster_id), "cluster_id": r.cluster_id,
            "max_resources": r.max_resources, "used_resources": r.used_resources,
            "used_by_cigri": r.used_by_cigri, "unavailable_resources": r.unavailable_resources})
    return [{"date": epoch(d), "clusters": cl} for d, cl in out.items()]
