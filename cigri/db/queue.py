"""Per-cluster queues (`jobs_to_launch`) as the runner sees them: what to submit next and the
atomic "take" that turns queued tasks into `jobs` rows (spec §3.2, §7.4)."""

from __future__ import annotations

import json
from collections.abc import Collection, Generator
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from cigri.db.schema import bag_of_tasks, campaigns, jobs, jobs_to_launch, now, queue_counts

#: how many queue rows one `get_next` looks at (the queue depth per campaign is bounded by
#: 10 × tap rate, so this only protects against pathological queues).
QUEUE_SCAN_LIMIT = 5000


@dataclass
class QueuedTask:
    queue_id: int
    task_id: int
    campaign_id: int
    param_id: int
    priority: int
    order_num: int
    campaign_state: str
    runner_options: str | None


def iter_queued_tasks(conn: Connection, cluster_id: int, limit: int = QUEUE_SCAN_LIMIT,
                      exclude: Collection[int] = ()) -> Generator[QueuedTask, None, None]:
    """The queue of one cluster in serving order, read lazily (the runner takes one tap's
    worth from the head: its cost must not grow with the depth of the queue).

    CiGri3 served by bag priority first, so resubmitted tasks of a low-priority campaign
    pre-empted a higher-priority campaign (spec §15.2 #41). We serve in the scheduler's order
    (order_num), and only then by bag priority, so resubmitted tasks go first *within* the
    place the scheduler gave to their campaign."""
    q = (sa.select(jobs_to_launch.c.id, jobs_to_launch.c.task_id, bag_of_tasks.c.campaign_id,
                   bag_of_tasks.c.param_id, bag_of_tasks.c.priority, jobs_to_launch.c.order_num,
                   campaigns.c.state, jobs_to_launch.c.runner_options)
         .select_from(jobs_to_launch.join(bag_of_tasks, bag_of_tasks.c.id == jobs_to_launch.c.task_id)
                      .join(campaigns, campaigns.c.id == bag_of_tasks.c.campaign_id))
         .where(jobs_to_launch.c.cluster_id == cluster_id)
         .order_by(jobs_to_launch.c.order_num, bag_of_tasks.c.priority.desc(), jobs_to_launch.c.id)
         .limit(limit))
    if exclude:
        q = q.where(bag_of_tasks.c.campaign_id.notin_(sorted(exclude)))
    result = conn.execute(q)
    try:
        for r in result:
            yield QueuedTask(int(r[0]), int(r[1]), int(r[2]), int(r[3]), int(r[4]), int(r[5]), r[6], r[7])
    finally:
        result.close()  # also when the caller stops early (generator closed)


def queued_tasks(conn: Connection, cluster_id: int, limit: int = QUEUE_SCAN_LIMIT) -> list[QueuedTask]:
    return list(iter_queued_tasks(conn, cluster_id, limit))



def has_work(conn: Connection, cluster_id: int) -> bool:
    """Cheap check used while the runner idles: anything queued or to_launch here?"""
    q1 = sa.select(jobs_to_launch.c.id).where(jobs_to_launch.c.cluster_id == cluster_id).limit(1)
    if conn.execute(q1).first() is not None:
        return True
    q2 = sa.select(jobs.c.id).where(jobs.c.cluster_id == cluster_id, jobs.c.state == "to_launch").limit(1)
    return conn.execute(q2).first() is not None


def _batch_id(options: str | None) -> int | None:
    if not options:
        return None
    try:
        value = json.loads(options).get("batch_id")
    except (ValueError, AttributeError):
        return None
    return int(value) if isinstance(value, int) else None


def take_tasks(conn: Connection, cluster_id: int, queue_ids: list[int]) -> list[int]:
    """Atomically turn queue entries into `to_launch` jobs; returns the new job ids in order.

    The DELETE … RETURNING of the queue rows is the lock: a row deleted meanwhile (nikita,
    cancellation) is simply not taken, and no two runners can take the same task."""
    if not queue_ids:
        return []
    taken = conn.execute(jobs_to_launch.delete()
                         .where(jobs_to_launch.c.id.in_(queue_ids), jobs_to_launch.c.cluster_id == cluster_id)
                         .returning(jobs_to_launch.c.id, jobs_to_launch.c.task_id, jobs_to_launch.c.tag,
                                    jobs_to_launch.c.runner_options)).all()
    if not taken:
        return []
    by_task = {int(r.task_id): r for r in taken}
    bag = conn.execute(bag_of_tasks.delete().where(bag_of_tasks.c.id.in_(list(by_task)))
                       .returning(bag_of_tasks.c.id, bag_of_tasks.c.campaign_id, bag_of_tasks.c.param_id,
                                  bag_of_tasks.c.priority)).all()
    order = {qid: i for i, qid in enumerate(queue_ids)}
    rows: list[dict[str, Any]] = []
    for b in bag:
        q = by_task[int(b.id)]
        rows.append({"_order": order.get(int(q.id), 0), "campaign_id": int(b.campaign_id),
                     "param_id": int(b.param_id), "cluster_id": cluster_id, "state": "to_launch",
                     "tag": q.tag, "runner_options": q.runner_options, "batch_id": _batch_id(q.runner_options)})
    rows.sort(key=lambda r: r["_order"])
    counts: dict[int, int] = {}
    for r in rows:
        r.pop("_order")
        counts[r["campaign_id"]] = counts.get(r["campaign_id"], 0) + 1
    res = conn.execute(jobs.insert().returning(jobs.c.id, sort_by_parameter_order=True), rows)
    ids = [int(x) for x in res.scalars().all()]
    t = now()
    for cid, n in counts.items():
        conn.execute(queue_counts.insert().values(date=t, campaign_id=cid, cluster_id=cluster_id, jobs_count=n))
    return ids


def purge_queued_before(conn: Connection, before: Any) -> list[tuple[int, int | None]]:
    """Delete the queue entries queued before `before`; returns their (cluster, param id)."""
    rows = conn.execute(sa.select(jobs_to_launch.c.id, jobs_to_launch.c.cluster_id, bag_of_tasks.c.param_id)
                        .select_from(jobs_to_launch.outerjoin(bag_of_tasks,
                                                              bag_of_tasks.c.id == jobs_to_launch.c.task_id))
                        .where(jobs_to_launch.c.queuing_date < before)).all()
    if rows:
        conn.execute(jobs_to_launch.delete().where(jobs_to_launch.c.id.in_([r[0] for r in rows])))
    return [(int(cl), int(pid) if pid is not None else None) for _, cl, pid in rows]
