"""Read (and a few small write) queries behind the REST API: campaign representation,
task listings, statistics, events, jobs, clusters, grid usage and tokens.

Every query uses bound parameters and is shaped so that its cost
follows the size of the answer (one page, one campaign), not the size of the tables."""

from __future__ import annotations

import json
import math
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from cigri.db.clusters import all_cluster_names, enabled_cluster_names  # noqa: F401 - part of this module's API
from cigri.db.jobs import change_state
from cigri.db.schema import (
    bag_of_tasks,
    campaign_properties,
    campaigns,
    clusters,
    events,
    grid_usage,
    jobs,
    jobs_to_launch,
    now,
    parameters,
    users_mapping,
)
from cigri.errors import NotFound
from cigri.states import ACTIVE_JOB_STATES, LIVE_CAMPAIGN_STATES, JobState, sources_of

LISTED_CAMPAIGN_STATES = LIVE_CAMPAIGN_STATES
HIDDEN_ALL_EVENT_CODES = ("REMOTE_WAITING_FRAG", "FRAG_RESUBMIT_BY_NIKITA")


# ------------------------------------------------------------------ small helpers
def epoch(value: datetime | None) -> int | None:
    return int(value.timestamp()) if value is not None else None


def iso(value: datetime | None) -> str | None:
    """ISO-8601 with offset, in the server's local time zone (CiGri3's format)."""
    return value.astimezone().isoformat(timespec="seconds") if value is not None else None


class TTLCache:
    """Aggregates over a million jobs are recomputed at most every `ttl` seconds per
    campaign (and at most 10% of the time: an entry that took 3 s to compute stays fresh
    30 s): many clients polling `gridstat -c` then cost one scan, not one each."""

    def __init__(self, ttl: float = 2.0) -> None:
        self.ttl = ttl
        self._data: dict[Any, tuple[float, Any, float]] = {}  # key -> (stored at, value, fresh for)
        self._locks: dict[Any, threading.Lock] = {}
        self._lock = threading.Lock()

    def put(self, key: Any, value: Any, cost: float = 0.0) -> None:
        with self._lock:
            if len(self._data) > 50000:
                self._data.clear()
            self._data[key] = (time.monotonic(), value, max(self.ttl, 10 * cost))

    def clear(self) -> None:
        with self._lock:
            self._data.clear()

    def _timed(self, key: Any, fn: Callable[[Connection], Any], engine: sa.Engine) -> Any:
        t = time.monotonic()
        with engine.connect() as conn:
            value = fn(conn)
        self.put(key, value, time.monotonic() - t)
        return value

    def compute(self, key: Any, fn: Callable[[Connection], Any], engine: sa.Engine,
                max_stale: float = 300.0) -> Any:
        """The cached value; when it is no longer fresh (but younger than max_stale) it is
        returned at once and refreshed by one background thread, so pollers never wait for
        a scan of a million rows; only the very first caller computes it synchronously."""
        with self._lock:
            hit = self._data.get(key)
            klock = self._locks.setdefault(key, threading.Lock())
        if hit is not None:
            age = time.monotonic() - hit[0]
            if age < hit[2]:
                return hit[1]
            if age < max_stale:
                if klock.acquire(blocking=False):
                    def refresh() -> None:
                        try:
                            self._timed(key, fn, engine)
                        except Exception:  # noqa: BLE001 - keep serving the previous value
                            pass
                        finally:
                            klock.release()

                    threading.Thread(target=refresh, daemon=True).start()
                return hit[1]
        with klock:
            with self._lock:
                hit = self._data.get(key)
            if hit is not None and time.monotonic() - hit[0] < hit[2]:
                return hit[1]
            return self._timed(key, fn, engine)


_cache = TTLCache(ttl=5.0)
#: campaigns with fewer jobs than this are always counted exactly and immediately.
CACHE_MIN_JOBS = 10000


def clear_cache() -> None:
    _cache.clear()


# ------------------------------------------------------------------ campaigns
def get_campaign(conn: Connection, campaign_id: int) -> dict[str, Any] | None:
    row = conn.execute(sa.select(campaigns).where(campaigns.c.id == campaign_id)).mappings().first()
    return dict(row) if row else None


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


