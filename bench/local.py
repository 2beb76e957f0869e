#!/usr/bin/env python3
"""Local mode throughput: N trivial tasks (`true`) on this machine's cores through
(a) the local adapter/executor alone and (b) the whole engine (`cigri local run`), next
to the physical limit measured in the same run: `xargs -P <cores>` running the same
shell commands (GNU parallel is slower than xargs, so xargs is the limit).

    .venv/bin/python bench/local.py [-n 10000] [--cores N] [--rounds 3] [--skip-engine]

Everything runs in a temporary directory (its own SQLite database and executor)."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def settle() -> None:
    """Let the writeback of the previous measurement's files end (it would slow this one)."""
    os.sync()
    time.sleep(1.0)


def limit(n: int, cores: int, work: Path, files: bool = False) -> float:
    """xargs -P cores, one `sh -c 'true <i>'` per task, with no output file: a strict limit.
    With `files`, each task also gets its stdout/stderr files, as on OAR (a scale, not the limit)."""
    redirect = ""
    if files:
        out = work / "xargs-out"
        out.mkdir(exist_ok=True)
        redirect = f" > {out}/OAR.{{}}.stdout 2> {out}/OAR.{{}}.stderr"
    cmd = f"seq {n} | xargs -P {cores} -I{{}} sh -c 'true {{}}{redirect}'"
    settle()
    t = time.monotonic()
    subprocess.run(cmd, shell=True, check=True)
    return time.monotonic() - t


def adapter_only(n: int, cores: int, work: Path) -> float:
    from cigri.clusters.base import ClusterInfo, JobRequest, Outcome
    from cigri.clusters.local import LocalAdapter
    from cigri.config import Conf

    state = work / "state"
    a = LocalAdapter(ClusterInfo(id=1, name="local", api_url=f"local://{state}", batch="local"),
                     conf=Conf(values={"LOCAL_CORES": str(cores)}))
    out = work / "adapter-out"
    out.mkdir()
    settle()
    t = time.monotonic()
    ids = a.submit(JobRequest(command="true", params=[str(i) for i in range(n)], directory=str(out)), "bench")
    pending = list(ids)
    while pending:  # poll like a runner: in chunks, the oldest first
        got = a.get_jobs(pending[:1000])
        pending = [i for i in pending if i not in got or got[i].outcome.live]
        if pending:
            time.sleep(0.2)
    el = time.monotonic() - t
    bad = [j for j in a.get_jobs(ids).values()
           if not (j.outcome is Outcome.DONE and j.exit is not None and j.exit.ok)]
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
    settle()
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
    ap.add_argument("--rounds", type=int, default=3, help="rounds (the median is reported: this machine is noisy)")
    ap.add_argument("--skip-engine", action="store_true")
    args = ap.parse_args()
    n, cores = args.n, args.cores
    print(f"{n} tasks `true` on {cores} cores, {args.rounds} rounds (load average {os.getloadavg()[0]:.1f})",
          flush=True)
    rows: list[dict[str, float]] = []
    works: list[Path] = []
    try:
        for r in range(args.rounds):
            # Fresh directories, all deleted at the end: deleting tens of thousands of files
            # slows the file creations that follow for a while on this machine's ext4.
            work = Path(tempfile.mkdtemp(prefix="cigri-bench-local-"))
            works.append(work)
            # Each figure is compared with the limit measured right before and right after it.
            lim1 = limit(n, cores, work)
            ad = adapter_only(n, cores, work)
            lim2 = limit(n, cores, work)
            row = {"limit": n / ((lim1 + lim2) / 2), "adapter": n / ad, "adapter_ratio": (lim1 + lim2) / 2 / ad,
                   "files": n / limit(n, cores, work, files=True)}
            if not args.skip_engine:
                wall, steady = whole_engine(n, cores, work)
                lim3 = limit(n, cores, work)
                ref = (lim2 + lim3) / 2
                row.update(engine=n / steady, engine_ratio=ref / steady, wall=n / wall, wall_ratio=ref / wall,
                           steady_s=steady, wall_s=wall)
            rows.append(row)
            print(f"  round {r + 1}: limit {row['limit']:.0f}/s; adapter+executor {row['adapter']:.0f}/s "
                  f"(ratio {row['adapter_ratio']:.2f})"
                  + (f"; whole engine {row['engine']:.0f}/s (ratio {row['engine_ratio']:.2f}), wall clock "
                     f"{row['wall']:.0f}/s (ratio {row['wall_ratio']:.2f})" if "engine" in row else ""), flush=True)
    finally:
        for work in works:
            shutil.rmtree(work, ignore_errors=True)

    def med(key: str) -> float:
        return statistics.median(r[key] for r in rows)

    def rng(key: str) -> str:
        return f"{min(r[key] for r in rows):.2f}-{max(r[key] for r in rows):.2f}"

    print(f"\nResults ({n} tasks, {cores} cores, median of {len(rows)} rounds; ratio = tasks/s / limit tasks/s,"
          " the limit measured just before and after)")
    print(f"  limit  xargs -P {cores} sh -c 'true i'  : {med('limit'):7.0f} tasks/s")
    print(f"  (for scale: xargs with OAR's two output files per task: {med('files'):.0f} tasks/s)")
    print(f"  (a) local adapter + executor       : {med('adapter'):7.0f} tasks/s  ratio {med('adapter_ratio'):.2f}"
          f"  (rounds {rng('adapter_ratio')})")
    if not args.skip_engine:
        print(f"  (b) whole engine, steady state     : {med('engine'):7.0f} tasks/s  ratio {med('engine_ratio'):.2f}"
              f"  (rounds {rng('engine_ratio')}; first submission to last end, {med('steady_s'):.1f} s)")
        print(f"  (b) `cigri local run`, wall clock  : {med('wall'):7.0f} tasks/s  ratio {med('wall_ratio'):.2f}"
              f"  (rounds {rng('wall_ratio')}; incl. start-up and shutdown, {med('wall_s'):.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
