"""Normal-job workloads for bench/harvest.py: a seeded generator and the Standard Workload
Format (SWF) of the Parallel Workloads Archive, read and written.

A workload is a list of `Job`s: when each arrives (seconds after the start), on which
cluster, how many cores, how long it really runs and how long its user asked for
(the walltime: users over-ask, and the batch scheduler plans with what they asked).

SWF mapping (one line per job, 18 whitespace-separated fields, `;` comments):
field 2 submit time, 4 run time, 8 requested processors (5, allocated, when 8 is -1),
9 requested time, 12 user id (odd: alice, even: bob), 16 partition number (k = the k-th
cluster of the testbed, in name order). Other fields are written as -1 and ignored."""

from __future__ import annotations

import math
import random
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

USERS = ("alice", "bob")


@dataclass(frozen=True)
class Job:
    index: int
    submit: float  # seconds after the workload's start
    cluster: str
    cores: int
    runtime: int  # seconds the job really runs (`sleep runtime`)
    walltime: int  # seconds requested
    user: str


def _log_uniform(rng: random.Random, lo: float, hi: float) -> float:
    return math.exp(rng.uniform(math.log(lo), math.log(hi)))


def size_weights(cores: int) -> dict[int, float]:
    """Job sizes: powers of two up to the whole cluster, small ones more frequent."""
    sizes = [s for s in (1, 2, 4, 8, 16, 32, 64) if s <= cores]
    if cores not in sizes:
        sizes.append(cores)
    raw = {s: 1.0 / (1 + i) for i, s in enumerate(sizes)}
    total = sum(raw.values())
    return {s: w / total for s, w in raw.items()}


def generate(clusters: dict[str, int], duration: float, seed: int = 1, load: float = 0.6,
             runtime_range: tuple[float, float] | None = None) -> list[Job]:
    """Jobs whose core-seconds add up to `load` of each cluster's over [0, duration), arriving
    at uniformly random times (a Poisson process given the number of jobs). Runtimes are
    log-uniform (default 10 s .. min(180 s, 30 % of the run)); walltimes 1.2-3x the runtime,
    rounded up to the minute, as users ask."""
    rng = random.Random(seed)
    lo, hi = runtime_range or (10.0, max(15.0, min(180.0, 0.3 * duration)))
    out: list[tuple[float, str, int, int, int, str]] = []
    for name in sorted(clusters):
        cores = clusters[name]
        weights = size_weights(cores)
        budget = load * cores * duration
        while budget > 0:
            size = rng.choices(list(weights), list(weights.values()))[0]
            runtime = int(round(_log_uniform(rng, lo, hi)))
            walltime = max(60, math.ceil(runtime * rng.uniform(1.2, 3.0) / 60) * 60)
            out.append((rng.uniform(0, duration), name, size, runtime, walltime, rng.choice(USERS)))
            budget -= size * runtime
    out.sort()
    return [Job(i + 1, round(t, 1), c, n, r, w, u) for i, (t, c, n, r, w, u) in enumerate(out)]


def write_swf(jobs: Iterable[Job], path: Path, clusters: dict[str, int], note: str = "") -> None:
    names = sorted(clusters)
    lines = ["; Version: 2.2", "; Computer: CiGri OAR/Slurm testbed (bench/harvest.py)",
             f"; MaxProcs: {sum(clusters.values())}", f"; MaxPartitions: {len(names)}"]
    lines += [f"; Partition: {i + 1} {n} ({clusters[n]} cores)" for i, n in enumerate(names)]
    if note:
        lines.append(f"; Note: {note}")
    for j in jobs:
        uid = USERS.index(j.user) + 1 if j.user in USERS else 1
        fields = [j.index, round(j.submit), -1, j.runtime, j.cores, -1, -1, j.cores, j.walltime, -1, 1,
                  uid, 1, -1, 1, names.index(j.cluster) + 1, -1, -1]
        lines.append(" ".join(str(f) for f in fields))
    path.write_text("\n".join(lines) + "\n")


class SWFError(ValueError):
    pass


def read_swf(path: Path, clusters: dict[str, int], duration: float | None = None) -> list[Job]:
    """Jobs of an SWF file, submit times shifted to start at 0; jobs of partitions beyond the
    testbed's clusters, without a run time, or arriving after `duration` are left out; a job
    asking for more cores than its cluster has is clipped to the cluster."""
    names = sorted(clusters)
    rows: list[tuple[float, str, int, int, int, str]] = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        line = line.strip()
        if not line or line.startswith(";"):
            continue
        f = line.split()
        if len(f) < 18:
            raise SWFError(f"{path}:{n}: an SWF line has 18 fields, this one has {len(f)}")
        try:
            submit, run, alloc, req, req_time, uid, part = (float(f[1]), int(float(f[3])), int(f[4]), int(f[7]),
                                                            int(float(f[8])), int(f[11]), int(f[15]))
        except ValueError as e:
            raise SWFError(f"{path}:{n}: not a number in an SWF line ({e})") from None
        cores = req if req > 0 else alloc
        if run <= 0 or cores <= 0:
            continue
        if part < 1:
            part = 1
        if part > len(names):
            continue
        name = names[part - 1]
        walltime = req_time if req_time >= run else max(60, math.ceil(run * 1.5 / 60) * 60)
        rows.append((submit, name, min(cores, clusters[name]), run, walltime, USERS[(uid - 1) % 2]))
    if not rows:
        raise SWFError(f"{path}: no usable job (run time > 0, processors > 0, partition 1..{len(names)})")
    start = min(r[0] for r in rows)
    rows = sorted(((r[0] - start, *r[1:]) for r in rows), key=lambda r: r[0])  # ties keep file order
    if duration is not None:
        rows = [r for r in rows if r[0] < duration]
    return [Job(i + 1, round(t, 1), c, k, r, w, u) for i, (t, c, k, r, w, u) in enumerate(rows)]
