"""Taps: per (cluster, campaign) flow control. The rate is the array size a
runner submits in one go; a closed tap means "this cluster should not get more of it"."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from cigri.config import Conf, get_conf
from cigri.db.schema import now, taps


@dataclass
class Tap:
    id: int
    cluster_id: int
    campaign_id: int
    state: str
    rate: int
    close_date: datetime | None

    @property
    def is_open(self) -> bool:
        return self.state == "open"


def _tap(row: sa.Row) -> Tap:  # type: ignore[type-arg]
    return Tap(int(row.id), int(row.cluster_id), int(row.campaign_id), row.state, int(row.rate), row.close_date)


def get_taps(conn: Connection, cluster_id: int, campaign_ids: list[int] | None = None) -> dict[int, Tap]:
    """campaign_id -> tap, for one cluster."""
    q = sa.select(taps).where(taps.c.cluster_id == cluster_id).order_by(taps.c.id)
    if campaign_ids is not None:
        if not campaign_ids:
            return {}
        q = q.where(taps.c.campaign_id.in_(campaign_ids))
    out: dict[int, Tap] = {}
    for r in conn.execute(q):
        out.setdefault(int(r.campaign_id), _tap(r))
    return out


def get_or_create_tap(conn: Connection, cluster_id: int, campaign_id: int, conf: Conf | None = None) -> Tap:
    found = get_taps(conn, cluster_id, [campaign_id]).get(campaign_id)
    if found is not None:
        return found
    rate = (conf or get_conf()).get("RUNNER_DEFAULT_INITIAL_NUMBER_OF_JOBS")
    tid = conn.execute(taps.insert().values(cluster_id=cluster_id, campaign_id=campaign_id, state="open",
                                            rate=rate).returning(taps.c.id)).scalar_one()
    return Tap(int(tid), cluster_id, campaign_id, "open", int(rate), None)


def close_tap(conn: Connection, tap: Tap) -> None:
    if tap.state == "open":
        t = now()
        conn.execute(taps.update().where(taps.c.id == tap.id).values(state="closed", close_date=t))
        tap.state, tap.close_date = "closed", t


def open_tap(conn: Connection, tap: Tap) -> None:
    if tap.state == "closed":
        conn.execute(taps.update().where(taps.c.id == tap.id).values(state="open"))
        tap.state = "open"


def set_rate(conn: Connection, tap: Tap, rate: int) -> None:
    if rate != tap.rate:
        conn.execute(taps.update().where(taps.c.id == tap.id).values(rate=rate))
        tap.rate = rate


def reset_tap(conn: Connection, tap: Tap, conf: Conf | None = None) -> None:
    set_rate(conn, tap, (conf or get_conf()).get("RUNNER_DEFAULT_INITIAL_NUMBER_OF_JOBS"))


def in_grace_period(tap: Tap, conf: Conf | None = None) -> bool:
    """Closed less than RUNNER_TAP_GRACE_PERIOD seconds ago."""
    if tap.close_date is None:
        return False
    grace = (conf or get_conf()).get("RUNNER_TAP_GRACE_PERIOD")
    return (now() - tap.close_date).total_seconds() < grace


def increase_rate(conn: Connection, tap: Tap, conf: Conf | None = None, avg_duration: int | None = None,
                  temporal_grouping: bool = False) -> None:
    """Normal campaigns: rate × factor up to the max. Temporal grouping: the batch size that
    fills RUNNER_TEMPORAL_GROUPING_DURATION seconds (CiGri3 hard-coded 900 s)."""
    conf = conf or get_conf()
    if temporal_grouping:
        cap = conf.get("RUNNER_MAX_TEMPORAL_GROUPED_JOBS")
        target = conf.get("RUNNER_TEMPORAL_GROUPING_DURATION")
        rate = min(target // avg_duration + 1, cap) if avg_duration else cap
        set_rate(conn, tap, int(rate))
        return
    mx = conf.get("RUNNER_TAP_INCREASE_MAX")
    if tap.rate < mx:
        set_rate(conn, tap, min(int(tap.rate * conf.get("RUNNER_TAP_INCREASE_FACTOR")), mx))


def decrease_rate(conn: Connection, tap: Tap, conf: Conf | None = None) -> None:
    """Divide the rate (floor: the default) unless the tap was closed within the grace period."""
    conf = conf or get_conf()
    if in_grace_period(tap, conf):
        return
    default = conf.get("RUNNER_DEFAULT_INITIAL_NUMBER_OF_JOBS")
    if tap.rate > default:
        set_rate(conn, tap, max(int(tap.rate / conf.get("RUNNER_TAP_INCREASE_FACTOR")), default))
