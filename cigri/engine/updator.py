"""The updator (spec §10.2): finished campaigns, autofix and blacklist lifting (through
colombo), grid usage snapshots and stress factors.

Fixes: batch_waiting jobs keep a campaign alive and the epilogue check is real (§15.2 #1,
#11, see cigri.db.campaign_state); completion_time is written; grid usage counts distinct
resource units everywhere and matches CiGri's running jobs per cluster (#30); the
adapters' errors are recorded as cluster events with their code (colombo then decides)."""

from __future__ import annotations

import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy.engine import Engine

from cigri.clock import now
from cigri.clusters import get_adapter
from cigri.clusters.base import ClusterAPIError, ClusterInfo, Outcome, RemoteJob
from cigri.config import Conf, get_conf
from cigri.db import campaign_state
from cigri.db import events as eventsdb
from cigri.db import jobs as jobsdb
from cigri.db import scheduling as sdb
from cigri.db import usage as usagedb
from cigri.db.clusters import list_clusters, user_mapping
from cigri.db.engine import transaction
from cigri.db.notify import CAMPAIGNS, COLOMBO, JUDAS, METASCHEDULER, notify

log = logging.getLogger("cigri.updator")


@dataclass
class UpdatorResult:
    finished: list[int] = field(default_factory=list)
    autofixed: int = 0
    lifted: int = 0
    usage_rows: int = 0
    stress_changed: list[int] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


def record_cluster_error(engine: Engine, cluster_id: int, err: Exception, what: str,
                         default_code: str = "GET_JOBS") -> None:
    """An adapter failed: record the cluster event its error names (colombo decides);
    an unexpected exception gets `default_code` (CiGri3's per-operation codes)."""
    code = getattr(err, "code", None) if isinstance(err, ClusterAPIError) else default_code
    log.error("%s on cluster %d failed: %s", what, cluster_id, err)
    if not code:
        return
    with transaction(engine) as conn:
        eventsdb.create_event(conn, "cluster", code, cluster_id=cluster_id,
                              state="open" if getattr(err, "event_open", True) else "closed",
                              message=f"{what}: {err}")
        notify(conn, COLOMBO)
        notify(conn, JUDAS)


# ---------------------------------------------------------------- 1. finished campaigns


def update_finished(engine: Engine) -> list[int]:
    with engine.connect() as conn:
        running = [c.id for c in sdb.running_campaigns(conn)]
        cands = campaign_state.candidates(conn, running)
    done = []
    for cid in cands:
        with transaction(engine) as conn:
            if campaign_state.complete_if_finished(conn, cid):
                eventsdb.create_event(conn, "notify", "FINISHED_CAMPAIGN", state="closed", campaign_id=cid,
                                      message=f"Campaign {cid} is finished")
                notify(conn, JUDAS)
                notify(conn, CAMPAIGNS)  # whoever follows campaigns (`cigri local run`)
                done.append(cid)
                log.info("Campaign %d is finished", cid)
    return done


# ---------------------------------------------------------------- 5. grid usage


def _available(res: dict[str, Any]) -> bool:
    """The adapter's verdict (cigri.clusters.base.ClusterAdapter.get_resources)."""
    return res.get("available") is True


def compute_usage(cluster: ClusterInfo, resources: list[dict[str, Any]], running: list[RemoteJob],
                  cigri_ids: set[int]) -> tuple[int, int, int, int]:
    """(max, used, unavailable, used_by_cigri) in distinct `resource_unit` units."""
    unit_key = cluster.resource_unit or "resource_id"
    unit_of: dict[Any, Any] = {}
    unavailable: set[Any] = set()
    for r in resources:
        rid = r.get("id", r.get("resource_id"))
        unit = r.get(unit_key, rid) if unit_key != "resource_id" else rid
        unit_of[rid] = unit
        if not _available(r):
            unavailable.add(unit)
    all_units = set(unit_of.values())
    used: set[Any] = set()
    by_cigri: set[Any] = set()
    for job in running:
        if job.outcome is not Outcome.RUNNING:
            continue
        for res in job.resources:
            rid = res.get("id", res.get("resource_id")) if isinstance(res, dict) else res
            if rid not in unit_of:
                continue  # resource of another logical cluster
            u = unit_of[rid]
            used.add(u)
            if int(job.id) in cigri_ids:
                by_cigri.add(u)
    return len(all_units), len(used), len(unavailable), len(by_cigri)


