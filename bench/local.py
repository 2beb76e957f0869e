#!/usr/bin/env python3
"""Local mode throughput: N trivial tasks (`true`) on this machine's cores through
(a) the local adapter/executor alone and (b) the whole engine (`cigri local run`), next
to the physical limit measured in the same run: `xargs -P <cores>` running the same
shell commands (GNU parallel is slower than xargs, so xargs is the limit).

    .venv/bin/python bench/local.py [-n 10000] [--cores N] [--skip-engine]

Everything runs in a temporary directory (its own SQLite database and executor)."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def limit(n: int, cores: int, work: Path) -> float:
    """xargs -P cores, one `sh -c 'true <i>'` per task (no output files: a strict limit)."""
    cmd = f"seq {n} | xargs -P {cores} -I{{}} sh -c 'true {{}}'"
    t = time.monotonic()
    subprocess.run(cmd, shell=True, check=True)
    return time.monotonic() - t


def adapter_only(n: int, cores: int, work: Path) -> float:
    from cigri.clusters.base import ClusterInfo, JobRequest
    from cigri.clusters.local import LocalAdapter
    from cigri.config import Conf

    state = work / "state"
    a = LocalAdapter(ClusterInfo(id=1, name="local", api_url=f"local://{state}", batch="local"),
                     conf=Conf(values={"LOCAL_CORES": str(cores)}))
    out = work / "adapter-out"
    out.mkdir()
    t = time.monotonic()
    ids = a.submit(JobRequest(command="true", params=[str(i) for i in range(n)], directory=str(out)), "bench")
    pending = list(ids)
    while pending:  # poll like a runner: in chunks, the oldest first
        got = a.get_jobs(pending[:1000])
        pending = [i for i in pending if i not in got or got[i].state not in ("Terminated", "Error")]
        if pending:
            time.sleep(0.2)
    el = time.monotonic() - t
    bad = [j for j in a.get_jobs(ids).values() if j.state != "Terminated" or j.exit_code != 0]
    assert not bad, f"{len(bad)} tasks failed"
    a.store.stop_executor()
    return el


def whole_engine(n: int, cores: int, work: Path) -> tuple[float, float]:
    """(wall time of `cigri local run` including start-up, first submission to campaign end)."""
    env = dict(os.environ, XDG_DATA_HOME=str(work / "xdg"))
    env.pop("CIGRICONFFILE", None)
    out = work / "engine-out"
    out.mkdir()
    jdl = work / "bench.jdl"
    jdl.write_text(json.dumps({"name": "bench", "nb_jobs": n, "exec_file": "true", "exec_directory": str(out),
                               "walltime": "00:10:00", "clusters": {"local": {}}}))
    cigri = [sys.executable, "-c", "import sys; from cigri.cli.local import main; sys.exit(main())"]
    t = time.monotonic()
    subprocess.run([*cigri, "local", "run", str(jdl), "--quiet", "--cores", str(cores)], env=env, check=True)
    wall = time.monotonic() - t
    db = sqlite3.connect(work / "xdg" / "cigri" / "cigri.sqlite")
    sub, stop, done = db.execute(
        "SELECT min(submission_time), max(stop_time), count(*) FROM jobs WHERE state='terminated' AND param_id>0"
    ).fetchone()
    assert done == n, f"only {done}/{n} tasks terminated"
    from datetime import datetime

    def ts(v: str) -> float:
        return datetime.fromisoformat(v.replace(" +", "+").replace(" -", "-")).timestamp()

    return wall, max(1.0, ts(stop) - ts(sub))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-n", type=int, default=10000)
    ap.add_argument("--cores", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--skip-engine", action="store_true")
    args = ap.parse_args()
    n, cores = args.n, args.cores
    work = Path(tempfile.mkdtemp(prefix="cigri-bench-local-"))
    try:
        print(f"{n} tasks `true` on {cores} cores (load average {os.getloadavg()[0]:.1f})", flush=True)
        lim1 = limit(n, cores, work)
        print(f"  limit before: xargs -P {cores} sh -c 'true i': {n / lim1:.0f} tasks/s", flush=True)
        ad = adapter_only(n, cores, work)
        print(f"  (a) adapter + executor done: {n / ad:.0f} tasks/s", flush=True)
        wall = steady = None
        if not args.skip_engine:
            wall, steady = whole_engine(n, cores, work)
        lim2 = limit(n, cores, work)
        print(f"  limit after: {n / lim2:.0f} tasks/s", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    lim = (lim1 + lim2) / 2  # the machine's load changes: compare with the mean of both limits
    print(f"\nResults ({n} tasks, {cores} cores; ratio = tasks/s / limit tasks/s, limit = mean of before/after)")
    print(f"  limit  xargs -P {cores} sh -c 'true i'  : {n / lim:7.0f} tasks/s  (before {n / lim1:.0f}, "
          f"after {n / lim2:.0f})")
    print(f"  (a) local adapter + executor       : {n / ad:7.0f} tasks/s  ratio {lim / ad:.2f}")
    if wall is not None and steady is not None:
        print(f"  (b) whole engine, steady state     : {n / steady:7.0f} tasks/s  ratio {lim / steady:.2f}  "
              f"(first submission to last end, {steady:.1f} s)")
        print(f"  (b) `cigri local run`, wall clock  : {n / wall:7.0f} tasks/s  ratio {lim / wall:.2f}  "
              f"(incl. start-up and shutdown, {wall:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
