"""Colombo: the one place where decisions on events are taken.

Runners, the API and the cluster adapters only *record* events. Colombo takes each open,
unchecked event and, in the same transaction that marks it checked, does what the event
code's row of `cigri.event_codes.EVENT_CODES` says (resubmit, blacklist a cluster or a
cluster for one campaign, close). On PostgreSQL the events are locked with `SELECT … FOR
UPDATE SKIP LOCKED`, so two colombos running at once never take the same event, and a task
can never be resubmitted twice for one event (SQLite has a single writer). Resubmissions
are capped per task (`max_resubmit`, TOO_MANY_RESUBMIT)."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from contextlib import AbstractContextManager, nullcontext
from datetime import timedelta
from typing import Any

from sqlalchemy.engine import Connection, Engine

from cigri.clock import now
from cigri.config import Conf, get_conf
from cigri.db import campaigns as campaignsdb
from cigri.db import events as eventsdb
from cigri.db import jobs as jobsdb
from cigri.event_codes import AUTOFIX_CODES, UNDECIDED_CODES, EventClass, event_code

log = logging.getLogger("cigri.colombo")

BATCH = 500


def _engine_tx(bind: Engine | Connection) -> AbstractContextManager[Connection]:
    """A transaction on an engine, or the caller's connection as is."""
    if isinstance(bind, Engine):
        return bind.begin()
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
            rows = eventsdb.lock_undecided(conn, UNDECIDED_CODES, ids, BATCH)
            for ev in rows:
                _decide(conn, ev, conf)
            done += len(rows)
        if len(rows) < BATCH or not isinstance(bind, Engine):
            return done


def _blacklist(conn: Connection, ev: dict[str, Any], cluster_id: int | None, campaign_id: int | None) -> int | None:
    if cluster_id is None:
        return None
    cls = "campaign" if campaign_id is not None else "cluster"
    bid = eventsdb.create_event(conn, cls, "BLACKLIST", cluster_id=cluster_id, campaign_id=campaign_id,
                                parent=ev["id"], message=f"Blacklisted because of event {ev['id']} ({ev['code']})")
    log.info("Blacklisting cluster %s%s because of event %s (%s)", cluster_id,
             f" for campaign {campaign_id}" if campaign_id else "", ev["id"], ev["code"])
    return bid


def _decide(conn: Connection, ev: dict[str, Any], conf: Conf) -> None:
    code, cls = ev["code"], ev["class"]
    rule = event_code(code, cls)
    eventsdb.mark_checked(conn, [ev["id"]])
    if rule.resubmit_priority is not None:
        _resubmit(conn, ev, rule.resubmit_priority, conf)
        eventsdb.close_events(conn, [ev["id"]])
        return
    if rule.closes or (rule.closed_if_message and rule.closed_if_message in (ev["message"] or "")):
        eventsdb.close_events(conn, [ev["id"]])
        return
    if not rule.blacklists:
        return  # recorded, checked: nothing to decide
    cluster_id, campaign_id = ev["cluster_id"], ev["campaign_id"]
    if cls == EventClass.JOB:
        # a job's failure blacklists its campaign on its cluster
        if ev["job_id"] is not None and (cluster_id is None or campaign_id is None):
            job = jobsdb.get_job(conn, int(ev["job_id"]))
            if job is not None:
                cluster_id = cluster_id if cluster_id is not None else job["cluster_id"]
                campaign_id = campaign_id if campaign_id is not None else job["campaign_id"]
        if campaign_id is not None:
            _blacklist(conn, ev, cluster_id, campaign_id)
    elif cls == EventClass.CAMPAIGN:
        # the updator's TOO_MANY_RESUBMIT blacklists the pair; the per-task cap's (with a
        # job) is created checked: it is for the user, the task simply stops
        if ev["job_id"] is None:
            _blacklist(conn, ev, cluster_id, campaign_id)
    else:
        _blacklist(conn, ev, cluster_id, campaign_id)


def max_resubmit(conn: Connection, campaign_id: int, conf: Conf) -> int:
    """Per-campaign `max_resubmit` (property or JDL), else DEFAULT_MAX_RESUBMIT."""
    v = campaignsdb.max_resubmit_setting(conn, campaign_id)
    try:
        return int(v) if v is not None else int(conf.get("DEFAULT_MAX_RESUBMIT"))
    except (TypeError, ValueError):
        return int(conf.get("DEFAULT_MAX_RESUBMIT"))


def _resubmit(conn: Connection, ev: dict[str, Any], priority: int, conf: Conf) -> None:
    job_id = ev["job_id"]
    if job_id is None:
        return
    job = jobsdb.get_job(conn, int(job_id))
    if job is None or job["param_id"] == 0 or job["tag"] in ("prologue", "epilogue"):
        return
    attempts = jobsdb.attempts_of_task(conn, job["campaign_id"], job["param_id"])
    cap = max_resubmit(conn, job["campaign_id"], conf)
    if attempts - 1 >= cap:
        eventsdb.create_event(conn, "campaign", "TOO_MANY_RESUBMIT", job_id=job_id, campaign_id=job["campaign_id"],
                              cluster_id=job["cluster_id"], checked="yes",
                              message=f"Task {job['param_id']} of job {job_id} was already resubmitted "
                                      f"{attempts - 1} times (max_resubmit = {cap}): not resubmitted. Fix this "
                                      "event with resubmission to run it again.")
        log.warning("Job %s: too many resubmissions (%s), not resubmitted", job_id, attempts - 1)
        return
    if jobsdb.resubmit_job(conn, job_id, priority):
        log.info("Resubmitted job %s (event %s %s)", job_id, ev["id"], ev["code"])
        eventsdb.append_message(conn, ev["id"], f";Colombo resubmitted at {now():%Y-%m-%d %H:%M:%S}")


def check_blacklists(conn: Connection) -> int:
    """Lift (close + check) every open BLACKLIST whose parent event is closed or gone."""
    return eventsdb.lift_blacklists(conn)


def autofix_clusters(engine: Engine, conf: Conf | None = None) -> int:
    """Probe the API of clusters with auto-fixable open events older than AUTOFIX_DELAY; close
    the events of those that answer (their blacklists are then lifted). Returns events closed."""
    from cigri.clusters import get_adapter
    from cigri.db.clusters import get_cluster, user_mapping

    conf = conf or get_conf()
    limit = now() - timedelta(seconds=int(conf.get("AUTOFIX_DELAY")))
    with engine.begin() as conn:
        by_cluster = eventsdb.take_autofixable(conn, AUTOFIX_CODES, limit)
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
                closed += eventsdb.close_events(conn, ids, checked=True)
            log.info("Cluster %s answers again: closed events %s", cluster_id, ids)
    return closed


def pending(conn: Connection) -> bool:
    """Is there anything for colombo to decide? (cheap, used by the daemon's idle loop)"""
    return eventsdb.has_undecided(conn, UNDECIDED_CODES)
