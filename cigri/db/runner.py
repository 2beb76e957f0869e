"""Queries of the runner: the jobs it follows on its cluster, campaign settings, and the
guarded state updates it records. Every update is conditional on the state the
runner read, so a concurrent change (nikita, an admin) is never overwritten."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from cigri.clusters.base import Outcome
from cigri.db.schema import campaign_properties, campaigns, jobs, parameters, taps
from cigri.run_options import RunOptions
from cigri.states import LIVE_CAMPAIGN_STATES, POLLED_JOB_STATES


@dataclass
class RunnerJob:
    id: int
    campaign_id: int
    param_id: int
    state: str
    remote_id: int | None
    tag: str | None
    options: RunOptions
    param: str
    grid_user: str
    campaign_state: str
    start_time: datetime | None = None
    batch_id: int | None = None
    submission_time: datetime | None = None  # CiGri's own clock, set when the cluster accepted it
    extra: dict[str, Any] = field(default_factory=dict)


def _select_jobs() -> sa.Select[Any]:
    return (sa.select(jobs.c.id, jobs.c.campaign_id, jobs.c.param_id, jobs.c.state, jobs.c.remote_id, jobs.c.tag,
                      jobs.c.runner_options, parameters.c.param, campaigns.c.grid_user, campaigns.c.state,
                      jobs.c.start_time, jobs.c.batch_id, jobs.c.submission_time)
            .select_from(jobs.join(campaigns, campaigns.c.id == jobs.c.campaign_id)
                         .outerjoin(parameters, parameters.c.id == jobs.c.param_id)))


def _rows(conn: Connection, q: sa.Select[Any]) -> list[RunnerJob]:
    return [RunnerJob(int(r[0]), int(r[1]), int(r[2]), r[3], int(r[4]) if r[4] is not None else None, r[5],
                      RunOptions.stored(r[6]), r[7] if r[7] is not None and r[2] != 0 else "", r[8], r[9], r[10],
                      int(r[11]) if r[11] is not None else None, r[12])
            for r in conn.execute(q)]


def jobs_in_states(conn: Connection, cluster_id: int, states: Iterable[str] = POLLED_JOB_STATES) -> list[RunnerJob]:
    q = _select_jobs().where(jobs.c.cluster_id == cluster_id, jobs.c.state.in_(list(states))).order_by(jobs.c.id)
    return _rows(conn, q)


def jobs_by_ids(conn: Connection, ids: list[int]) -> list[RunnerJob]:
    if not ids:
        return []
    return _rows(conn, _select_jobs().where(jobs.c.id.in_(ids)).order_by(jobs.c.id))


def max_remote_id(conn: Connection, cluster_id: int, exclude_states: tuple[str, ...] = ("launching",)) -> int:
    q = sa.select(sa.func.max(jobs.c.remote_id)).where(jobs.c.cluster_id == cluster_id,
                                                       jobs.c.state.notin_(list(exclude_states)))
    return int(conn.execute(q).scalar() or 0)


def known_remote_ids(conn: Connection, cluster_ids: list[int], remote_ids: list[int]) -> set[int]:
    if not remote_ids:
        return set()
    q = sa.select(jobs.c.remote_id).where(jobs.c.cluster_id.in_(cluster_ids), jobs.c.remote_id.in_(remote_ids))
    return {int(r[0]) for r in conn.execute(q)}


def properties(conn: Connection, campaign_ids: Iterable[int], cluster_id: int) -> dict[int, dict[str, str]]:
    """campaign_id -> {property: value} on this cluster (what the runner submits with)."""
    ids = list(set(campaign_ids))
    if not ids:
        return {}
    q = (sa.select(campaign_properties.c.campaign_id, campaign_properties.c.name, campaign_properties.c.value)
         .where(campaign_properties.c.campaign_id.in_(ids),
                sa.or_(campaign_properties.c.cluster_id == cluster_id, campaign_properties.c.cluster_id.is_(None)))
         .order_by(campaign_properties.c.cluster_id.is_(None).desc(), campaign_properties.c.id))
    out: dict[int, dict[str, str]] = {i: {} for i in ids}
    for cid, name, value in conn.execute(q):
        out[int(cid)][name] = value  # cluster-specific rows come last and win
    return out


def live_campaigns(conn: Connection, cluster_id: int) -> list[int]:
    """in_treatment/paused campaigns having properties on this cluster (taps to initialise)."""
    q = (sa.select(campaigns.c.id).distinct()
         .select_from(campaigns.join(campaign_properties, campaign_properties.c.campaign_id == campaigns.c.id))
         .where(campaigns.c.state.in_(LIVE_CAMPAIGN_STATES), campaign_properties.c.cluster_id == cluster_id))
    return [int(r[0]) for r in conn.execute(q)]


def reset_and_close_taps(conn: Connection, cluster_id: int, rate: int, t: datetime) -> None:
    """Cluster blacklisted: every tap of the cluster back to the default rate, closed."""
    conn.execute(taps.update().where(taps.c.cluster_id == cluster_id).values(rate=rate))
    conn.execute(taps.update().where(taps.c.cluster_id == cluster_id, taps.c.state == "open")
                 .values(state="closed", close_date=t))


def avg_duration(conn: Connection, campaign_id: int) -> int | None:
    """Integer average duration (s) of the campaign's terminated jobs (temporal grouping size)."""
    q = sa.select(jobs.c.start_time, jobs.c.stop_time).where(
        jobs.c.campaign_id == campaign_id, jobs.c.state == "terminated", jobs.c.start_time.is_not(None),
        jobs.c.stop_time.is_not(None), jobs.c.param_id != 0).order_by(jobs.c.id.desc()).limit(200)
    d = [(b - a).total_seconds() for a, b in conn.execute(q)]
    return int(sum(d) / len(d)) if d else None


def semi_best_effort_killed(conn: Connection, param_ids: list[int], cluster_id: int) -> set[int]:
    """Params whose previous attempt on this cluster was killed as best-effort (semi-best-effort)."""
    if not param_ids:
        return set()
    q = (sa.select(jobs.c.param_id).distinct()
         .where(jobs.c.param_id.in_(param_ids), jobs.c.cluster_id == cluster_id,
                jobs.c.kill_cause == Outcome.PREEMPTED.value))
    return {int(r[0]) for r in conn.execute(q)}