def finished_counts(conn: Connection, camps: Sequence[dict[str, Any]],
                    states: Sequence[str] | None = None) -> dict[int, int]:
    """campaign id -> terminated jobs with param_id > 0. `states`: all the
    campaigns in these states are being counted (lets one join replace id lists).
    Campaigns of CACHE_MIN_JOBS jobs or more are counted at most every TTL seconds."""
    out: dict[int, int] = {}
    small = [int(c["id"]) for c in camps if (c.get("nb_jobs") or 0) < CACHE_MIN_JOBS]
    for c in camps:
        if (c.get("nb_jobs") or 0) >= CACHE_MIN_JOBS:
            cid = int(c["id"])
            def count(cn: Connection, cid: int = cid) -> int:
                return _count_finished(cn, [cid]).get(cid, 0)

            out[cid] = _cache.compute(("finished", cid), count, conn.engine)
    if len(small) > 500 and states:
        # many campaigns (the public list): one join instead of huge IN lists
        q = (sa.select(jobs.c.campaign_id, sa.func.count())
             .select_from(jobs.join(campaigns, campaigns.c.id == jobs.c.campaign_id))
             .where(campaigns.c.state.in_(list(states)), campaigns.c.nb_jobs < CACHE_MIN_JOBS,
                    jobs.c.state == "terminated", jobs.c.param_id > 0)
             .group_by(jobs.c.campaign_id))
        found = {int(cid): int(n) for cid, n in conn.execute(q)}
    else:
        found = {}
        for chunk in _chunks(small, 5000):
            found |= _count_finished(conn, chunk)
    for cid in small:
        out[cid] = found.get(cid, 0)
    return out


def _count_finished(conn: Connection, ids: list[int]) -> dict[int, int]:
    q = (sa.select(jobs.c.campaign_id, sa.func.count())
         .where(jobs.c.campaign_id.in_(ids), jobs.c.state == "terminated", jobs.c.param_id > 0)
         .group_by(jobs.c.campaign_id))
    return {int(cid): int(n) for cid, n in conn.execute(q)}


def _chunks(items: Sequence[int], size: int) -> Iterable[list[int]]:
    for i in range(0, len(items), size):
        yield list(items[i:i + size])


def campaign_cluster_ids(conn: Connection, campaign_ids: Sequence[int]) -> dict[int, list[int]]:
    """campaign id -> the clusters it runs on (ordered as in the JDL, i.e. property ids)."""
    out: dict[int, list[int]] = {}
    for chunk in _chunks(list(campaign_ids), 5000):
        q = (sa.select(campaign_properties.c.campaign_id, campaign_properties.c.cluster_id,
                       sa.func.min(campaign_properties.c.id).label("first"))
             .where(campaign_properties.c.campaign_id.in_(chunk), campaign_properties.c.cluster_id.is_not(None))
             .group_by(campaign_properties.c.campaign_id, campaign_properties.c.cluster_id)
             .order_by(sa.text("first")))
        for cid, cl, _ in conn.execute(q):
            out.setdefault(int(cid), []).append(int(cl))
    return out


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




def enabled_cluster_batches(conn: Connection) -> dict[int, str]:
    """id -> batch type of the enabled clusters."""
    q = sa.select(clusters.c.id, clusters.c.batch).where(clusters.c.enabled.is_(True))
    return {int(i): str(b) for i, b in conn.execute(q)}