def _adapter(engine: Engine, cluster: ClusterInfo, conf: Conf) -> Any:
    with engine.connect() as conn:
        mapping = user_mapping(conn, cluster.id)
    return get_adapter(cluster, conf, mapping)


def _usable_clusters(engine: Engine) -> list[ClusterInfo]:
    with engine.connect() as conn:
        bl = eventsdb.globally_blacklisted_clusters(conn)
        return [c for c in list_clusters(conn, enabled_only=True) if c.id not in bl]


def update_grid_usage(engine: Engine, conf: Conf, force: bool = False) -> int:
    period = int(conf.get("GRID_USAGE_UPDATE_PERIOD"))
    if period <= 0:  # disabled
        return 0
    with engine.connect() as conn:
        last = usagedb.last_snapshot(conn)
    date = now()
    if not force and last is not None and (date - last).total_seconds() < period:
        return 0
    clusters = _usable_clusters(engine)

    def one(cluster: ClusterInfo) -> tuple[int, int, int, int] | None:
        try:
            ad = _adapter(engine, cluster, conf)
            try:
                resources = ad.get_resources()
                running = ad.get_running_jobs()
            finally:
                ad.close()
        except Exception as e:  # noqa: BLE001 - one cluster must not stop the others
            record_cluster_error(engine, cluster.id, e, "Grid usage")
            return None
        with engine.connect() as conn:
            ids = usagedb.running_remote_ids(conn, cluster.id)
        return compute_usage(cluster, resources, running, ids)

    rows = 0
    if not clusters:
        return 0
    with ThreadPoolExecutor(max_workers=min(8, len(clusters))) as pool:
        results = list(pool.map(one, clusters))
    with transaction(engine) as conn:
        for cluster, r in zip(clusters, results, strict=True):
            if r is None:
                continue
            usagedb.insert_usage(conn, date, cluster.id, r[0], r[1], r[2], r[3])
            rows += 1
    return rows


# ---------------------------------------------------------------- 6. stress factors


_last_stress = 0.0
STRESS_PERIOD = 10.0  # seconds between two stress-factor reads (CiGri3: every almighty cycle, >= 10 s)


def update_stress(engine: Engine, conf: Conf, force: bool = False) -> list[int]:
    global _last_stress
    threshold = float(conf.get("STRESS_FACTOR"))
    changed: list[int] = []
    if not force and time.monotonic() - _last_stress < STRESS_PERIOD:
        return changed
    _last_stress = time.monotonic()
    for cluster in _usable_clusters(engine):
        try:
            ad = _adapter(engine, cluster, conf)
            try:
                value = float(ad.get_stress_factor() or 0.0)
            finally:
                ad.close()
        except Exception as e:  # noqa: BLE001
            record_cluster_error(engine, cluster.id, e, "Stress factor", "GET_STRESS_FACTOR")
            continue
        with transaction(engine) as conn:
            if usagedb.set_stress_factor(conn, cluster.id, value):
                changed.append(cluster.id)
            open_ids = eventsdb.open_cluster_events(conn, cluster.id, "UNDER_STRESS")
            if value >= threshold and not open_ids:
                eventsdb.create_event(conn, "cluster", "UNDER_STRESS", cluster_id=cluster.id,
                                      message=f"Cluster {cluster.name} is under stress ({value}/{threshold})!")
                notify(conn, JUDAS)
            elif value < threshold and open_ids:
                eventsdb.close_events(conn, open_ids, checked=True)
                notify(conn, METASCHEDULER)  # queuing may resume there
    return changed


