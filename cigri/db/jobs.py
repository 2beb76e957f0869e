"""Jobs (execution attempts): their state changes, resubmission and task affinity.

`change_state` and `change_states` are the only writers of `jobs.state`: every change is
a guarded UPDATE (`WHERE state IN (old…)`, so a job changed meanwhile by another daemon
is left alone) and a transition `cigri.states.JOB_TRANSITIONS` forbids raises StateError
before anything is written. New jobs are created `to_launch` by the queue (cigri.db.queue)
or directly for prologue/epilogue jobs."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from cigri.db.engine import is_sqlite
from cigri.db.schema import bag_of_tasks, campaigns, jobs, tasks_affinity
from cigri.states import LIVE_CAMPAIGN_STATES, JobState, check_job_transition

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

RESUBMIT_PRIORITY = 20
RESUBMIT_END_PRIORITY = 0


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
    """A real, unique batch identifier (CiGri3 used max(batch_id)+1, spec §15.2 #12)."""
    if is_sqlite(conn):
        return int(conn.execute(sa.text("INSERT INTO batch_id_seq (dummy) VALUES (0) RETURNING id")).scalar_one())
    return int(conn.execute(sa.text("SELECT nextval('batch_id_seq')")).scalar_one())