def campaign_clusters_detail(conn: Connection, campaign_id: int) -> dict[str, dict[str, Any]]:
    """The per-cluster block of the single-campaign representation."""
    cl_ids = campaign_cluster_ids(conn, [campaign_id]).get(campaign_id, [])
    if not cl_ids:
        return {}
    names = all_cluster_names(conn)
    q = (sa.select(jobs.c.cluster_id, sa.func.count())
         .where(jobs.c.campaign_id == campaign_id, jobs.c.state.in_(ACTIVE_JOB_STATES))
         .group_by(jobs.c.cluster_id))
    active = {int(c): int(n) for c, n in conn.execute(q) if c is not None}
    q = (sa.select(jobs_to_launch.c.cluster_id, sa.func.count())
         .select_from(jobs_to_launch.join(bag_of_tasks, bag_of_tasks.c.id == jobs_to_launch.c.task_id))
         .where(bag_of_tasks.c.campaign_id == campaign_id)
         .group_by(jobs_to_launch.c.cluster_id))
    queued = {int(c): int(n) for c, n in conn.execute(q)}
    q = (sa.select(campaign_properties.c.cluster_id, campaign_properties.c.name)
         .where(campaign_properties.c.campaign_id == campaign_id,
                campaign_properties.c.name.in_(["prologue", "epilogue"])))
    needs = {(int(c), n) for c, n in conn.execute(q) if c is not None}
    done: set[tuple[int, str]] = set()
    if needs:  # prologue/epilogue jobs are the campaign's param_id 0 jobs (few: use that index)
        q = (sa.select(jobs.c.cluster_id, jobs.c.tag).where(
            jobs.c.param_id == 0, jobs.c.campaign_id == campaign_id, jobs.c.state == "terminated",
            jobs.c.tag.in_(["prologue", "epilogue"])).distinct())
        done = {(int(c), t) for c, t in conn.execute(q) if c is not None}
    out: dict[str, dict[str, Any]] = {}
    for cl in cl_ids:
        out[str(cl)] = {
            "cluster_name": names.get(cl),
            "active_jobs": active.get(cl, 0),
            "queued_jobs": queued.get(cl, 0),
            "prologue_ok": (cl, "prologue") not in needs or (cl, "prologue") in done,
            "epilogue_ok": (cl, "epilogue") not in needs or (cl, "epilogue") in done,
        }
    return out


def campaign_summary(conn: Connection, campaign: dict[str, Any],
                     with_clusters: bool) -> tuple[int, bool, dict[str, Any] | None]:
    """finished_jobs, has_events and (optionally) the per-cluster block of one campaign;
    for campaigns of CACHE_MIN_JOBS jobs or more, refreshed at most every TTL seconds."""
    cid = int(campaign["id"])

    def compute(cn: Connection) -> tuple[int, bool, dict[str, Any] | None]:
        fin = _count_finished(cn, [cid]).get(cid, 0)
        ev = cid in campaigns_with_events(cn, [cid])
        return fin, ev, campaign_clusters_detail(cn, cid) if with_clusters else None

    if (campaign.get("nb_jobs") or 0) >= CACHE_MIN_JOBS:
        return _cache.compute(("summary", cid, with_clusters), compute, conn.engine)  # type: ignore[no-any-return]
    return compute(conn)


def stored_jdl(campaign: dict[str, Any]) -> Any:
    """The campaign's stored JDL, parsed (as text if it is not JSON: a CiGri3-era row)."""
    try:
        return json.loads(campaign["jdl"] or "{}")
    except ValueError:
        return campaign["jdl"]


# ------------------------------------------------------------------ statistics
def campaign_stats(conn: Connection, campaign: dict[str, Any], window: int = 3600) -> dict[str, Any]:
    """GET /campaigns/:id/stats; for big campaigns computed at most every TTL seconds."""
    if (campaign.get("nb_jobs") or 0) >= CACHE_MIN_JOBS:
        return dict(_cache.compute(("stats", int(campaign["id"])), lambda cn: _campaign_stats(cn, campaign, window),
                                   conn.engine))
    return _campaign_stats(conn, campaign, window)


