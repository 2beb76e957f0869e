"""Colombo: the one place where decisions on events are taken (spec §9).

Runners, the API and the cluster adapters only *record* events. Colombo takes each open,
unchecked event and, in the same transaction that marks it checked, takes the decision
(resubmit, blacklist a cluster or a cluster for one campaign, close). On PostgreSQL the events
are locked with `SELECT … FOR UPDATE SKIP LOCKED`, so two colombos running at once never take
the same event, and a task can never be resubmitted twice for one event (SQLite has a single
writer). Resubmissions are capped per task (`max_resubmit`, TOO_MANY_RESUBMIT)."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable
from datetime import timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from cigri.config import Conf, get_conf
from cigri.db.engine import is_sqlite
from cigri.db.events import close_events, create_event, mark_checked
from cigri.db.jobs import RESUBMIT_END_PRIORITY, RESUBMIT_PRIORITY, resubmit_job
from cigri.db.schema import campaign_properties, campaigns, events, jobs, now

log = logging.getLogger("cigri.colombo")

#: cluster events whose decision is a blacklist (spec §9.1).
BLACKLIST_CODES = frozenset({
    "REQUEST_TOO_LARGE", "POST_TIMEOUT", "TIMEOUT", "CONNECTION_RESET", "SOCKET_ERROR", "CONNECTION_REFUSED",
    "HOST_UNREACHABLE", "SSL_ERROR", "GET_JOBS", "GET_JOB", "GET_MEDIA", "GET_STRESS_FACTOR", "FILL_JOBS_CACHE",
    "RUNNER_GET_JOB_CHUNK_ERROR", "CLUSTER_MANUALLY_DISABLED", "TOO_MANY_RESUBMIT"})
CHECK_ONLY_CODES = frozenset({"PERMISSION_DENIED", "FORBIDDEN", "JWT_TOKEN_NOT_FOUND"})
CLOSE_CODES = frozenset({"RUNNER_GET_JOB_SERVER_ERROR", "SUBMIT_JOB"})
AUTOFIX_CODES = ("TIMEOUT", "POST_TIMEOUT", "CONNECTION_REFUSED", "SOCKET_ERROR", "HOST_UNREACHABLE",
                 "CONNECTION_RESET", "GET_STRESS_FACTOR", "SSL_ERROR")
#: never decided here: markers (BLACKLIST: check_blacklists) and user requests (nikita).
SKIPPED_CODES = ("BLACKLIST", "USER_FRAG")
BATCH = 500


def _engine_tx(bind: Engine | Connection) -> Any:
    """A transaction on an engine, or the caller's connection as is."""
    if isinstance(bind, Engine):
        return bind.begin()
    from contextlib import nullcontext

    return nullcontext(bind)


def check_events(bind: Engine | Connection, event_ids: Iterable[int] | None = None,
                 conf: Conf | None = None) -> int:
    """Decide on every open unchecked event (or the given ones). Returns how many were decided.

    With an Engine, each batch is its own transaction (and events locked by another colombo
    are skipped); with a Connection, decisions join the caller's transaction."""
    conf = conf or get_conf()
    ids = list(event_ids) if event_ids is not None else None
    done = 0
    while True:
        with _engine_tx(bind) as conn:
            rows = _lock_unchecked(conn, ids)
            for ev in rows:
                _decide(conn, ev, conf)
            done += len(rows)
        if len(rows) < BATCH or not isinstance(bind, Engine):
            return done


def _lock_unchecked(conn: Connection, ids: list[int] | None) -> list[dict[str, Any]]:
    q = (sa.select(events).where(events.c.state == "open", events.c.checked == "no",
                                 events.c["class"].in_(["cluster", "job", "campaign"]),
                                 events.c.code.notin_(SKIPPED_CODES))
         .order_by(events.c.id).limit(BATCH))
    if ids is not None:
        if not ids:
            return []
        q = q.where(events.c.id.in_(ids))
    if not is_sqlite(conn):
        q = q.with_for_update(skip_locked=True)
    return [dict(r) for r in conn.execute(q).mappings()]