# ---------------------------------------------------------------- 2. resubmission rate


_last_resubmit_check = 0.0
RESUBMIT_CHECK_PERIOD = 60.0


def too_many_resubmit(engine: Engine, conf: Conf, window: int = 50, ratio: float = 0.6,
                      force: bool = False) -> list[tuple[int, int]]:
    """CiGri3's prepared check, made real per cluster: among the last `window` ended jobs of a
    running campaign on a cluster, more than `ratio` resubmitted ⇒ an open campaign event
    TOO_MANY_RESUBMIT for (cluster, campaign) that colombo turns into a campaign blacklist.
    Best-effort kills do not count (preemption is not the campaign's fault), and once such an
    event is fixed only jobs ended after the fix count. Cost: `window` rows per pair."""
    global _last_resubmit_check
    created: list[tuple[int, int]] = []
    if not force and time.monotonic() - _last_resubmit_check < RESUBMIT_CHECK_PERIOD:
        return created
    _last_resubmit_check = time.monotonic()
    with engine.connect() as conn:
        running = sdb.running_campaigns(conn)
        props = sdb.properties_of(conn, [c.id for c in running])
        already = eventsdb.pairs_with_open(conn, "TOO_MANY_RESUBMIT")
        fixed = eventsdb.last_closed(conn, "TOO_MANY_RESUBMIT")
        pairs = [(cl, c.id) for c in running for cl in props[c.id] if (cl, c.id) not in already]
        hits = []
        for cl, ca in pairs:
            resub, total = jobsdb.resubmission_counts(conn, ca, cl, window, fixed.get((cl, ca)))
            if total > 10 and resub / total > ratio:
                hits.append((cl, ca, resub, total))
    for cl, ca, resub, total in hits:
        with transaction(engine) as conn:
            eventsdb.create_event(conn, "campaign", "TOO_MANY_RESUBMIT", cluster_id=cl, campaign_id=ca,
                                  message=f"{resub} of the last {total} jobs of campaign {ca} on cluster {cl} "
                                          "were resubmitted: the cluster is blacklisted for this campaign")
            notify(conn, COLOMBO)
            notify(conn, JUDAS)
        created.append((cl, ca))
    return created


# ---------------------------------------------------------------- the pass


def run_once(engine: Engine, conf: Conf | None = None, with_clusters: bool = True,
             force: bool = False) -> UpdatorResult:
    """One updator pass. `with_clusters=False` skips the steps that call cluster APIs;
    `force` ignores the periods of the rate-limited steps (one-shot runs, tests)."""
    from cigri.engine import colombo

    conf = conf or get_conf()
    res = UpdatorResult()
    res.finished = update_finished(engine)
    try:
        too_many_resubmit(engine, conf, force=force)
    except Exception as e:  # noqa: BLE001
        log.exception("Resubmission-rate check failed")
        res.errors.append(f"too_many_resubmit: {e}")
    if with_clusters:
        try:
            res.autofixed = colombo.autofix_clusters(engine, conf)
        except Exception as e:  # noqa: BLE001
            log.exception("Autofix failed")
            res.errors.append(f"autofix: {e}")
    with transaction(engine) as conn:
        res.lifted = colombo.check_blacklists(conn)
        if res.lifted:
            notify(conn, METASCHEDULER)
            notify(conn, JUDAS)
    if with_clusters:
        try:
            res.usage_rows = update_grid_usage(engine, conf, force=force)
        except Exception as e:  # noqa: BLE001
            log.exception("Could not update the grid_usage table!")
            res.errors.append(f"grid_usage: {e}")
        res.stress_changed = update_stress(engine, conf, force=force)
    return res


def stats(values: list[float]) -> tuple[float, float]:
    """Average and standard deviation (DEBUG diagnostics)."""
    if not values:
        return 0.0, 0.0
    avg = sum(values) / len(values)
    return avg, (sum((v - avg) ** 2 for v in values) / len(values)) ** 0.5

