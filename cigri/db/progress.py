"""What a campaign has done and what it still has to do, counted over its jobs, tasks and
events: the API's summaries and statistics (for big campaigns refreshed at most every few
seconds, whoever asks) and local mode's live display. Every query is shaped so that its cost
follows the size of the answer (one page, one campaign), not the size of the tables."""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from cigri.db.campaigns import campaign_cluster_ids
from cigri.db.clusters import all_cluster_names
from cigri.db.engine import chunked
from cigri.db.events import campaigns_with_events
from cigri.db.schema import bag_of_tasks, campaign_properties, campaigns, events, jobs, jobs_to_launch, parameters
from cigri.states import ACTIVE_JOB_STATES, UNFINISHED_JOB_STATES


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
        for chunk in chunked(small, 5000):
            found |= _count_finished(conn, chunk)
    for cid in small:
        out[cid] = found.get(cid, 0)
    return out


def _count_finished(conn: Connection, ids: list[int]) -> dict[int, int]:
    q = (sa.select(jobs.c.campaign_id, sa.func.count())
         .where(jobs.c.campaign_id.in_(ids), jobs.c.state == "terminated", jobs.c.param_id > 0)
         .group_by(jobs.c.campaign_id))
    return {int(cid): int(n) for cid, n in conn.execute(q)}


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


# ------------------------------------------------------------------ local mode's display
ACTIVE = UNFINISHED_JOB_STATES
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


def overview(conn: Connection, campaign_id: int) -> dict[str, Any]:
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