def _campaign_stats(conn: Connection, campaign: dict[str, Any], window: int) -> dict[str, Any]:
    cid = int(campaign["id"])
    term = sa.and_(jobs.c.campaign_id == cid, jobs.c.state == "terminated")
    dur = sa.func.extract("epoch", jobs.c.stop_time - jobs.c.start_time) if conn.dialect.name != "sqlite" \
        else (sa.func.julianday(jobs.c.stop_time) - sa.func.julianday(jobs.c.start_time)) * 86400.0
    timed = sa.and_(jobs.c.start_time.is_not(None), jobs.c.stop_time.is_not(None))
    # one scan of the campaign's terminated jobs for every aggregate
    row = conn.execute(sa.select(sa.func.count().filter(timed), sa.func.avg(dur).filter(timed),
                                 sa.func.avg(dur * dur).filter(timed), sa.func.max(jobs.c.start_time),
                                 sa.func.count(), sa.func.count().filter(jobs.c.param_id > 0))
                       .where(term)).one()
    n_dur, avg, avg_sq, last, n_term, finished = row
    n_term, finished = int(n_term), int(finished)
    avg_f = float(avg) if avg is not None else None
    stddev = None
    if avg_f is not None and n_dur:
        stddev = round(math.sqrt(max(float(avg_sq) - avg_f * avg_f, 0.0)), 3)
        avg_f = round(avg_f, 3)
    throughput = 0.0
    if last is not None:
        since = last - _td(window)
        first, n = conn.execute(sa.select(sa.func.min(jobs.c.start_time), sa.func.count())
                                .where(term, jobs.c.start_time > since)).one()
        if first is not None and last != first:
            throughput = n / (last - first).total_seconds()
    throughput = throughput or 1e-16
    ev_job = sa.and_(events.c.campaign_id == cid, events.c.job_id.is_not(None))
    failures = int(conn.execute(sa.select(sa.func.count()).where(
        ev_job, events.c.code != "REMOTE_WAITING_FRAG")).scalar_one())
    resubmits = int(conn.execute(sa.select(sa.func.count()).where(ev_job, events.c.code == "RESUBMIT")).scalar_one())
    remaining = ((campaign.get("nb_jobs") or 0) - finished) / throughput
    out = {
        "average_jobs_duration": avg_f,
        "stddev_jobs_duration": stddev,
        "jobs_throughput": throughput,
        "remaining_time": remaining,
        "failures_rate": failures / (failures + n_term) if failures + n_term else 0.0,
        "resubmit_rate": resubmits / (resubmits + n_term) if resubmits + n_term else 0.0,
    }
    return out


def _td(seconds: int) -> Any:
    from datetime import timedelta
    return timedelta(seconds=seconds)


# ------------------------------------------------------------------ tasks of a campaign
def campaign_tasks(conn: Connection, campaign_id: int, limit: int, offset: int,
                   state: str | None = None) -> tuple[list[dict[str, Any]], int]:
    """One page of the task listing.

    Without `state`, pages are over parameters (each attempt of a task is one item);
    with `state` (a job state, `queued` or `pending`), over the matching rows."""
    names = all_cluster_names(conn)
    if state is None:
        q = (sa.select(parameters.c.id, parameters.c.name, parameters.c.param)
             .where(parameters.c.campaign_id == campaign_id).order_by(parameters.c.id).limit(limit).offset(offset))
        params = list(conn.execute(q))
        return _expand_tasks(conn, params, names), -1
    if state == "queued":
        base = (sa.select(parameters.c.id, parameters.c.name, parameters.c.param)
                .select_from(parameters.join(bag_of_tasks, bag_of_tasks.c.param_id == parameters.c.id)
                             .join(jobs_to_launch, jobs_to_launch.c.task_id == bag_of_tasks.c.id))
                .where(parameters.c.campaign_id == campaign_id).distinct())
    elif state == "pending":
        queued = (sa.select(bag_of_tasks.c.param_id)
                  .select_from(bag_of_tasks.join(jobs_to_launch, jobs_to_launch.c.task_id == bag_of_tasks.c.id))
                  .where(bag_of_tasks.c.campaign_id == campaign_id))
        has_job = sa.select(jobs.c.id).where(jobs.c.param_id == parameters.c.id).exists()
        base = (sa.select(parameters.c.id, parameters.c.name, parameters.c.param)
                .where(parameters.c.campaign_id == campaign_id, ~has_job, parameters.c.id.not_in(queued)))
    else:
        q = (sa.select(jobs.c.id, jobs.c.param_id, jobs.c.cluster_id, jobs.c.remote_id, jobs.c.state,
                       parameters.c.name, parameters.c.param)
             .select_from(jobs.join(parameters, parameters.c.id == jobs.c.param_id))
             .where(jobs.c.campaign_id == campaign_id, jobs.c.state == state, jobs.c.param_id > 0))
        total = int(conn.execute(sa.select(sa.func.count()).select_from(q.subquery())).scalar_one())
        rows = conn.execute(q.order_by(jobs.c.param_id, jobs.c.id).limit(limit).offset(offset))
        items = [{"id": int(r.param_id), "name": r.name, "parameters": r.param,
                  "cluster": names.get(r.cluster_id) if r.cluster_id is not None else None,
                  "cigri_job_id": int(r.id), "remote_id": r.remote_id, "state": r.state} for r in rows]
        return items, total
    total = int(conn.execute(sa.select(sa.func.count()).select_from(base.subquery())).scalar_one())
    params = list(conn.execute(base.order_by(parameters.c.id).limit(limit).offset(offset)))
    items = _expand_tasks(conn, params, names)
    items = [i for i in items if i["state"] == state]
    return items, total


