"""Queries of the meta-scheduler. Every query is bounded by the work in
flight (running campaigns, active jobs, queue entries, affinity rows), never by the
number of waiting tasks: task stacks are indexed LIMIT scans of bag_of_tasks with an
indexed anti-join on jobs_to_launch.task_id."""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.engine import Connection

from cigri.db.schema import (
    bag_of_tasks,
    campaign_properties,
    campaigns,
    clusters,
    jobs,
    jobs_to_launch,
    now,
    taps,
    tasks_affinity,
    users_priority,
)
from cigri.run_options import SPECIAL_JOB_OPTIONS_JSON
from cigri.states import ACTIVE_JOB_STATES, UNFINISHED_JOB_STATES

#: the campaign_properties the engine reads (listed so the (name, campaign_id) index is used).
PROPERTY_NAMES = ("checkpointing_type", "dimensional_grouping", "epilogue", "exec_file", "output_destination",
                  "output_file", "output_gathering_method", "prologue", "properties", "resources",
                  "temporal_grouping", "walltime", "type", "test_mode", "max_jobs", "prologue_walltime",
                  "epilogue_walltime", "project", "exec_directory", "cluster_job_type", "max_resubmit")

SCHEDULER_LOCK = 0x43494752  # "CIGR": one meta-scheduler pass at a time


@dataclass
class RunningCampaign:
    id: int
    grid_user: str
    state: str


def running_campaigns(conn: Connection, campaign_ids: Sequence[int] | None = None) -> list[RunningCampaign]:
    """in_treatment campaigns in id order (CiGri3's DB order)."""
    q = (sa.select(campaigns.c.id, campaigns.c.grid_user, campaigns.c.state)
         .where(campaigns.c.state == "in_treatment").order_by(campaigns.c.id))
    if campaign_ids is not None:
        q = q.where(campaigns.c.id.in_(list(campaign_ids)))
    return [RunningCampaign(int(r.id), r.grid_user, r.state) for r in conn.execute(q)]


def cluster_campaigns(conn: Connection, cluster_id: int, state: str = "in_treatment") -> list[int]:
    """Campaigns in `state` having properties on the cluster."""
    q = (sa.select(campaigns.c.id).where(campaigns.c.state == state, sa.exists(
        sa.select(campaign_properties.c.id).where(campaign_properties.c.campaign_id == campaigns.c.id,
                                                  campaign_properties.c.cluster_id == cluster_id)))
         .order_by(campaigns.c.id))
    return [int(r[0]) for r in conn.execute(q)]


def properties_of(conn: Connection, campaign_ids: Sequence[int]) -> dict[int, dict[int, dict[str, str]]]:
    """campaign -> cluster -> {name: value}; clusters in the order of their first property row."""
    out: dict[int, dict[int, dict[str, str]]] = {c: {} for c in campaign_ids}
    if not campaign_ids:
        return out
    cp = campaign_properties
    q = (sa.select(cp.c.campaign_id, cp.c.cluster_id, cp.c.name, cp.c.value)
         .where(cp.c.name.in_(PROPERTY_NAMES), cp.c.campaign_id.in_(list(campaign_ids)))
         .order_by(cp.c.campaign_id, cp.c.id))
    for r in conn.execute(q):
        if r.cluster_id is None:
            continue
        out[int(r.campaign_id)].setdefault(int(r.cluster_id), {})[r.name] = r.value
    return out


@dataclass
class ClusterState:
    id: int
    name: str
    enabled: bool
    stress_factor: float
    power: int | None


def cluster_states(conn: Connection) -> dict[int, ClusterState]:
    q = sa.select(clusters.c.id, clusters.c.name, clusters.c.enabled, clusters.c.stress_factor, clusters.c.power)
    return {int(r.id): ClusterState(int(r.id), r.name, bool(r.enabled), float(r.stress_factor or 0.0), r.power)
            for r in conn.execute(q)}


