"""How a campaign's tasks run on a cluster, in one model built once and read everywhere.

The meta-scheduler builds a task's `RunOptions` from its campaign's properties on that
cluster (and the task's bag priority) when it queues it; they travel as CiGri3's
`runner_options` JSON through `jobs_to_launch` and `jobs`, and the runner reads them back
with `RunOptions.stored`. The nightly window is decided here too, for both."""

from __future__ import annotations

import functools
import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, time
from enum import StrEnum
from typing import Any

log = logging.getLogger("cigri.run_options")


class CampaignType(StrEnum):
    """The JDL's `type` (CiGri3 documented all four, implemented the first two)."""

    BEST_EFFORT = "best-effort"  # best-effort cluster jobs, killed when normal jobs need the resources
    NORMAL = "normal"  # normal cluster jobs
    SEMI_BEST_EFFORT = "semi-best-effort"  # best-effort, but a task killed once runs as a normal job
    NIGHTLY = "nightly"  # normal jobs, queued and submitted only in the nightly window

    @classmethod
    def of(cls, text: str | None) -> CampaignType:
        """The type named by a `type` property; unknown names are best-effort (warned once)."""
        t = (text or "best-effort").strip().lower()
        if t == "besteffort":
            return cls.BEST_EFFORT
        try:
            return cls(t)
        except ValueError:
            if t not in _warned:
                _warned.add(t)
                log.warning("Unknown campaign type %r: treated as best-effort", t)
            return cls.BEST_EFFORT


_warned: set[str] = set()
#: bag priority from which a task is a resubmission (colombo's RESUBMIT priority)
RESUBMITTED_PRIORITY = 20


def is_true(value: Any) -> bool:
    return value is True or (isinstance(value, str) and value.strip().lower() == "true")


@dataclass(frozen=True)
class RunOptions:
    """What the runner needs to know to submit one task on one cluster."""

    besteffort: bool = True
    #: semi-best-effort campaign: a task killed as best-effort on this cluster runs as a normal job
    semi_best_effort: bool = False
    #: submitted only within the nightly window
    nightly: bool = False
    temporal_grouping: bool = False
    dimensional_grouping: bool = False
    #: the grouped submission this task belongs to (set per batch by the scheduler)
    batch_id: int | None = None

    @classmethod
    def for_task(cls, props: Mapping[str, str], bag_priority: int = 10) -> RunOptions:
        """From the campaign's properties on a cluster; a resubmitted task of a
        semi-best-effort campaign (bag priority >= 20) runs as a normal job."""
        ctype = CampaignType.of(props.get("type"))
        if is_true(props.get("test_mode")) or ctype in (CampaignType.NORMAL, CampaignType.NIGHTLY):
            besteffort = False
        elif ctype is CampaignType.SEMI_BEST_EFFORT:
            besteffort = bag_priority < RESUBMITTED_PRIORITY
        else:
            besteffort = True
        temporal = is_true(props.get("temporal_grouping"))
        return cls(besteffort=besteffort, semi_best_effort=ctype is CampaignType.SEMI_BEST_EFFORT,
                   nightly=ctype is CampaignType.NIGHTLY, temporal_grouping=temporal,
                   dimensional_grouping=not temporal and is_true(props.get("dimensional_grouping")))

    @staticmethod
    def stored(text: str | None) -> RunOptions:
        """From a stored `runner_options` JSON: ours, CiGri3's (`{"besteffort":"false"}`) or an
        older form naming the type (`campaign_type`). Anything unreadable means defaults."""
        return _stored(text or "")

    @property
    def grouped(self) -> bool:
        return self.temporal_grouping or self.dimensional_grouping

    def with_batch(self, batch_id: int) -> RunOptions:
        return RunOptions(self.besteffort, self.semi_best_effort, self.nightly, self.temporal_grouping,
                          self.dimensional_grouping, batch_id)

    def to_json(self) -> str:
        """CiGri3's `runner_options` JSON (only the flags that are set, and besteffort)."""
        d: dict[str, Any] = {"besteffort": self.besteffort}
        for k in ("semi_best_effort", "nightly", "temporal_grouping", "dimensional_grouping"):
            if getattr(self, k):
                d[k] = True
        if self.batch_id is not None:
            d["batch_id"] = self.batch_id
        return json.dumps(d, separators=(",", ":"))


#: the options of prologue/epilogue jobs, as CiGri3 stored them (a string "false")
SPECIAL_JOB_OPTIONS_JSON = '{"besteffort":"false"}'


@functools.lru_cache(maxsize=256)
def _stored(text: str) -> RunOptions:
    """Every job of a campaign has the same options text: parse it once."""
    try:
        d = json.loads(text) if text else {}
    except ValueError:
        d = {}
    if not isinstance(d, dict):
        d = {}
    ctype = str(d.get("campaign_type") or "")
    be = d.get("besteffort", True)
    bid = d.get("batch_id")
    return RunOptions(besteffort=not (be is False or (isinstance(be, str) and be.strip().lower() == "false")),
                      semi_best_effort=is_true(d.get("semi_best_effort")) or ctype == CampaignType.SEMI_BEST_EFFORT,
                      nightly=is_true(d.get("nightly")) or ctype == CampaignType.NIGHTLY,
                      temporal_grouping=is_true(d.get("temporal_grouping")),
                      dimensional_grouping=is_true(d.get("dimensional_grouping")),
                      batch_id=bid if isinstance(bid, int) and not isinstance(bid, bool) else None)


def _hhmm(value: Any) -> time:
    parts = [int(x) for x in str(value).split(":")[:2]]
    return time(parts[0] % 24, parts[1] if len(parts) > 1 else 0)


def in_nightly_window(conf: Any, at: datetime | None = None) -> bool:
    """NIGHTLY_START <= local time < NIGHTLY_END (the window may span midnight; equal bounds:
    always open)."""
    t = (at or datetime.now()).time()
    start, end = _hhmm(conf.get("NIGHTLY_START")), _hhmm(conf.get("NIGHTLY_END"))
    if start == end:
        return True
    return start <= t < end if start < end else (t >= start or t < end)
