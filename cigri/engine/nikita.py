"""Nikita (spec §10.1): kills. Cancellations of campaigns and single jobs, expired
walltimes, jobs waiting too long on a cluster, queue entries waiting too long, and the
periodic cleaning of the affinity table.

Fixes of CiGri3 (§15.2 #5, #6, #28): every job of a cancelled campaign is killed (batch
jobs de-duplicated by (cluster, remote id), not "one kill per cluster"); `submitted` jobs
are handled; a kill refused because the cluster is blacklisted is a failure (retried),
not a success; the walltime check filters blacklists per cluster and uses real interval
arithmetic (no 24 h wrap); the hourly cleanup marker is never mailed to admins and old
markers are deleted. Kills go through the adapter's `delete_job` as the campaign owner.
Trace events (CIGRI_WALLTIME, REMOTE_WAITING_FRAG, NIKITA_KILL_PROBLEM) are created once
per job, not every cycle."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from sqlalchemy.engine import Connection, Engine

from cigri.clock import now
from cigri.clusters import get_adapter
from cigri.clusters.base import ClusterAdapter, ClusterAPIError, ClusterAPINotFound
from cigri.config import Conf, get_conf
from cigri.db import events as eventsdb
from cigri.db import jobs as jobsdb
from cigri.db import queue as queuedb
from cigri.db import scheduling as sdb
from cigri.db.clusters import get_cluster, user_mapping
from cigri.db.engine import transaction
from cigri.db.notify import COLOMBO, JUDAS, METASCHEDULER, notify
from cigri.states import FINAL_JOB_STATES, UNFINISHED_JOB_STATES, JobState

log = logging.getLogger("cigri.nikita")


AdapterFactory = Callable[[Any, Conf, dict[str, str]], ClusterAdapter]


def parse_walltime(v: str | None) -> int | None:
    """'HH:MM:SS' / 'HH:MM' / 'SS' -> seconds (hours may exceed 24)."""
    if not v:
        return None
    try:
        parts = [int(x) for x in str(v).strip().split(":")]
    except ValueError:
        return None
    while len(parts) < 3:  # OAR: "2" = 2 hours, "2:30" = 2 h 30 min
        parts.append(0)
    h, m, s = parts[:3]
    return h * 3600 + m * 60 + s


@dataclass
class NikitaResult:
    frag_closed: list[int] = field(default_factory=list)  # USER_FRAG events closed
    killed: list[int] = field(default_factory=list)  # CiGri job ids killed (or stopped)
    problems: list[int] = field(default_factory=list)
    walltime_killed: list[int] = field(default_factory=list)
    waiting_killed: list[int] = field(default_factory=list)
    unqueued: int = 0
    affinity_cleaned: bool = False


class Killer:
    """Kills remote jobs through the adapters, one adapter per cluster, de-duplicating
    (cluster, remote id) within one pass (a batch job carries several CiGri jobs)."""

    def __init__(self, engine: Engine, conf: Conf, factory: AdapterFactory | None = None):
        self.engine = engine
        self.conf = conf
        self.factory = factory or (lambda info, conf, mapping: get_adapter(info, conf, mapping))
        self.adapters: dict[int, ClusterAdapter] = {}
        self.killed: set[tuple[int, int]] = set()
        with engine.connect() as conn:
            self.blacklisted = eventsdb.globally_blacklisted_clusters(conn)

    def _adapter(self, cluster_id: int) -> ClusterAdapter:
        ad = self.adapters.get(cluster_id)
        if ad is None:
            with self.engine.connect() as conn:
                info = get_cluster(conn, cluster_id=cluster_id)
                mapping = user_mapping(conn, cluster_id)
            ad = self.adapters[cluster_id] = self.factory(info, self.conf, mapping)
        return ad

    def kill(self, cluster_id: int, remote_id: int, user: str) -> bool:
        if (cluster_id, remote_id) in self.killed:
            return True
        if cluster_id in self.blacklisted:
            log.info("Not killing job %s on blacklisted cluster %s (will retry)", remote_id, cluster_id)
            return False
        try:
            self._adapter(cluster_id).delete_job(remote_id, user)
        except ClusterAPINotFound:
            pass  # already gone
        except ClusterAPIError as e:
            from cigri.engine.updator import record_cluster_error

            if e.code is None:
                e.code = "DELETE_JOB"
            record_cluster_error(self.engine, cluster_id, e, f"Kill of job {remote_id}", "DELETE_JOB")
            return False
        except Exception as e:  # noqa: BLE001 - a broken cluster must not stop nikita
            log.error("Could not kill job %s on cluster %s: %s", remote_id, cluster_id, e)
            return False
        self.killed.add((cluster_id, remote_id))
        return True

    def close(self) -> None:
        for ad in self.adapters.values():
            try:
                ad.close()
            except Exception:  # noqa: BLE001, S110
                pass


# ---------------------------------------------------------------- helpers


def _stop(engine: Engine, job: dict[str, Any], message: str) -> None:
    """The job is dead for CiGri: state event + closed USER_FRAG trace, in one transaction."""
    with transaction(engine) as conn:
        if jobsdb.change_state(conn, int(job["id"]), UNFINISHED_JOB_STATES, JobState.EVENT, stop_time=now()):
            eventsdb.create_event(conn, "job", "USER_FRAG", state="closed", job_id=job["id"],
                                  campaign_id=job["campaign_id"], cluster_id=job["cluster_id"], message=message,
                                  notified=True)


def kill_job(engine: Engine, killer: Killer, job: dict[str, Any]) -> bool | None:
    """Kill one job of a cancellation. True: done; False: failed (retry, report);
    None: not possible yet (launching / submission in progress), retry silently."""
    msg = "Nikita requested to kill the job because of a USER_FRAG event"
    state = job["state"]
    if state in FINAL_JOB_STATES:
        return True
    if state == "to_launch":
        with transaction(engine) as conn:
            if jobsdb.change_state(conn, int(job["id"]), JobState.TO_LAUNCH, JobState.EVENT):
                eventsdb.create_event(conn, "job", "USER_FRAG", state="closed", job_id=job["id"],
                                      campaign_id=job["campaign_id"], cluster_id=job["cluster_id"],
                                      message="Cancelled before submission", notified=True)
                return True
        return None  # the runner just took it: next cycle
    if state == "launching" or (state == "submitted" and job["remote_id"] is None):
        log.info("Job %s is being submitted: we have to wait", job["id"])
        return None
    if job["remote_id"] is None or job["cluster_id"] is None:
        _stop(engine, job, msg + " (no remote job)")
        return True
    if not killer.kill(int(job["cluster_id"]), int(job["remote_id"]), job["grid_user"]):
        return False
    _stop(engine, job, msg)
    return True


def _problem(engine: Engine, job: dict[str, Any], reported: set[int]) -> bool:
    if job["id"] in reported:
        return False
    with transaction(engine) as conn:
        eventsdb.create_event(conn, "notify", "NIKITA_KILL_PROBLEM", state="closed", job_id=job["id"],
                              campaign_id=job["campaign_id"], cluster_id=job["cluster_id"],
                              message=f"Nikita could not kill job {job['id']}!")
        notify(conn, JUDAS)
    reported.add(job["id"])
    return True


# ---------------------------------------------------------------- steps


def _open_frags(engine: Engine, klass: str) -> list[tuple[int, int | None]]:
    """Open USER_FRAG events of a class: (event id, campaign or job id)."""
    with engine.connect() as conn:
        return eventsdb.open_user_frags(conn, klass)


def _kill_all(engine: Engine, killer: Killer, todo: list[dict[str, Any]], reported: set[int],
              res: NikitaResult) -> bool:
    """Kill the jobs of one cancellation; True when every kill is done."""
    ok = True
    for job in todo:
        r = kill_job(engine, killer, job)
        if r is True:
            res.killed.append(job["id"])
        else:
            ok = False
            if r is False and _problem(engine, job, reported):
                res.problems.append(job["id"])
    return ok


def _close_frag(engine: Engine, ev_id: int, res: NikitaResult) -> None:
    with transaction(engine) as conn:
        eventsdb.close_events(conn, [ev_id], checked=True)
    res.frag_closed.append(int(ev_id))


def cancel_campaigns(engine: Engine, killer: Killer, res: NikitaResult) -> None:
    for ev_id, campaign_id in _open_frags(engine, "campaign"):
        if campaign_id is None:
            _close_frag(engine, ev_id, res)
            continue
        with transaction(engine) as conn:
            eventsdb.close_job_events_of_campaign(conn, campaign_id)
            todo = jobsdb.unfinished_jobs_of_campaign(conn, campaign_id)
            reported = eventsdb.jobs_with_event(conn, "NIKITA_KILL_PROBLEM", [j["id"] for j in todo])
        if _kill_all(engine, killer, todo, reported, res):
            _close_frag(engine, ev_id, res)
            log.info("Campaign %s cancelled: %d jobs killed", campaign_id, len(todo))


def cancel_jobs(engine: Engine, killer: Killer, res: NikitaResult) -> None:
    for ev_id, job_id in _open_frags(engine, "job"):
        with transaction(engine) as conn:
            if job_id is not None:
                eventsdb.close_job_events_of_job(conn, job_id, ev_id)
            rows = jobsdb.job_with_owner(conn, job_id) if job_id is not None else []
            reported = eventsdb.jobs_with_event(conn, "NIKITA_KILL_PROBLEM", [job_id] if job_id else [])
        if _kill_all(engine, killer, rows, reported, res):
            _close_frag(engine, ev_id, res)


def _blacklisted_pairs(conn: Connection) -> tuple[set[int], set[tuple[int, int]]]:
    return eventsdb.globally_blacklisted_clusters(conn), set(eventsdb.campaign_blacklists(conn))


def kill_expired_walltime(engine: Engine, killer: Killer, conf: Conf, res: NikitaResult) -> None:
    margin = int(conf.get("NIKITA_WALLTIME_MARGIN"))
    t = now()
    with engine.connect() as conn:
        running = jobsdb.running_jobs(conn)
        if not running:
            return
        props = sdb.properties_of(conn, sorted({j["campaign_id"] for j in running}))
        gbl, cbl = _blacklisted_pairs(conn)
    expired = []
    for j in running:
        p = props.get(j["campaign_id"], {}).get(j["cluster_id"], {})
        wt_name = f"{j['tag']}_walltime" if j["tag"] in ("prologue", "epilogue") else "walltime"
        wt = parse_walltime(p.get(wt_name) or p.get("walltime"))
        if wt is None or j["cluster_id"] in gbl or (j["cluster_id"], j["campaign_id"]) in cbl:
            continue
        if j["start_time"] + timedelta(seconds=wt + margin) < t:
            expired.append(j)
    if not expired:
        return
    with engine.connect() as conn:
        traced = eventsdb.jobs_with_event(conn, "CIGRI_WALLTIME", [j["id"] for j in expired])
    for j in expired:
        if j["id"] not in traced:
            with transaction(engine) as conn:
                eventsdb.create_event(conn, "notify", "CIGRI_WALLTIME", state="closed", job_id=j["id"],
                                      campaign_id=j["campaign_id"], cluster_id=j["cluster_id"],
                                      message=f"Cigri sent kill signal to job {j['id']} because it has reached "
                                              "the walltime and OAR doesn't seem to care")
                jobsdb.decrease_affinity(conn, j["param_id"], j["cluster_id"])
                notify(conn, JUDAS)
        if j["remote_id"] is not None and killer.kill(int(j["cluster_id"]), int(j["remote_id"]), j["grid_user"]):
            res.walltime_killed.append(j["id"])


def kill_waiting_too_long(engine: Engine, killer: Killer, conf: Conf, res: NikitaResult) -> None:
    limit = now() - timedelta(seconds=int(conf.get("REMOTE_WAITING_TIMEOUT")))
    with engine.connect() as conn:
        waiting = jobsdb.waiting_since(conn, limit)
        if not waiting:
            return
        traced = eventsdb.jobs_with_event(conn, "REMOTE_WAITING_FRAG", [j["id"] for j in waiting])
    for j in waiting:
        if j["id"] not in traced:
            with transaction(engine) as conn:
                eventsdb.create_event(conn, "job", "REMOTE_WAITING_FRAG", state="closed", job_id=j["id"],
                                      campaign_id=j["campaign_id"], cluster_id=j["cluster_id"], checked="yes",
                                      message="Killed because it was remote_waiting for too long. "
                                              "Job will be resubmitted.")
                jobsdb.decrease_affinity(conn, j["param_id"], j["cluster_id"])
        if killer.kill(int(j["cluster_id"]), int(j["remote_id"]), j["grid_user"]):
            res.waiting_killed.append(j["id"])


def purge_queued_too_long(engine: Engine, conf: Conf) -> int:
    limit = now() - timedelta(seconds=int(conf.get("REMOTE_WAITING_TIMEOUT")))
    with transaction(engine) as conn:
        rows = queuedb.purge_queued_before(conn, limit)
        if not rows:
            return 0
        for cl, pid in rows:
            if pid is not None:
                jobsdb.decrease_affinity(conn, pid, cl)
        eventsdb.create_event(conn, "log", "QUEUED_FOR_TOO_LONG", state="closed", notified=True,
                              message=f"Removing {len(rows)} jobs from the queue because they were queued "
                                      "for too long")
        notify(conn, METASCHEDULER)
    return len(rows)


def clean_affinity(engine: Engine, conf: Conf) -> bool:
    """At most every AFFINITY_CLEAN_PERIOD: affinity rows of finished campaigns' tasks go.
    The marker event is created already notified and older markers are deleted."""
    period = int(conf.get("AFFINITY_CLEAN_PERIOD"))
    with transaction(engine) as conn:
        last = eventsdb.last_opened(conn, "log", "NIKITA_CLEAN_AFFINITY")
        if last is not None and (now() - last).total_seconds() < period:
            return False
        jobsdb.forget_affinity_of_ended_campaigns(conn)
        eventsdb.delete_events(conn, "log", "NIKITA_CLEAN_AFFINITY")
        eventsdb.create_event(conn, "log", "NIKITA_CLEAN_AFFINITY", state="closed", notified=True,
                              message="Nikita cleaned affinity table")
    return True


def run_once(engine: Engine, conf: Conf | None = None, factory: AdapterFactory | None = None) -> NikitaResult:
    conf = conf or get_conf()
    res = NikitaResult()
    res.affinity_cleaned = clean_affinity(engine, conf)
    killer = Killer(engine, conf, factory)
    try:
        cancel_campaigns(engine, killer, res)
        cancel_jobs(engine, killer, res)
        kill_expired_walltime(engine, killer, conf, res)
        kill_waiting_too_long(engine, killer, conf, res)
    finally:
        killer.close()
    res.unqueued = purge_queued_too_long(engine, conf)
    if res.killed or res.walltime_killed or res.waiting_killed:
        with transaction(engine) as conn:
            notify(conn, COLOMBO)  # runners will see the killed jobs; colombo decides on their events
    return res