def occupying_counts(conn: Connection, campaign_ids: Sequence[int]) -> dict[tuple[int, int], int]:
    """(cluster, campaign) -> jobs in flight (uses the partial index jobs_idx_active)."""
    if not campaign_ids:
        return {}
    q = (sa.select(jobs.c.cluster_id, jobs.c.campaign_id, sa.func.count())
         .where(jobs.c.state.in_(UNFINISHED_JOB_STATES), jobs.c.campaign_id.in_(list(campaign_ids)))
         .group_by(jobs.c.cluster_id, jobs.c.campaign_id))
    return {(int(cl), int(ca)): int(n) for cl, ca, n in conn.execute(q) if cl is not None}


def queued_counts(conn: Connection) -> dict[tuple[int, int], int]:
    """(cluster, campaign) -> queue entries. The queue is bounded by the taps (10 x rate per
    pair); the planner picks per-entry index probes of the bag or one hash join, whichever
    is cheaper, so the cost is at most O(queue) probes. (An additive jobs_to_launch.campaign_id
    column would make this an index-only scan: see the report.)"""
    q = (sa.select(jobs_to_launch.c.cluster_id, bag_of_tasks.c.campaign_id, sa.func.count())
         .select_from(jobs_to_launch.join(bag_of_tasks, bag_of_tasks.c.id == jobs_to_launch.c.task_id))
         .group_by(jobs_to_launch.c.cluster_id, bag_of_tasks.c.campaign_id))
    return {(int(cl), int(ca)): int(n) for cl, ca, n in conn.execute(q)}


def users_priorities(conn: Connection) -> dict[tuple[str, int], int]:
    """(grid_user, cluster) -> priority. Admin-maintained, small."""
    q = sa.select(users_priority.c.grid_user, users_priority.c.cluster_id, users_priority.c.priority)
    out: dict[tuple[str, int], int] = {}
    for u, cl, p in conn.execute(q):
        out[(u, int(cl))] = max(int(p), out.get((u, int(cl)), int(p)))
    return out


def taps_of(conn: Connection, campaign_ids: Sequence[int]) -> dict[tuple[int, int], tuple[int, str, int]]:
    """(cluster, campaign) -> (tap id, state, rate)."""
    if not campaign_ids:
        return {}
    q = (sa.select(taps.c.id, taps.c.cluster_id, taps.c.campaign_id, taps.c.state, taps.c.rate)
         .where(taps.c.campaign_id.in_(list(campaign_ids))).order_by(taps.c.id))
    out: dict[tuple[int, int], tuple[int, str, int]] = {}
    for r in conn.execute(q):
        out.setdefault((int(r.cluster_id), int(r.campaign_id)), (int(r.id), r.state, int(r.rate)))
    return out


def create_taps(conn: Connection, pairs: Sequence[tuple[int, int]], rate: int) -> None:
    """Open taps at the default rate for (cluster, campaign) pairs that have none (one INSERT)."""
    if pairs:
        conn.execute(taps.insert(), [{"cluster_id": cl, "campaign_id": ca, "state": "open", "rate": rate}
                                     for cl, ca in pairs])


def special_jobs(conn: Connection, campaign_ids: Sequence[int], tag: str) -> list[dict[str, Any]]:
    """Prologue/epilogue jobs of these campaigns (few rows: found through the tag)."""
    if not campaign_ids:
        return []
    q = (sa.select(jobs.c.id, jobs.c.campaign_id, jobs.c.cluster_id, jobs.c.state)
         .where(jobs.c.tag == tag, jobs.c.campaign_id.in_(list(campaign_ids))))
    return [dict(r._mapping) for r in conn.execute(q)]


def _unqueued(b: sa.Table | Any) -> sa.ColumnElement[bool]:
    return ~sa.exists(sa.select(jobs_to_launch.c.id).where(jobs_to_launch.c.task_id == b.c.id))


def has_unqueued_tasks(conn: Connection, campaign_id: int) -> bool:
    b = bag_of_tasks
    q = sa.select(b.c.id).where(b.c.campaign_id == campaign_id, _unqueued(b)).limit(1)
    return conn.execute(q).first() is not None


