"""events rows: creation, closing, blacklists, the decisions on open events, notification,
and their listings."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from cigri.clock import iso
from cigri.db.campaigns import campaign_cluster_ids
from cigri.db.clusters import all_cluster_names
from cigri.db.engine import is_sqlite
from cigri.db.schema import events, now
from cigri.sanitize import clean_text

EVENT_CLASSES = ("cluster", "job", "campaign", "notify", "log")


def create_event(conn: Connection, class_: str, code: str, *, state: str = "open",
                 job_id: int | None = None, cluster_id: int | None = None, campaign_id: int | None = None,
                 parent: int | None = None, message: str | None = None, checked: str = "no",
                 notified: bool = False) -> int:
    """Insert one event and return its id. Closed events get date_closed at once. The message
    often quotes outside text (task output, cluster answers): it is cleaned here once more."""
    t = now()
    values: dict[str, Any] = {
        "class": class_, "code": code[:32], "state": state, "job_id": job_id, "cluster_id": cluster_id,
        "campaign_id": campaign_id, "parent": parent, "checked": checked,
        "message": clean_text(message) if message is not None else None,
        "notified": notified, "date_open": t, "date_update": t,
        "date_closed": t if state == "closed" else None,
    }
    return int(conn.execute(events.insert().values(**values).returning(events.c.id)).scalar_one())


def close_events(conn: Connection, ids: Iterable[int], *, checked: bool | None = None) -> int:
    """Close open events (date_closed set); returns how many changed."""
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


# ------------------------------------------------------------------ decisions on open events


def _undecided(skip_codes: Iterable[str]) -> Any:
    return sa.and_(events.c.state == "open", events.c.checked == "no",
                   events.c["class"].in_(["cluster", "job", "campaign"]), events.c.code.notin_(list(skip_codes)))


def lock_undecided(conn: Connection, skip_codes: Iterable[str], ids: list[int] | None,
                   limit: int) -> list[dict[str, Any]]:
    """Open unchecked cluster/job/campaign events, oldest first, locked so that two colombos
    never take the same one (`SKIP LOCKED`; SQLite has a single writer)."""
    q = sa.select(events).where(_undecided(skip_codes)).order_by(events.c.id).limit(limit)
    if ids is not None:
        if not ids:
            return []
        q = q.where(events.c.id.in_(ids))
    if not is_sqlite(conn):
        q = q.with_for_update(skip_locked=True)
    return [dict(r) for r in conn.execute(q).mappings()]


def has_undecided(conn: Connection, skip_codes: Iterable[str]) -> bool:
    return conn.execute(sa.select(events.c.id).where(_undecided(skip_codes)).limit(1)).first() is not None


def append_message(conn: Connection, event_id: int, text: str) -> None:
    conn.execute(events.update().where(events.c.id == event_id).values(
        message=sa.func.coalesce(events.c.message, "") + text))


def lift_blacklists(conn: Connection) -> int:
    """Close (and check) every open BLACKLIST whose parent event is closed or gone."""
    parent = events.alias("p")
    open_parent = sa.exists(sa.select(parent.c.id).where(parent.c.id == events.c.parent,
                                                         parent.c.state == "open"))
    t = now()
    res = conn.execute(events.update().where(events.c.code == "BLACKLIST", events.c.state == "open", ~open_parent)
                       .values(state="closed", checked="yes", date_closed=t, date_update=t))
    return int(res.rowcount or 0)


def take_autofixable(conn: Connection, codes: Iterable[str], not_after: Any) -> dict[int, list[int]]:
    """Cluster id -> its open events of these codes not probed since `not_after`, marked
    checked now (which refreshes date_update: one probe per delay, one colombo per event)."""
    q = sa.select(events.c.id, events.c.cluster_id).where(
        events.c.state == "open", events.c["class"] == "cluster", events.c.code.in_(list(codes)),
        events.c.date_update <= not_after, events.c.cluster_id.is_not(None))
    if not is_sqlite(conn):
        q = q.with_for_update(skip_locked=True)
    rows = conn.execute(q).all()
    mark_checked(conn, [r.id for r in rows])
    out: dict[int, list[int]] = {}
    for r in rows:
        out.setdefault(int(r.cluster_id), []).append(int(r.id))
    return out


def pairs_with_open(conn: Connection, code: str) -> set[tuple[int, int]]:
    """(cluster, campaign) pairs having an open event of `code`."""
    q = sa.select(events.c.cluster_id, events.c.campaign_id).where(
        events.c.state == "open", events.c.code == code, events.c.cluster_id.is_not(None),
        events.c.campaign_id.is_not(None))
    return {(int(a), int(b)) for a, b in conn.execute(q)}


def last_closed(conn: Connection, code: str) -> dict[tuple[int, int], Any]:
    """(cluster, campaign) -> when its last event of `code` was closed (fixed)."""
    q = (sa.select(events.c.cluster_id, events.c.campaign_id, sa.func.max(events.c.date_closed))
         .where(events.c.state == "closed", events.c.code == code, events.c.job_id.is_(None),
                events.c.cluster_id.is_not(None), events.c.campaign_id.is_not(None))
         .group_by(events.c.cluster_id, events.c.campaign_id))
    return {(int(a), int(b)): t for a, b, t in conn.execute(q) if t is not None}


def open_cluster_events(conn: Connection, cluster_id: int, code: str) -> list[int]:
    q = sa.select(events.c.id).where(events.c.state == "open", events.c.code == code,
                                     events.c.cluster_id == cluster_id)
    return [int(r[0]) for r in conn.execute(q)]


# ------------------------------------------------------------------ trace events of kills and cancellations


def jobs_with_event(conn: Connection, code: str, job_ids: list[int]) -> set[int]:
    """Those of the jobs that have an event of `code` (traces created once per job)."""
    if not job_ids:
        return set()
    q = sa.select(events.c.job_id).where(events.c.code == code, events.c.job_id.in_(job_ids)).distinct()
    return {int(r[0]) for r in conn.execute(q)}


def open_user_frags(conn: Connection, klass: str) -> list[tuple[int, int | None]]:
    """Open USER_FRAG events of a class: (event id, campaign id or job id), oldest first."""
    target = events.c.campaign_id if klass == "campaign" else events.c.job_id
    q = sa.select(events.c.id, target).where(events.c.state == "open", events.c.code == "USER_FRAG",
                                            events.c["class"] == klass).order_by(events.c.id)
    return [(int(i), int(t) if t is not None else None) for i, t in conn.execute(q)]


def close_job_events_of_campaign(conn: Connection, campaign_id: int) -> None:
    """A cancelled campaign's open job events are over (its USER_FRAGs are nikita's to close)."""
    conn.execute(events.update().where(events.c["class"] == "job", events.c.campaign_id == campaign_id,
                                       events.c.state == "open", events.c.code != "USER_FRAG")
                 .values(state="closed", date_closed=now()))


def close_job_events_of_job(conn: Connection, job_id: int, except_id: int) -> None:
    conn.execute(events.update().where(events.c.job_id == job_id, events.c["class"] == "job",
                                       events.c.state == "open", events.c.id != except_id)
                 .values(state="closed", date_closed=now()))


def last_opened(conn: Connection, klass: str, code: str) -> Any:
    """When the last event of (`klass`, `code`) was opened (None: never)."""
    return conn.execute(sa.select(sa.func.max(events.c.date_open)).where(
        events.c["class"] == klass, events.c.code == code)).scalar()


def delete_events(conn: Connection, klass: str, code: str) -> None:
    """Delete markers (log events nobody reads once a newer one exists)."""
    conn.execute(events.delete().where(events.c["class"] == klass, events.c.code == code))


def is_notified(conn: Connection, event_id: int) -> bool:
    return bool(conn.execute(sa.select(events.c.notified).where(events.c.id == event_id)).scalar())


def forget_job_events_of_campaign(conn: Connection, campaign_id: int) -> None:
    """A purge: the campaign's job events go, its other open events are closed."""
    conn.execute(events.delete().where(events.c.campaign_id == campaign_id, events.c["class"] == "job"))
    ids = [int(r[0]) for r in conn.execute(sa.select(events.c.id).where(
        events.c.campaign_id == campaign_id, events.c.state == "open"))]
    close_events(conn, ids)


