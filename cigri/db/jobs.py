"""Jobs (execution attempts): their state changes, resubmission and task affinity.

`change_state` and `change_states` are the only writers of `jobs.state`: every change is
a guarded UPDATE (`WHERE state IN (old…)`, so a job changed meanwhile by another daemon
is left alone) and a transition `cigri.states.JOB_TRANSITIONS` forbids raises StateError
before anything is written. New jobs are created `to_launch` by the queue (cigri.db.queue)
or directly for prologue/epilogue jobs."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from cigri.clock import epoch
from cigri.clusters.base import Outcome
from cigri.db.engine import is_sqlite
from cigri.db.schema import bag_of_tasks, campaigns, clusters, events, jobs, parameters, tasks_affinity
from cigri.errors import NotFound
from cigri.event_codes import RESUBMIT_PRIORITY
from cigri.states import (
    ENDED_CAMPAIGN_STATES,
    FINAL_JOB_STATES,
    LIVE_CAMPAIGN_STATES,
    UNFINISHED_JOB_STATES,
    JobState,
    check_job_transition,
    sources_of,
)

_CHUNK = 5000  # ids per statement (bounded IN lists)


def _olds(old: str | Iterable[str]) -> tuple[JobState, ...]:
    return (JobState(old),) if isinstance(old, str) else tuple(JobState(o) for o in old)


def change_state(conn: Connection, job_ids: int | Sequence[int], old: str | Iterable[str], new: str,
                 **values: Any) -> list[int]:
    """Jobs still in `old` (one state or several) go to `new`, with the other columns in
    `values`; returns the ids changed. Nothing is written if any old -> new is forbidden."""
    olds = _olds(old)
    new = JobState(new)
    for o in olds:
        check_job_transition(o, new)
    ids = [job_ids] if isinstance(job_ids, int) else [int(i) for i in job_ids]
    changed: list[int] = []
    for i in range(0, len(ids), _CHUNK):
        stmt = (jobs.update().where(jobs.c.id.in_(ids[i:i + _CHUNK]), jobs.c.state.in_(olds))
                .values(state=new, **values).returning(jobs.c.id))
        changed += [int(r[0]) for r in conn.execute(stmt)]
    return changed


def change_states(conn: Connection, rows: Sequence[Mapping[str, Any]]) -> None:
    """Many guarded changes, each with its own values (a runner's poll), in a few
    statements: every row has `id`, `old`, `new` and the other columns to set. Rows whose
    job changed meanwhile are not touched. Nothing is written if one row is forbidden."""
    for r in rows:
        check_job_transition(JobState(r["old"]), JobState(r["new"]))
    groups: dict[tuple[str, ...], list[Mapping[str, Any]]] = {}
    for r in rows:
        groups.setdefault(tuple(sorted(k for k in r if k not in ("id", "old", "new"))), []).append(r)
    for cols, group in groups.items():
        stmt = (jobs.update().where(jobs.c.id == sa.bindparam("b_id"), jobs.c.state == sa.bindparam("b_old"))
                .values(state=sa.bindparam("b_new"), **{c: sa.bindparam(f"b_{c}") for c in cols}))
        conn.execute(stmt, [{f"b_{k}": (str(v) if k in ("old", "new") else v) for k, v in r.items()}
                            for r in group])



def get_job(conn: Connection, job_id: int) -> dict | None:  # type: ignore[type-arg]
    row = conn.execute(sa.select(jobs).where(jobs.c.id == job_id)).mappings().first()
    return dict(row) if row else None


def resubmit_job(conn: Connection, job_id: int, priority: int = RESUBMIT_PRIORITY) -> bool:
    """Put the job's task back in the bag (new bag_of_tasks row). Nothing for prologue/epilogue
    jobs or campaigns that are not in_treatment/paused. Returns whether a row was added."""
    row = conn.execute(
        sa.select(jobs.c.campaign_id, jobs.c.param_id, jobs.c.tag, campaigns.c.state)
        .select_from(jobs.join(campaigns, campaigns.c.id == jobs.c.campaign_id))
        .where(jobs.c.id == job_id)
    ).first()
    if row is None or row.tag in ("prologue", "epilogue") or row.param_id == 0:
        return False
    if row.state not in LIVE_CAMPAIGN_STATES:
        return False
    conn.execute(bag_of_tasks.insert().values(campaign_id=row.campaign_id, param_id=row.param_id,
                                              priority=priority))
    return True


def decrease_affinity(conn: Connection, param_id: int, cluster_id: int, by: int = 1) -> None:
    """Lower the task's affinity for this cluster (a missing row means 0)."""
    if param_id == 0:
        return
    res = conn.execute(tasks_affinity.update()
                       .where(tasks_affinity.c.param_id == param_id, tasks_affinity.c.cluster_id == cluster_id)
                       .values(priority=tasks_affinity.c.priority - by))
    if not res.rowcount:
        conn.execute(tasks_affinity.insert().values(param_id=param_id, cluster_id=cluster_id, priority=-by))


def get_affinity(conn: Connection, param_id: int, cluster_id: int) -> int | None:
    return conn.execute(sa.select(tasks_affinity.c.priority).where(
        tasks_affinity.c.param_id == param_id, tasks_affinity.c.cluster_id == cluster_id)).scalar()


def reset_affinity(conn: Connection, param_id: int, cluster_id: int) -> None:
    conn.execute(tasks_affinity.delete().where(tasks_affinity.c.param_id == param_id,
                                               tasks_affinity.c.cluster_id == cluster_id))


def new_batch_id(conn: Connection) -> int:
    """A real, unique batch identifier (CiGri3 used max(batch_id)+1)."""
    if is_sqlite(conn):
        return int(conn.execute(sa.text("INSERT INTO batch_id_seq (dummy) VALUES (0) RETURNING id")).scalar_one())
    return int(conn.execute(sa.text("SELECT nextval('batch_id_seq')")).scalar_one())


def attempts_of_task(conn: Connection, campaign_id: int, param_id: int) -> int:
    """How many jobs ran (or run) this task: 1 + its resubmissions."""
    return int(conn.execute(sa.select(sa.func.count()).select_from(jobs).where(
        jobs.c.campaign_id == campaign_id, jobs.c.param_id == param_id)).scalar_one())


def resubmission_counts(conn: Connection, campaign_id: int, cluster_id: int, window: int,
                        since: datetime | None = None) -> tuple[int, int]:
    """(resubmitted, total) among the last `window` ended jobs of a campaign on a cluster.
    Jobs killed because they were best-effort are left out (preemption is the grid working as
    meant, not a fault of the campaign), and so are jobs ended before `since` (evidence an
    admin or user already judged by fixing the event)."""
    when = sa.func.coalesce(jobs.c.stop_time, jobs.c.submission_time)
    q = (sa.select(jobs.c.id).where(jobs.c.campaign_id == campaign_id, jobs.c.cluster_id == cluster_id,
                                    jobs.c.state.in_(FINAL_JOB_STATES), jobs.c.param_id != 0,
                                    sa.or_(jobs.c.kill_cause.is_(None),
                                           jobs.c.kill_cause != Outcome.PREEMPTED.value)))
    if since is not None:
        q = q.where(when > since)
    last = q.order_by(jobs.c.id.desc()).limit(window).subquery()
    total = int(conn.execute(sa.select(sa.func.count()).select_from(last)).scalar_one())
    resub = int(conn.execute(sa.select(sa.func.count(sa.distinct(events.c.job_id))).where(
        events.c.job_id.in_(sa.select(last.c.id)), events.c.code.in_(("RESUBMIT", "RESUBMIT_END")))).scalar_one())
    return resub, total


# ------------------------------------------------------------------ jobs to kill


def _kill_rows(conn: Connection, where: Any) -> list[dict[str, Any]]:
    q = (sa.select(jobs.c.id, jobs.c.campaign_id, jobs.c.cluster_id, jobs.c.state, jobs.c.remote_id, jobs.c.tag,
                   jobs.c.param_id, jobs.c.start_time, jobs.c.submission_time, campaigns.c.grid_user)
         .select_from(jobs.join(campaigns, campaigns.c.id == jobs.c.campaign_id)).where(where)
         .order_by(jobs.c.id))
    return [dict(r._mapping) for r in conn.execute(q)]


def unfinished_jobs_of_campaign(conn: Connection, campaign_id: int) -> list[dict[str, Any]]:
    """The jobs a cancellation must kill, with their owner."""
    return _kill_rows(conn, sa.and_(jobs.c.campaign_id == campaign_id, jobs.c.state.in_(UNFINISHED_JOB_STATES)))


def job_with_owner(conn: Connection, job_id: int) -> list[dict[str, Any]]:
    return _kill_rows(conn, jobs.c.id == job_id)


def running_jobs(conn: Connection) -> list[dict[str, Any]]:
    """Running jobs whose start is known (walltime checks)."""
    return _kill_rows(conn, sa.and_(jobs.c.state == JobState.RUNNING, jobs.c.start_time.is_not(None)))


def waiting_since(conn: Connection, before: datetime) -> list[dict[str, Any]]:
    """Jobs waiting on their cluster since before `before` (CiGri's submission time)."""
    return _kill_rows(conn, sa.and_(jobs.c.state == JobState.REMOTE_WAITING, jobs.c.submission_time < before,
                                    jobs.c.remote_id.is_not(None)))


def forget_affinity_of_ended_campaigns(conn: Connection) -> None:
    """Affinity rows of the tasks of terminated and cancelled campaigns go."""
    dead = sa.select(parameters.c.id).select_from(
        parameters.join(campaigns, campaigns.c.id == parameters.c.campaign_id)).where(
        campaigns.c.state.in_(ENDED_CAMPAIGN_STATES))
    conn.execute(tasks_affinity.delete().where(tasks_affinity.c.param_id.in_(dead)))


# ------------------------------------------------------------------ a job as the API shows it


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