def _blacklist(conn: Connection, ev: dict[str, Any], cluster_id: int | None, campaign_id: int | None) -> int | None:
    if cluster_id is None:
        return None
    cls = "campaign" if campaign_id is not None else "cluster"
    bid = create_event(conn, cls, "BLACKLIST", cluster_id=cluster_id, campaign_id=campaign_id, parent=ev["id"],
                       message=f"Blacklisted because of event {ev['id']} ({ev['code']})")
    log.info("Blacklisting cluster %s%s because of event %s (%s)", cluster_id,
             f" for campaign {campaign_id}" if campaign_id else "", ev["id"], ev["code"])
    return bid


def _decide(conn: Connection, ev: dict[str, Any], conf: Conf) -> None:
    code, cls = ev["code"], ev["class"]
    mark_checked(conn, [ev["id"]])
    if code in ("RESUBMIT", "RESUBMIT_END", "STUCK_LAUNCHING_JOB"):
        _resubmit(conn, ev, RESUBMIT_END_PRIORITY if code == "RESUBMIT_END" else RESUBMIT_PRIORITY, conf)
        close_events(conn, [ev["id"]])
        return
    if cls == "cluster":
        if code in BLACKLIST_CODES:
            _blacklist(conn, ev, ev["cluster_id"], ev["campaign_id"])
        elif code in CLOSE_CODES:
            close_events(conn, [ev["id"]])
        elif code == "DELETE_JOB":
            if "This job was already killed" in (ev["message"] or ""):
                close_events(conn, [ev["id"]])
            else:
                _blacklist(conn, ev, ev["cluster_id"], ev["campaign_id"])
        # CHECK_ONLY_CODES and informational codes (UNDER_STRESS...): checked, no decision.
        return
    if cls == "job":
        if code in ("CIGRI_WALLTIME",):
            return
        cluster_id, campaign_id = ev["cluster_id"], ev["campaign_id"]
        if ev["job_id"] is not None and (cluster_id is None or campaign_id is None):
            row = conn.execute(sa.select(jobs.c.cluster_id, jobs.c.campaign_id)
                               .where(jobs.c.id == ev["job_id"])).first()
            if row is not None:
                cluster_id = cluster_id if cluster_id is not None else row.cluster_id
                campaign_id = campaign_id if campaign_id is not None else row.campaign_id
        if campaign_id is not None:
            _blacklist(conn, ev, cluster_id, campaign_id)
        return
    # class campaign: the updator's TOO_MANY_RESUBMIT (too many kills of a campaign on a
    # cluster) blacklists that pair. The per-task cap's TOO_MANY_RESUBMIT (with a job_id) is
    # created checked: it is for the user, the task simply stops.
    if code in BLACKLIST_CODES and ev["job_id"] is None:
        _blacklist(conn, ev, ev["cluster_id"], ev["campaign_id"])


def max_resubmit(conn: Connection, campaign_id: int, conf: Conf) -> int:
    """Per-campaign `max_resubmit` (property or JDL), else DEFAULT_MAX_RESUBMIT."""
    v = conn.execute(sa.select(campaign_properties.c.value).where(
        campaign_properties.c.campaign_id == campaign_id, campaign_properties.c.name == "max_resubmit")
        .limit(1)).scalar()
    if v is None:
        jdl = conn.execute(sa.select(campaigns.c.jdl).where(campaigns.c.id == campaign_id)).scalar()
        try:
            v = json.loads(jdl).get("max_resubmit") if jdl else None
        except (ValueError, AttributeError):
            v = None
    try:
        return int(v) if v is not None else int(conf.get("DEFAULT_MAX_RESUBMIT"))
    except (TypeError, ValueError):
        return int(conf.get("DEFAULT_MAX_RESUBMIT"))