# ------------------------------------------------------------------ notification


def unnotified(conn: Connection, limit: int) -> list[dict[str, Any]]:
    """The oldest events nobody was told about yet (judas's pass)."""
    q = sa.select(events).where(events.c.notified == sa.false()).order_by(events.c.id).limit(limit)
    return [dict(r) for r in conn.execute(q).mappings()]


def mark_notified(conn: Connection, ids: list[int]) -> None:
    for i in range(0, len(ids), 1000):
        conn.execute(events.update().where(events.c.id.in_(ids[i:i + 1000])).values(notified=True))


# ------------------------------------------------------------------ listings


HIDDEN_ALL_EVENT_CODES = ("REMOTE_WAITING_FRAG", "FRAG_RESUBMIT_BY_NIKITA")


def campaigns_with_events(conn: Connection, campaign_ids: Sequence[int]) -> set[int]:
    """Campaigns having open events, including open global events on their clusters.
    Open events are few (partial index): read them, not the campaigns' history."""
    ids = set(campaign_ids)
    if not ids:
        return set()
    with_events: set[int] = set()
    bad_clusters: set[int] = set()
    if len(ids) <= 200:  # a page or one campaign: indexed look-ups by campaign
        q = sa.select(events.c.campaign_id).where(events.c.campaign_id.in_(sorted(ids)),
                                                  events.c.state == "open").distinct()
        with_events = {int(r[0]) for r in conn.execute(q)}
        q = sa.select(events.c.cluster_id).where(events.c.state == "open", events.c.campaign_id.is_(None),
                                                 events.c.cluster_id.is_not(None)).distinct()
        bad_clusters = {int(r[0]) for r in conn.execute(q)}
    else:
        q = sa.select(events.c.campaign_id, events.c.cluster_id).where(
            events.c.state == "open", sa.or_(events.c.campaign_id.is_not(None), events.c.cluster_id.is_not(None))
        ).distinct()
        for cid, cl in conn.execute(q):
            if cid is not None:
                if int(cid) in ids:
                    with_events.add(int(cid))
            elif cl is not None:
                bad_clusters.add(int(cl))
    if bad_clusters:
        rest = [i for i in ids if i not in with_events]
        for cid, cls in campaign_cluster_ids(conn, rest).items():
            if bad_clusters.intersection(cls):
                with_events.add(cid)
    return with_events


