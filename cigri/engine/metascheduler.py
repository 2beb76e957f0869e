"""The meta-scheduler (spec §6): prologue/epilogue launching, ordering of the
(cluster, campaign) pairs, then the affinity scheduler that fills jobs_to_launch.

Differences from CiGri3 (docs/compat.md): clusters are ordered by power DESC, then
first appearance (§15.2 #13); all test-mode campaigns come first, stably (#14);
campaign-specific blacklists and disabled clusters drop the pair (#15); `nightly`
campaigns are queued only inside NIGHTLY_START-NIGHTLY_END (their queue entries are
withdrawn outside it); `semi-best-effort` campaigns run fresh tasks as best-effort
jobs and resubmitted ones (killed, priority >= 20) as normal jobs so they finish."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy.engine import Connection, Engine

from cigri.config import Conf, get_conf
from cigri.db import events as eventsdb
from cigri.db import scheduling as sdb
from cigri.db.engine import transaction
from cigri.db.notify import notify as db_notify
from cigri.db.notify import runner_channel
from cigri.run_options import CampaignType, in_nightly_window, is_true
from cigri.states import UNFINISHED_JOB_STATES

log = logging.getLogger("cigri.metascheduler")

BESTEFFORT_TYPES = ("best-effort", "besteffort")
# ---------------------------------------------------------------- step 1: prologue / epilogue


def launch_prologues_epilogues(conn: Connection, campaigns: list[sdb.RunningCampaign],
                               props: dict[int, dict[int, dict[str, str]]]) -> list[int]:
    """Create the prologue/epilogue jobs that are due (spec §6.1). Returns the new job ids."""
    with_pro = [c.id for c in campaigns if any("prologue" in p for p in props[c.id].values())]
    with_epi = [c.id for c in campaigns if any("epilogue" in p for p in props[c.id].values())]
    if not with_pro and not with_epi:
        return []
    created: list[int] = []
    global_bl = eventsdb.globally_blacklisted_clusters(conn)
    camp_bl = eventsdb.campaign_blacklists(conn)
    states = sdb.cluster_states(conn)

    def usable(cl: int, ca: int, what: str) -> bool:
        st = states.get(cl)
        if st is None or not st.enabled:
            return False
        if cl in global_bl or (cl, ca) in camp_bl:
            log.info("Not running %s of campaign %d on cluster %s because of blacklist", what, ca, st.name)
            return False
        return True

    for tag, ids in (("prologue", with_pro), ("epilogue", with_epi)):
        if not ids:
            continue
        done: set[tuple[int, int]] = set()
        running: set[tuple[int, int]] = set()
        for j in sdb.special_jobs(conn, ids, tag):
            key = (int(j["cluster_id"] or 0), int(j["campaign_id"]))
            if j["state"] == "terminated":
                done.add(key)
            elif j["state"] in UNFINISHED_JOB_STATES:
                running.add(key)
        prog = sdb.progress(conn, ids) if tag == "epilogue" else {}
        for ca in ids:
            if tag == "prologue":
                due = None  # evaluated lazily: an indexed EXISTS
            else:
                p = prog.get(ca)
                if p is None or not p.empty:
                    continue
            for cl, cprops in props[ca].items():
                if tag not in cprops or (cl, ca) in done or (cl, ca) in running:
                    continue
                if tag == "prologue":
                    if due is None:
                        due = sdb.has_unqueued_tasks(conn, ca)
                    if not due:
                        break
                if not usable(cl, ca, tag):
                    continue
                jid = sdb.create_special_job(conn, ca, cl, tag)
                log.info("Launching %s of campaign %d on cluster %d (job %d)", tag, ca, cl, jid)
                created.append(jid)
                db_notify(conn, runner_channel(cl))
    return created


# ---------------------------------------------------------------- step 2: ordering


@dataclass
class Orders:
    """Result of compute_campaigns_orders: triplets plus what the scheduler needs."""

    triplets: list[tuple[int, int, int]] = field(default_factory=list)
    props: dict[tuple[int, int], dict[str, str]] = field(default_factory=dict)  # (cluster, campaign)
    withdrawn: list[tuple[int, int]] = field(default_factory=list)  # pairs whose queue must be emptied
    queued: dict[tuple[int, int], int] = field(default_factory=dict)  # (cluster, campaign) -> queue entries


def compute_orders(conn: Connection, conf: Conf | None = None, when: datetime | None = None,
                   campaigns: list[sdb.RunningCampaign] | None = None,
                   props: dict[int, dict[int, dict[str, str]]] | None = None) -> Orders:
    conf = conf or get_conf()
    if campaigns is None:
        campaigns = sdb.running_campaigns(conn)
    ids = [c.id for c in campaigns]
    if props is None:
        props = sdb.properties_of(conn, ids)
    out = Orders()
    if not campaigns:
        return out
    states = sdb.cluster_states(conn)
    threshold = conf.get("STRESS_FACTOR")
    global_bl = eventsdb.globally_blacklisted_clusters(conn)
    camp_bl = eventsdb.campaign_blacklists(conn)
    owners = {c.id: c.grid_user for c in campaigns}
    nightly_open = in_nightly_window(conf, when)

    # clusters: first appearance, then stable sort by power DESC (NULL = 0) (spec §15.2 #13)
    first_seen: list[int] = []
    for c in campaigns:
        for cl in props[c.id]:
            if cl not in first_seen:
                first_seen.append(cl)
    cluster_order = sorted(first_seen, key=lambda cl: -((states[cl].power or 0) if cl in states else 0))

    prologue_ok: set[tuple[int, int]] = set()
    with_pro = [c.id for c in campaigns if any("prologue" in p for p in props[c.id].values())]
    for j in sdb.special_jobs(conn, with_pro, "prologue"):
        if j["state"] == "terminated":
            prologue_ok.add((int(j["cluster_id"] or 0), int(j["campaign_id"])))

    occupying = sdb.occupying_counts(conn, ids)
    queued = out.queued = sdb.queued_counts(conn)
    taps = sdb.taps_of(conn, ids)
    default_rate = conf.get("RUNNER_DEFAULT_INITIAL_NUMBER_OF_JOBS")

    kept: dict[int, list[tuple[int, bool, int]]] = {}  # cluster -> [(campaign, test, max)]
    new_taps: list[tuple[int, int]] = []
    for c in campaigns:
        for cl, p in props[c.id].items():
            st = states.get(cl)
            if st is None or not st.enabled:
                continue
            if "prologue" in p and (cl, c.id) not in prologue_ok:
                continue
            if cl in global_bl or (cl, c.id) in camp_bl:
                continue
            if st.stress_factor >= threshold:
                continue
            if CampaignType.of(p.get("type")) is CampaignType.NIGHTLY and not nightly_open:
                if queued.get((cl, c.id)):
                    out.withdrawn.append((cl, c.id))
                continue
            test = is_true(p.get("test_mode"))
            max_jobs: int | None = 1 if test else _int_or_none(p.get("max_jobs"))
            q = queued.get((cl, c.id), 0)
            mx: int | None = None
            if max_jobs is not None:
                mx = max_jobs - (occupying.get((cl, c.id), 0) + q)
            tap = taps.get((cl, c.id))
            if tap is None:
                new_taps.append((cl, c.id))
                rate = default_rate
            else:
                rate = tap[2] if tap[2] else default_rate
            max_to_queue = max(rate * 10 - q, 0)
            if mx is None or max_to_queue < mx:
                mx = max_to_queue
            kept.setdefault(cl, []).append((c.id, test, mx))
            out.props[(cl, c.id)] = p

    sdb.create_taps(conn, new_taps, default_rate)
    prio = sdb.users_priorities(conn)
    for cl in cluster_order:
        pairs = kept.get(cl, [])
        pairs.sort(key=lambda x: (-prio.get((owners[x[0]], cl), 0), x[0]))
        ordered = [x for x in pairs if x[1]] + [x for x in pairs if not x[1]]
        out.triplets.extend((cl, ca, mx) for ca, _test, mx in ordered)
    return out


def _int_or_none(v: str | None) -> int | None:
    if v is None or str(v).strip() in ("", "None", "nil", "null"):
        return None
    try:
        return int(float(v))
    except ValueError:
        log.warning("Ignoring bad max_jobs value %r", v)
        return None


def compute_campaigns_orders(conn: Connection, conf: Conf | None = None,
                             when: datetime | None = None) -> list[list[int]]:
    """Spec §6.2 / AC-39: [[cluster_id, campaign_id, max], ...]."""
    return [list(t) for t in compute_orders(conn, conf, when).triplets]


# ---------------------------------------------------------------- the whole pass


@dataclass
class PassResult:
    prologues: list[int] = field(default_factory=list)
    queued: dict[int, int] = field(default_factory=dict)  # cluster -> entries added
    withdrawn: int = 0
    skipped: bool = False  # another meta-scheduler held the lock


def run_once(engine: Engine, conf: Conf | None = None, when: datetime | None = None) -> PassResult:
    """One meta-scheduler pass: prologue/epilogue (one transaction), then ordering and
    queuing (one transaction, under the scheduler lock). Runners of clusters that got
    new queue entries are woken."""
    from cigri.engine.scheduler import schedule

    conf = conf or get_conf()
    res = PassResult()
    with transaction(engine) as conn:
        if not sdb.try_lock(conn):
            res.skipped = True
            return res
        campaigns = sdb.running_campaigns(conn)
        props = sdb.properties_of(conn, [c.id for c in campaigns])
        res.prologues = launch_prologues_epilogues(conn, campaigns, props)
    with transaction(engine) as conn:
        if not sdb.try_lock(conn):
            res.skipped = True
            return res
        orders = compute_orders(conn, conf, when, campaigns, props)
        for cl, ca in orders.withdrawn:
            res.withdrawn += sdb.unqueue(conn, cl, ca)
        res.queued = schedule(conn, orders, conf)
        for cl, n in res.queued.items():
            if n:
                db_notify(conn, runner_channel(cl))
    if res.queued:
        log.debug("Queued %s", res.queued)
    return res
