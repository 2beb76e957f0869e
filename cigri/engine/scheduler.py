"""The affinity scheduler (spec §6.3): stacks, round-robin distribution, batches.

Stacks are exact (order: bag priority DESC, affinity DESC, bag id) but cost only
O(stack size + affinity rows): per campaign one indexed window of the best un-queued
tasks ignoring affinity, plus the few tasks that have a non-zero affinity on a
cluster, merged per cluster. `max` of each pair is a budget that popping never
exceeds (spec §15.1 #9). batch_id comes from a sequence and only for grouped
submissions (§15.2 #12)."""

from __future__ import annotations

import logging
import time
from collections import deque

from sqlalchemy.engine import Connection

from cigri.config import Conf, get_conf
from cigri.db import jobs as jobsdb
from cigri.db import scheduling as sdb
from cigri.engine.metascheduler import Orders
from cigri.run_options import RunOptions

log = logging.getLogger("cigri.scheduler")

Task = tuple[int, int, int, int]  # (task id, param id, bag priority, affinity)


#: campaign -> when its whole bag was last found queued (this process; see _window)
_exhausted_at: dict[int, float] = {}
FULL_CHECK_PERIOD = 30.0


def _still_exhausted(conn: Connection, campaign_ids: list[int]) -> set[int]:
    """Campaigns whose whole bag was queued at the last full look (less than FULL_CHECK_PERIOD
    ago) and whose two ends are still queued (one statement for all of them)."""
    t = time.monotonic()
    fresh = [ca for ca in campaign_ids if t - _exhausted_at.get(ca, -1e9) < FULL_CHECK_PERIOD]
    return sdb.campaigns_with_ends_queued(conn, fresh)


def _fetch_windows(conn: Connection, wanted: list[tuple[int, int, int]], exhausted: set[int],
                   special_of: dict[int, int]) -> dict[int, list[tuple[int, int, int]]]:
    """task windows of several campaigns (one statement on PostgreSQL), except those whose
    whole bag was queued at the last full look less than FULL_CHECK_PERIOD ago and whose two
    ends are still queued: campaigns in their last phase (bag entirely queued, `max` not
    reached) do not cost O(queue) on every pass. Tasks dropped back from the middle of the
    queue (nikita purge) wait for the next full look."""
    t = time.monotonic()
    todo = [(ca, lim, nq) for ca, lim, nq in wanted if ca not in exhausted or special_of.get(ca)]
    got = sdb.task_windows(conn, todo)
    for ca, _lim, nq in todo:
        if got.get(ca):
            _exhausted_at.pop(ca, None)
        elif nq:
            _exhausted_at[ca] = t
    return {ca: got.get(ca, []) for ca, _lim, _nq in wanted}


PREFETCH = 10  # campaigns whose windows are fetched together


def compute_stacks(conn: Connection, orders: Orders, stack_size: int,
                   per_cluster: int) -> tuple[dict[int, dict[int, deque[Task]]], dict[tuple[int, int], int]]:
    """stacks[cluster][campaign] (best task first, popleft) and each pair's budget for this
    pass: min(stack size, max), and at most `per_cluster` tasks *available* per cluster, in
    triplet order (the first campaigns of a cluster drain first anyway). A pass thus stays
    short even when every queue is empty; later passes — woken when a runner's queue runs
    low — top up the rest. Windows are fetched lazily, once per campaign."""
    queued_by_campaign: dict[int, int] = {}
    for (_cl, ca), n in orders.queued.items():
        queued_by_campaign[ca] = queued_by_campaign.get(ca, 0) + n
    planned: dict[tuple[int, int], int] = {}
    clusters_of: dict[int, list[int]] = {}
    for cl, ca, mx in orders.triplets:
        lim = min(stack_size, mx)
        if lim > 0:
            planned[(cl, ca)] = lim
            clusters_of.setdefault(ca, []).append(cl)
    stacks: dict[int, dict[int, deque[Task]]] = {}
    limits: dict[tuple[int, int], int] = {}
    if not planned:
        return stacks, limits
    special = sdb.affinity_tasks(conn, list(clusters_of), sorted({cl for cl, _ in planned}))
    windows: dict[int, tuple[int, list[tuple[int, int, int]]]] = {}
    exhausted = _still_exhausted(conn, list(clusters_of))
    left: dict[int, int] = {}
    # Stacks of one campaign overlap (the same best tasks): its window is sized to the sum of
    # its pairs' limits so every cluster can fill its budget in this pass.
    k_of = {ca: sum(planned[(c, ca)] for c in cls) for ca, cls in clusters_of.items()}
    n_special_of = {ca: max(len(special.get((c, ca), ())) for c in cls) for ca, cls in clusters_of.items()}
    for i, (cl, ca, _mx) in enumerate(orders.triplets):
        lim = min(planned.get((cl, ca), 0), left.setdefault(cl, per_cluster))
        if lim <= 0:
            continue
        if ca not in windows:
            # this campaign and the next ones in triplet order, in one statement
            batch: list[tuple[int, int, int]] = []
            for _c2, ca2, _m2 in orders.triplets[i:]:
                if ca2 in windows or ca2 not in clusters_of or any(b[0] == ca2 for b in batch):
                    continue
                batch.append((ca2, k_of[ca2] + n_special_of[ca2], queued_by_campaign.get(ca2, 0)))
                if len(batch) >= PREFETCH:
                    break
            for ca2, w in _fetch_windows(conn, batch, exhausted, n_special_of).items():
                windows[ca2] = (k_of[ca2], w)
        k, window = windows[ca]
        sp = special.get((cl, ca), [])
        sp_ids = {t[0] for t in sp}
        plain = [(tid, pid, prio, 0) for tid, pid, prio in window if tid not in sp_ids][:k]
        stack = sorted(plain + sp, key=lambda t: (-t[2], -t[3], t[0]))[:k]
        if not stack:
            continue
        stacks.setdefault(cl, {})[ca] = deque(stack)
        limits[(cl, ca)] = lim
        left[cl] -= min(lim, len(stack))
    return stacks, limits