@dataclass
class Progress:
    """What a campaign still has in the system."""

    campaign_id: int
    has_tasks: bool  # bag rows (queued or not)
    has_queued: bool
    has_launching: bool
    has_active: bool  # to_launch/submitted/running/remote_waiting/batch_waiting
    has_open_job_events: bool  # jobs in `event` with an open event

    @property
    def empty(self) -> bool:
        return not (self.has_tasks or self.has_launching or self.has_active or self.has_open_job_events)


def progress(conn: Connection, campaign_ids: Sequence[int]) -> dict[int, Progress]:
    """One statement (one consistent snapshot) per call; every sub-query is an indexed EXISTS."""
    if not campaign_ids:
        return {}
    from cigri.db.schema import events

    c = campaigns
    b = bag_of_tasks
    active = ACTIVE_JOB_STATES
    q = sa.select(
        c.c.id,
        sa.exists(sa.select(b.c.id).where(b.c.campaign_id == c.c.id)).label("tasks"),
        sa.exists(sa.select(b.c.id).select_from(b.join(jobs_to_launch, jobs_to_launch.c.task_id == b.c.id))
                  .where(b.c.campaign_id == c.c.id)).label("queued"),
        sa.exists(sa.select(jobs.c.id).where(jobs.c.campaign_id == c.c.id, jobs.c.state == "launching"))
        .label("launching"),
        sa.exists(sa.select(jobs.c.id).where(jobs.c.campaign_id == c.c.id, jobs.c.state.in_(active)))
        .label("active"),
        sa.exists(sa.select(events.c.id).select_from(events.join(jobs, jobs.c.id == events.c.job_id))
                  .where(events.c.state == "open", jobs.c.campaign_id == c.c.id, jobs.c.state == "event"))
        .label("open_events"),
    ).where(c.c.id.in_(list(campaign_ids)))
    return {int(r.id): Progress(int(r.id), bool(r.tasks), bool(r.queued), bool(r.launching), bool(r.active),
                                bool(r.open_events)) for r in conn.execute(q)}


def task_window(conn: Connection, campaign_id: int, limit: int, n_queued: int) -> list[tuple[int, int, int]]:
    """The best `limit` un-queued tasks of a campaign by (priority DESC, id): (task, param, priority).

    At most `n_queued` tasks of the campaign are queued, so the best `limit + n_queued` bag
    rows (an index-ordered top-N on bag_of_tasks_idx_sched) contain the answer: the cost is
    O(limit + queued) whatever the size of the bag, and no plan can scan the whole bag."""
    if limit <= 0:
        return []
    b = bag_of_tasks
    top = [(int(i), int(p), int(pr)) for i, p, pr in conn.execute(
        sa.select(b.c.id, b.c.param_id, b.c.priority).where(b.c.campaign_id == campaign_id)
        .order_by(b.c.priority.desc(), b.c.id).limit(limit + max(0, n_queued)))]
    if not top or n_queued <= 0:
        return top[:limit]
    # Two statements rather than an anti-join: the plan cannot degrade into one probe of an
    # unanalysed jobs_to_launch per bag row.
    ids = [t[0] for t in top]
    if conn.dialect.name == "postgresql":  # one array parameter, not thousands of binds
        cond = jobs_to_launch.c.task_id == sa.func.any(sa.bindparam("ids", ids, type_=ARRAY(sa.BigInteger)))
    else:
        cond = jobs_to_launch.c.task_id.in_(ids)
    queued = {int(r[0]) for r in conn.execute(sa.select(jobs_to_launch.c.task_id).where(cond))}
    return [t for t in top if t[0] not in queued][:limit]