def _expand_tasks(conn: Connection, params: Sequence[Any], names: dict[int, str]) -> list[dict[str, Any]]:
    ids = [int(p.id) for p in params]
    if not ids:
        return []
    by_param: dict[int, list[Any]] = {}
    q = (sa.select(jobs.c.id, jobs.c.param_id, jobs.c.cluster_id, jobs.c.remote_id, jobs.c.state)
         .where(jobs.c.param_id.in_(ids)).order_by(jobs.c.id))
    for r in conn.execute(q):
        by_param.setdefault(int(r.param_id), []).append(r)
    q = (sa.select(bag_of_tasks.c.param_id, jobs_to_launch.c.cluster_id)
         .select_from(bag_of_tasks.join(jobs_to_launch, jobs_to_launch.c.task_id == bag_of_tasks.c.id))
         .where(bag_of_tasks.c.param_id.in_(ids)))
    queued = {int(r[0]): int(r[1]) for r in conn.execute(q)}
    items: list[dict[str, Any]] = []
    for p in params:
        pid = int(p.id)
        base = {"id": pid, "name": p.name, "parameters": p.param}
        attempts = by_param.get(pid)
        if attempts:
            for j in attempts:
                items.append(base | {"cluster": names.get(j.cluster_id) if j.cluster_id is not None else None,
                                     "cigri_job_id": int(j.id), "remote_id": j.remote_id, "state": j.state})
        elif pid in queued:
            items.append(base | {"cluster": names.get(queued[pid]), "cigri_job_id": None, "remote_id": None,
                                 "state": "queued"})
        else:
            items.append(base | {"cluster": None, "cigri_job_id": None, "remote_id": None, "state": "pending"})
    return items


def campaign_task(conn: Connection, campaign_id: int, task_id: int) -> dict[str, Any]:
    """One task and all its executions."""
    p = conn.execute(sa.select(parameters).where(parameters.c.id == task_id,
                                                 parameters.c.campaign_id == campaign_id)).mappings().first()
    if p is None:
        raise NotFound(f"Task {task_id} not found in campaign {campaign_id}")
    names = all_cluster_names(conn)
    execs = [{"id": int(j.id), "cluster_id": j.cluster_id, "cluster_name": names.get(j.cluster_id),
              "state": j.state, "return_code": j.return_code, "remote_id": j.remote_id}
             for j in conn.execute(sa.select(jobs).where(jobs.c.param_id == task_id).order_by(jobs.c.id))]
    if execs:
        state = execs[-1]["state"]
    else:
        queued = conn.execute(
            sa.select(jobs_to_launch.c.id)
            .select_from(jobs_to_launch.join(bag_of_tasks, bag_of_tasks.c.id == jobs_to_launch.c.task_id))
            .where(bag_of_tasks.c.param_id == task_id).limit(1)).first()
        state = "queued" if queued else "waiting"
    return {"id": int(p["id"]), "name": p["name"], "parameters": p["param"], "state": state, "execution": execs}


# ------------------------------------------------------------------ jobs
def job_representation(conn: Connection, job_id: int) -> dict[str, Any] | None:
    q = (sa.select(jobs, campaigns.c.grid_user, parameters.c.param, clusters.c.name.label("cluster_name"))
         .select_from(jobs.outerjoin(campaigns, campaigns.c.id == jobs.c.campaign_id)
                      .outerjoin(parameters, parameters.c.id == jobs.c.param_id)
                      .outerjoin(clusters, clusters.c.id == jobs.c.cluster_id))
         .where(jobs.c.id == job_id))
    r = conn.execute(q).mappings().first()
    return _job_dict(r) if r else None