def setup_queues(orders: Orders, stacks: dict[int, dict[int, deque[Task]]],
                 limits: dict[tuple[int, int], int]) -> dict[int, list[tuple[Task, int]]]:
    """Round-robin: each pass gives every cluster at most one task, from its first campaign
    (triplet order) with a non-empty stack; a task goes to exactly one cluster; a pair never
    gets more than its limit (hence never more than `max`, spec §15.1 #9)."""
    cluster_order: list[int] = []
    campaigns_of: dict[int, list[int]] = {}
    budget: dict[tuple[int, int], int] = {}
    for cl, ca, _mx in orders.triplets:
        if cl not in cluster_order:
            cluster_order.append(cl)
        if ca in stacks.get(cl, {}):
            campaigns_of.setdefault(cl, []).append(ca)
            budget[(cl, ca)] = limits[(cl, ca)]
    given: set[int] = set()
    queues: dict[int, list[tuple[Task, int]]] = {cl: [] for cl in cluster_order}
    # stacks only shrink and budgets only decrease: an exhausted campaign stays exhausted,
    # so each cluster keeps a cursor on its first live campaign (linear, not quadratic).
    first = {cl: 0 for cl in cluster_order}
    active = [cl for cl in cluster_order if campaigns_of.get(cl)]
    while active:
        still: list[int] = []
        for cl in active:
            cas = campaigns_of[cl]
            while first[cl] < len(cas):
                ca = cas[first[cl]]
                st = stacks[cl][ca]
                while st and st[0][0] in given:
                    st.popleft()
                if st and budget[(cl, ca)] > 0:
                    break
                first[cl] += 1
            if first[cl] >= len(cas):
                continue
            ca = cas[first[cl]]
            task = stacks[cl][ca].popleft()
            given.add(task[0])
            budget[(cl, ca)] -= 1
            queues[cl].append((task, ca))
            still.append(cl)
        active = still
    return queues


def batch_tasks(conn: Connection, orders: Orders, queues: dict[int, list[tuple[Task, int]]]) -> dict[int, int]:
    """Split each cluster's queue into consecutive runs of one campaign with the same
    runner options and insert them (order_num = batch number, from 1 on every pass)."""
    added: dict[int, int] = {}
    for cl, q in queues.items():
        rows: list[dict[str, object]] = []
        order_num = 0
        prev: tuple[int, RunOptions] | None = None
        batch_json = ""
        cache: dict[tuple[int, int], RunOptions] = {}
        for task, ca in q:
            ck = (ca, task[2])  # options depend on the campaign and the bag priority only
            opts = cache.get(ck)
            if opts is None:
                opts = cache[ck] = RunOptions.for_task(orders.props[(cl, ca)], task[2])
            key = (ca, opts)
            if key != prev:
                order_num += 1
                prev = key
                batch_json = (opts.with_batch(jobsdb.new_batch_id(conn)) if opts.grouped else opts).to_json()
            rows.append({"task_id": task[0], "cluster_id": cl, "runner_options": batch_json,
                         "order_num": order_num})
        added[cl] = sdb.insert_queue(conn, rows)
    return {cl: n for cl, n in added.items() if n}


def schedule(conn: Connection, orders: Orders, conf: Conf | None = None) -> dict[int, int]:
    """SchedulerAffinity.do: returns cluster -> number of tasks queued."""
    conf = conf or get_conf()
    per_cluster = 10 * int(conf.get("RUNNER_TAP_INCREASE_MAX"))  # one full queue at the maximum rate
    stacks, limits = compute_stacks(conn, orders, int(conf.get("SCHEDULER_STACK_SIZE")), per_cluster)
    if not stacks:
        return {}
    return batch_tasks(conn, orders, setup_queues(orders, stacks, limits))
