"""CiGri's public event vocabulary: the event codes users see (CiGri3's) and what each
one means to the engine."""

from __future__ import annotations

from cigri.clusters.base import Outcome

#: how a kill by the cluster is named in the RESUBMIT event users see (CiGri3's words)
KILL_CAUSE_WORDS: dict[Outcome, str] = {
    Outcome.PREEMPTED: "BESTEFFORT_KILL",
    Outcome.WALLTIME: "WALLTIME",
    Outcome.KILLED: "FRAG_JOB_REQUEST",
    Outcome.LOST: "EXTERMINATE",
}