def format_event(row: Any, names: dict[int, str]) -> dict[str, Any]:
    return {"id": int(row["id"]), "class": row["class"], "code": row["code"], "job_id": row["job_id"],
            "cluster_id": row["cluster_id"],
            "cluster_name": names.get(row["cluster_id"]) if row["cluster_id"] is not None else None,
            "campaign_id": row["campaign_id"],
            "date_open": iso(row["date_open"]), "message": row["message"], "parent": row["parent"],
            "state": row["state"]}


def campaign_events(conn: Connection, campaign_id: int, all_events: bool, limit: int,
                    offset: int) -> tuple[list[dict[str, Any]], int]:
    """Open events of the campaign and of its clusters; or (all) every event of the campaign."""
    if all_events:
        cond = sa.and_(events.c.campaign_id == campaign_id, events.c.code.not_in(HIDDEN_ALL_EVENT_CODES))
    else:
        cl = campaign_cluster_ids(conn, [campaign_id]).get(campaign_id, [])
        cond = sa.and_(events.c.state == "open", sa.or_(
            events.c.campaign_id == campaign_id,
            sa.and_(events.c.campaign_id.is_(None), events.c.cluster_id.in_(cl),
                    events.c["class"].not_in(["job", "campaign"]))))
    names = all_cluster_names(conn)
    rows = conn.execute(sa.select(events).where(cond).order_by(events.c.id).limit(limit).offset(offset)).mappings()
    items = [format_event(r, names) for r in rows]
    total = int(conn.execute(sa.select(sa.func.count()).select_from(events).where(cond)).scalar_one())
    return items, total


def global_events(conn: Connection, limit: int, offset: int) -> tuple[list[dict[str, Any]], int]:
    cond = sa.and_(events.c.state == "open", events.c["class"].not_in(["job", "campaign"]))
    names = all_cluster_names(conn)
    rows = conn.execute(sa.select(events).where(cond).order_by(events.c.id).limit(limit).offset(offset)).mappings()
    total = int(conn.execute(sa.select(sa.func.count()).select_from(events).where(cond)).scalar_one())
    return [format_event(r, names) for r in rows], total


def event_representation(conn: Connection, event_id: int) -> dict[str, Any] | None:
    r = conn.execute(sa.select(events).where(events.c.id == event_id)).mappings().first()
    if r is None:
        return None
    d = dict(r)
    for k in ("date_open", "date_closed", "date_update"):
        d[k] = iso(d[k])
    if d["cluster_id"] is not None:
        d["cluster_name"] = all_cluster_names(conn).get(d["cluster_id"])
    return d


def close_campaign_events(conn: Connection, campaign_id: int) -> list[int]:
    """Close the campaign's open events except BLACKLIST (lifted by the updator);
    returns the jobs that had one (for resubmission)."""
    cond = sa.and_(events.c.campaign_id == campaign_id, events.c.state == "open", events.c.code != "BLACKLIST")
    job_ids = sorted({int(r[0]) for r in conn.execute(sa.select(events.c.job_id).where(
        cond, events.c.job_id.is_not(None)))})
    conn.execute(events.update().where(cond).values(state="closed", date_closed=now(), date_update=now()))
    return job_ids