def _job_dict(r: Any) -> dict[str, Any]:
    d = dict(r)
    for k in ("submission_time", "start_time", "stop_time"):
        d[k] = epoch(d[k])
    try:
        d["runner_options"] = json.loads(d["runner_options"]) if d.get("runner_options") else {}
    except ValueError:
        pass
    return d


def finished_jobs(conn: Connection, campaign_id: int) -> list[dict[str, Any]]:
    q = (sa.select(jobs, campaigns.c.grid_user, parameters.c.param, clusters.c.name.label("cluster_name"))
         .select_from(jobs.outerjoin(campaigns, campaigns.c.id == jobs.c.campaign_id)
                      .outerjoin(parameters, parameters.c.id == jobs.c.param_id)
                      .outerjoin(clusters, clusters.c.id == jobs.c.cluster_id))
         .where(jobs.c.campaign_id == campaign_id, jobs.c.state.in_(["terminated", "event"]))
         .order_by(jobs.c.id))
    return [_job_dict(r) for r in conn.execute(q).mappings()]


def set_job_event_state(conn: Connection, job_id: int) -> int | None:
    """Put a job in the `event` state (admin MANUAL_EVENT); returns its campaign id."""
    cid = conn.execute(sa.select(jobs.c.campaign_id).where(jobs.c.id == job_id)).scalar()
    if cid is None:
        raise NotFound(f"Job {job_id} not found")
    change_state(conn, job_id, sources_of(JobState.EVENT), JobState.EVENT)
    return int(cid)


# ------------------------------------------------------------------ events
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


# ------------------------------------------------------------------ clusters
def cluster_representation(conn: Connection, cluster_id: int, threshold: float) -> dict[str, Any] | None:
    r = conn.execute(sa.select(clusters).where(clusters.c.id == cluster_id)).mappings().first()
    if r is None:
        return None
    from cigri.clusters.base import ClusterInfo
    from cigri.db.events import cluster_blacklisted

    info = ClusterInfo.from_row(dict(r))
    d = {k: v for k, v in dict(r).items() if k not in ("api_username", "api_password", "jwt_key_file")}
    d["api_auth_header"] = info.api_auth_header
    sf = float(d.get("stress_factor") or 0.0)
    d["blacklisted"] = cluster_blacklisted(conn, cluster_id)
    d["under_stress"] = sf >= threshold
    d["stress_factor"] = f"{sf}/{threshold}"
    return d


# ------------------------------------------------------------------ grid usage
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


# ------------------------------------------------------------------ tokens (users_mapping on jwt clusters)
def cluster_auth_type(conn: Connection, cluster_id: int) -> str | None:
    return conn.execute(sa.select(clusters.c.api_auth_type).where(clusters.c.id == cluster_id)).scalar()


def list_tokens(conn: Connection, grid_login: str) -> list[dict[str, Any]]:
    q = (sa.select(users_mapping.c.cluster_id, users_mapping.c.cluster_login)
         .select_from(users_mapping.join(clusters, clusters.c.id == users_mapping.c.cluster_id))
         .where(users_mapping.c.grid_login == grid_login, clusters.c.api_auth_type == "jwt")
         .order_by(users_mapping.c.cluster_id))
    return [{"cluster_id": int(c), "cluster_login": login} for c, login in conn.execute(q)]


def upsert_token(conn: Connection, grid_login: str, cluster_id: int, token: str) -> None:
    value = f"Bearer {token}"
    res = conn.execute(users_mapping.update().where(users_mapping.c.grid_login == grid_login,
                                                    users_mapping.c.cluster_id == cluster_id)
                       .values(cluster_login=value))
    if not res.rowcount:
        conn.execute(users_mapping.insert().values(grid_login=grid_login, cluster_id=cluster_id, cluster_login=value))


def delete_token(conn: Connection, grid_login: str, cluster_id: int) -> int:
    res = conn.execute(users_mapping.delete().where(users_mapping.c.grid_login == grid_login,
                                                    users_mapping.c.cluster_id == cluster_id))
    return int(res.rowcount or 0)
