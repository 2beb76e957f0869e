"""Jobs (execution attempts), resubmission and task affinity. Shared by the runner,
colombo, nikita and the API; the engine engineers extend this module."""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from cigri.db.engine import is_sqlite
from cigri.db.schema import bag_of_tasks, campaigns, jobs, tasks_affinity

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
    if row.state not in ("in_treatment", "paused"):
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
