"""Events (spec §3.5, §9.6): creation, closing, and the blacklist queries everyone needs."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from cigri.db.schema import events, now

EVENT_CLASSES = ("cluster", "job", "campaign", "notify", "log")


def create_event(conn: Connection, class_: str, code: str, *, state: str = "open",
                 job_id: int | None = None, cluster_id: int | None = None, campaign_id: int | None = None,
                 parent: int | None = None, message: str | None = None, checked: str = "no",
                 notified: bool = False) -> int:
    """Insert one event and return its id. Closed events get date_closed at once."""
    t = now()
    values: dict[str, Any] = {
        "class": class_, "code": code[:32], "state": state, "job_id": job_id, "cluster_id": cluster_id,
        "campaign_id": campaign_id, "parent": parent, "message": message, "checked": checked,
        "notified": notified, "date_open": t, "date_update": t,
        "date_closed": t if state == "closed" else None,
    }
    return int(conn.execute(events.insert().values(**values).returning(events.c.id)).scalar_one())


def close_events(conn: Connection, ids: Iterable[int], *, checked: bool | None = None) -> int:
    """Close open events (date_closed set, spec §15.2 #36); returns how many changed."""
    ids = list(ids)
    if not ids:
        return 0
    values: dict[str, Any] = {"state": "closed", "date_closed": now()}
    if checked:
        values["checked"] = "yes"
        values["date_update"] = now()
    res = conn.execute(events.update().where(events.c.id.in_(ids), events.c.state == "open").values(**values))
    return int(res.rowcount or 0)


def close_event(conn: Connection, event_id: int, *, checked: bool | None = None) -> bool:
    return close_events(conn, [event_id], checked=checked) == 1


def mark_checked(conn: Connection, ids: Iterable[int]) -> None:
    ids = list(ids)
    if ids:
        conn.execute(events.update().where(events.c.id.in_(ids)).values(checked="yes", date_update=now()))


def get_event(conn: Connection, event_id: int) -> dict[str, Any] | None:
    row = conn.execute(sa.select(events).where(events.c.id == event_id)).mappings().first()
    return dict(row) if row else None


def cluster_blacklisted(conn: Connection, cluster_id: int, campaign_id: int | None = None) -> bool:
    """Open cluster-wide BLACKLIST, or (campaign given) open BLACKLIST for (cluster, campaign)."""
    scope = events.c["class"] == "cluster"
    if campaign_id is not None:
        scope = sa.or_(scope, sa.and_(events.c["class"] == "campaign", events.c.campaign_id == campaign_id))
    q = sa.select(events.c.id).where(events.c.state == "open", events.c.code == "BLACKLIST",
                                     events.c.cluster_id == cluster_id, scope).limit(1)
    return conn.execute(q).first() is not None


def globally_blacklisted_clusters(conn: Connection) -> set[int]:
    q = sa.select(events.c.cluster_id).where(events.c.state == "open", events.c.code == "BLACKLIST",
                                             events.c["class"] == "cluster").distinct()
    return {int(r[0]) for r in conn.execute(q) if r[0] is not None}


def campaign_blacklists(conn: Connection, cluster_id: int | None = None) -> dict[tuple[int, int], list[str]]:
    """(cluster_id, campaign_id) -> codes of the parent events of the open campaign BLACKLISTs."""
    parent = events.alias("parent_event")
    q = (sa.select(events.c.cluster_id, events.c.campaign_id, parent.c.code)
         .select_from(events.outerjoin(parent, parent.c.id == events.c.parent))
         .where(events.c.state == "open", events.c.code == "BLACKLIST", events.c["class"] == "campaign"))
    if cluster_id is not None:
        q = q.where(events.c.cluster_id == cluster_id)
    out: dict[tuple[int, int], list[str]] = {}
    for cl, ca, code in conn.execute(q):
        out.setdefault((int(cl), int(ca)), []).append(code or "")
    return out