def ends_queued(conn: Connection, campaign_id: int, probe: int = 50) -> bool:
    """Are the `probe` best and the `probe` worst tasks of the campaign all queued? A cheap
    test (one statement: two index top-N scans and 2 x probe index probes) that a campaign
    whose bag is entirely queued still is: new tasks and resubmissions land at one end."""
    b = bag_of_tasks
    head = (sa.select(b.c.id).where(b.c.campaign_id == campaign_id)
            .order_by(b.c.priority.desc(), b.c.id).limit(probe).subquery("head"))
    tail = (sa.select(b.c.id).where(b.c.campaign_id == campaign_id)
            .order_by(b.c.priority, b.c.id.desc()).limit(probe).subquery("tail"))
    ends = sa.union(sa.select(head.c.id), sa.select(tail.c.id)).subquery("ends")
    q = sa.select(sa.func.count()).select_from(ends).where(
        ~sa.exists(sa.select(jobs_to_launch.c.id).where(jobs_to_launch.c.task_id == ends.c.id)))
    return int(conn.execute(q).scalar() or 0) == 0


_WINDOWS_PG = sa.text("""
SELECT r.cid, t.id, t.param_id, t.priority
FROM unnest(CAST(:cids AS bigint[]), CAST(:lims AS bigint[])) AS r(cid, lim)
CROSS JOIN LATERAL (SELECT b.id, b.param_id, b.priority FROM bag_of_tasks b WHERE b.campaign_id = r.cid
                    ORDER BY b.priority DESC, b.id LIMIT r.lim) t
WHERE NOT EXISTS (SELECT 1 FROM jobs_to_launch q WHERE q.task_id = t.id)
ORDER BY r.cid, t.priority DESC, t.id
""")


def task_windows(conn: Connection, requests: Sequence[tuple[int, int, int]]) -> dict[int, list[tuple[int, int, int]]]:
    """task_window for many campaigns at once: requests = [(campaign, limit, n_queued)].
    PostgreSQL: one statement (a LATERAL top-N per campaign); SQLite: one per campaign."""
    reqs = [(ca, lim, nq) for ca, lim, nq in requests if lim > 0]
    if conn.dialect.name != "postgresql":
        return {ca: task_window(conn, ca, lim, nq) for ca, lim, nq in reqs}
    out: dict[int, list[tuple[int, int, int]]] = {ca: [] for ca, _, _ in reqs}
    if not reqs:
        return out
    limit = {ca: lim for ca, lim, _ in reqs}
    rows = conn.execute(_WINDOWS_PG, {"cids": [r[0] for r in reqs], "lims": [r[1] + max(0, r[2]) for r in reqs]})
    for ca, tid, pid, prio in rows:
        lst = out[int(ca)]
        if len(lst) < limit[int(ca)]:
            lst.append((int(tid), int(pid), int(prio)))
    return out


_ENDS_PG = sa.text("""
SELECT c.id FROM unnest(CAST(:ids AS bigint[])) AS c(id)
WHERE NOT EXISTS (
  SELECT 1 FROM (
    (SELECT b.id FROM bag_of_tasks b WHERE b.campaign_id = c.id ORDER BY b.priority DESC, b.id LIMIT :probe)
    UNION
    (SELECT b.id FROM bag_of_tasks b WHERE b.campaign_id = c.id ORDER BY b.priority, b.id DESC LIMIT :probe)
  ) e WHERE NOT EXISTS (SELECT 1 FROM jobs_to_launch q WHERE q.task_id = e.id))
""")


def campaigns_with_ends_queued(conn: Connection, campaign_ids: Sequence[int], probe: int = 50) -> set[int]:
    """ends_queued for many campaigns: one statement on PostgreSQL (correlated top-N scans)."""
    if not campaign_ids:
        return set()
    if conn.dialect.name != "postgresql":
        return {c for c in campaign_ids if ends_queued(conn, c, probe)}
    return {int(r[0]) for r in conn.execute(_ENDS_PG, {"ids": list(campaign_ids), "probe": probe})}