def _resubmit(conn: Connection, ev: dict[str, Any], priority: int, conf: Conf) -> None:
    job_id = ev["job_id"]
    if job_id is None:
        return
    job = conn.execute(sa.select(jobs.c.campaign_id, jobs.c.param_id, jobs.c.cluster_id, jobs.c.tag)
                       .where(jobs.c.id == job_id)).first()
    if job is None or job.param_id == 0 or job.tag in ("prologue", "epilogue"):
        return
    attempts = int(conn.execute(sa.select(sa.func.count()).select_from(jobs).where(
        jobs.c.campaign_id == job.campaign_id, jobs.c.param_id == job.param_id)).scalar_one())
    cap = max_resubmit(conn, job.campaign_id, conf)
    if attempts - 1 >= cap:
        create_event(conn, "campaign", "TOO_MANY_RESUBMIT", job_id=job_id, campaign_id=job.campaign_id,
                     cluster_id=job.cluster_id, checked="yes",
                     message=f"Task {job.param_id} of job {job_id} was already resubmitted {attempts - 1} times "
                             f"(max_resubmit = {cap}): not resubmitted. Fix this event with resubmission to "
                             "run it again.")
        log.warning("Job %s: too many resubmissions (%s), not resubmitted", job_id, attempts - 1)
        return
    if resubmit_job(conn, job_id, priority):
        log.info("Resubmitted job %s (event %s %s)", job_id, ev["id"], ev["code"])
        conn.execute(events.update().where(events.c.id == ev["id"]).values(
            message=sa.func.coalesce(events.c.message, "") + f";Colombo resubmitted at {now():%Y-%m-%d %H:%M:%S}"))


def check_blacklists(conn: Connection) -> int:
    """Lift (close + check) every open BLACKLIST whose parent event is closed or gone."""
    parent = events.alias("p")
    closed_parent = sa.exists(sa.select(parent.c.id).where(parent.c.id == events.c.parent,
                                                           parent.c.state == "open"))
    res = conn.execute(events.update().where(events.c.code == "BLACKLIST", events.c.state == "open",
                                             ~closed_parent)
                       .values(state="closed", checked="yes", date_closed=now(), date_update=now()))
    return int(res.rowcount or 0)


def autofix_clusters(engine: Engine, conf: Conf | None = None) -> int:
    """Probe the API of clusters with auto-fixable open events older than AUTOFIX_DELAY; close
    the events of those that answer (their blacklists are then lifted). Returns events closed."""
    from cigri.clusters import get_adapter
    from cigri.db.clusters import get_cluster, user_mapping

    conf = conf or get_conf()
    limit = now() - timedelta(seconds=int(conf.get("AUTOFIX_DELAY")))
    with engine.begin() as conn:
        q = sa.select(events.c.id, events.c.cluster_id).where(
            events.c.state == "open", events.c["class"] == "cluster", events.c.code.in_(AUTOFIX_CODES),
            events.c.date_update <= limit, events.c.cluster_id.is_not(None))
        if not is_sqlite(conn):
            q = q.with_for_update(skip_locked=True)
        rows = conn.execute(q).all()
        mark_checked(conn, [r.id for r in rows])  # refreshes date_update: one probe per delay
    by_cluster: dict[int, list[int]] = {}
    for r in rows:
        by_cluster.setdefault(int(r.cluster_id), []).append(int(r.id))
    closed = 0
    for cluster_id, ids in by_cluster.items():
        try:
            with engine.connect() as conn:
                info = get_cluster(conn, cluster_id=cluster_id)
                mapping = user_mapping(conn, cluster_id)
            adapter = get_adapter(info, conf, mapping)
            ok = adapter.check_api()
            adapter.close()
        except Exception as e:  # noqa: BLE001 - a probe failure means "still broken"
            log.info("Autofix probe of cluster %s failed: %s", cluster_id, e)
            ok = False
        if ok:
            with engine.begin() as conn:
                closed += close_events(conn, ids, checked=True)
            log.info("Cluster %s answers again: closed events %s", cluster_id, ids)
    return closed


def pending(conn: Connection) -> bool:
    """Is there anything for colombo to decide? (cheap, used by the daemon's idle loop)"""
    q = sa.select(events.c.id).where(events.c.state == "open", events.c.checked == "no",
                                     events.c["class"].in_(["cluster", "job", "campaign"]),
                                     events.c.code.notin_(SKIPPED_CODES)).limit(1)
    return conn.execute(q).first() is not None