def affinity_tasks(conn: Connection, campaign_ids: Sequence[int],
                   cluster_ids: Sequence[int]) -> dict[tuple[int, int], list[tuple[int, int, int, int]]]:
    """Un-queued tasks having a non-zero affinity on one of the clusters:
    (cluster, campaign) -> [(task, param, priority, affinity)]. Bounded by tasks_affinity rows."""
    if not campaign_ids or not cluster_ids:
        return {}
    b, a = bag_of_tasks, tasks_affinity
    q = (sa.select(a.c.cluster_id, b.c.campaign_id, b.c.id, b.c.param_id, b.c.priority, a.c.priority)
         .select_from(a.join(b, b.c.param_id == a.c.param_id))
         .where(a.c.cluster_id.in_(list(cluster_ids)), a.c.priority != 0,
                b.c.campaign_id.in_(list(campaign_ids)), _unqueued(b)))
    out: dict[tuple[int, int], list[tuple[int, int, int, int]]] = {}
    seen: set[tuple[int, int]] = set()
    for cl, ca, tid, pid, prio, aff in conn.execute(q):
        if (int(cl), int(tid)) in seen:  # duplicate affinity rows: keep one
            continue
        seen.add((int(cl), int(tid)))
        out.setdefault((int(cl), int(ca)), []).append((int(tid), int(pid), int(prio), int(aff)))
    return out


def insert_queue(conn: Connection, rows: Iterable[dict[str, Any]]) -> int:
    """Append entries to jobs_to_launch: dicts with task_id, cluster_id, runner_options (dict or
    JSON text), order_num."""
    t = now()
    values = [{"task_id": r["task_id"], "cluster_id": r["cluster_id"], "tag": None, "queuing_date": t,
               "runner_options": r["runner_options"] if isinstance(r["runner_options"], str)
               else json.dumps(r["runner_options"], separators=(",", ":")),
               "order_num": r["order_num"]} for r in rows]
    if not values:
        return 0
    if conn.dialect.name == "postgresql" and len(values) > 100:
        # COPY in the caller's transaction: ~10x faster than multi-row INSERTs.
        raw = conn.connection.dbapi_connection
        with raw.cursor() as cur:  # type: ignore[union-attr]
            with cur.copy("COPY jobs_to_launch (task_id, cluster_id, queuing_date, runner_options, order_num) "
                          "FROM STDIN") as cp:
                for v in values:
                    cp.write_row((v["task_id"], v["cluster_id"], t, v["runner_options"], v["order_num"]))
        if len(values) > 5000:
            # keep the planner's view of the queue current (runners' and our index probes)
            conn.execute(sa.text("ANALYZE jobs_to_launch"))
        return len(values)
    conn.execute(jobs_to_launch.insert(), values)
    return len(values)


def unqueue(conn: Connection, cluster_id: int, campaign_id: int) -> int:
    """Drop the queue entries of one pair (tasks go back to the un-queued bag)."""
    sub = sa.select(bag_of_tasks.c.id).where(bag_of_tasks.c.campaign_id == campaign_id)
    res = conn.execute(jobs_to_launch.delete().where(jobs_to_launch.c.cluster_id == cluster_id,
                                                     jobs_to_launch.c.task_id.in_(sub)))
    return int(res.rowcount or 0)


def try_lock(conn: Connection) -> bool:
    """Transaction-scoped lock so two meta-schedulers never queue the same task twice.
    SQLite: transactions are already serialised (BEGIN IMMEDIATE)."""
    if conn.dialect.name != "postgresql":
        return True
    return bool(conn.execute(sa.text("SELECT pg_try_advisory_xact_lock(:k)"), {"k": SCHEDULER_LOCK}).scalar())


def create_special_job(conn: Connection, campaign_id: int, cluster_id: int, tag: str) -> int:
    """A prologue/epilogue job (param 0), submitted alone and never best-effort by the runner."""
    return int(conn.execute(jobs.insert().values(
        campaign_id=campaign_id, cluster_id=cluster_id, param_id=0, tag=tag, state="to_launch",
        runner_options=SPECIAL_JOB_OPTIONS_JSON).returning(jobs.c.id)).scalar_one())
