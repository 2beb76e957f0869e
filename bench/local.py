#!/usr/bin/env python3
"""Local mode against the tools a scientist would use instead, on the same N trivial tasks
(`true <i>`) and the same cores, in the same run:

  xargs -P          the limit: one `sh -c` per task, no output kept
  xargs -P, files   the same work as CiGri: each task's stdout and stderr to its own files
  GNU parallel      (apt install parallel) with each task's outputs to its own files
  HyperQueue        its Python LocalCluster (pip install hyperqueue, in its own virtual
                    environment: --hq-python), one program per task, its default output files
  cigri local run   wall clock of the whole command: submission, engine start-up, every task,
                    shutdown (a fresh data directory)

For each: tasks/s and the peak memory of all its processes (the sum of their RSS, and of
their PSS, which counts shared pages once), sampled every 0.1 s.

    .venv/bin/python bench/local.py [-n 10000] [--cores N] [--rounds 3] [--hq-python PATH]

Everything runs in a temporary directory, deleted at the end."""

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
import textwrap
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def settle() -> None:
    """Let the writeback of the previous measurement's files end (it would slow this one)."""
    os.sync()
    time.sleep(1.0)


def _children() -> dict[int, list[int]]:
    kids: dict[int, list[int]] = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            kids.setdefault(ppid, []).append(int(d))
    return kids


def _matching(marker: str) -> set[int]:
    """Processes whose command line names `marker` (detached ones: the local executor)."""
    out = set()
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/cmdline", "rb") as f:
                    if marker.encode() in f.read():
                        out.add(int(d))
            except OSError:
                continue
    return out


def _memory(pid: int) -> tuple[int, int]:
    """(RSS, PSS) of one process, in kB."""
    rss = pss = 0
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Rss:"):
                    rss = int(line.split()[1])
                elif line.startswith("Pss:"):
                    pss = int(line.split()[1])
    except OSError:
        pass
    return rss, pss


class PeakMemory:
    """Samples the process tree of `root` (and processes naming `marker`) until stopped."""

    def __init__(self, marker: str | None = None):
        self.marker = marker
        self.root = 0
        self.rss = self.pss = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self, root: int) -> PeakMemory:
        self.root = root
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.is_set():
            kids = _children()
            pids, todo = set(), [self.root, *(_matching(self.marker) if self.marker else ())]
            while todo:
                p = todo.pop()
                if p not in pids:
                    pids.add(p)
                    todo.extend(kids.get(p, ()))
            mem = [_memory(p) for p in pids]
            self.rss = max(self.rss, sum(m[0] for m in mem))
            self.pss = max(self.pss, sum(m[1] for m in mem))
            self._stop.wait(0.1)

    def stop(self) -> tuple[float, float]:
        self._stop.set()
        self._thread.join()
        return self.rss / 1024, self.pss / 1024


def timed(cmd: list[str], marker: str | None = None, **kw: object) -> tuple[float, float, float]:
    """(seconds, peak RSS MB, peak PSS MB) of a command and all its processes."""
    settle()
    t = time.monotonic()
    p = subprocess.Popen(cmd, **kw)  # type: ignore[call-overload]
    mem = PeakMemory(marker).start(p.pid)
    rc = p.wait()
    el = time.monotonic() - t
    rss, pss = mem.stop()
    if rc != 0:
        raise SystemExit(f"{cmd[:3]}... exited with {rc}")
    return el, rss, pss


def run_xargs(n: int, cores: int, work: Path, files: bool) -> tuple[float, float, float]:
    redirect = ""
    if files:
        out = work / "xargs-out"
        out.mkdir(exist_ok=True)
        redirect = f" > {out}/{{}}.stdout 2> {out}/{{}}.stderr"
    return timed(["sh", "-c", f"seq {n} | xargs -P {cores} -I{{}} sh -c 'true {{}}{redirect}'"])


def run_parallel(n: int, cores: int, work: Path) -> tuple[float, float, float] | None:
    if shutil.which("parallel") is None:
        return None
    out = work / "parallel-out"
    out.mkdir()
    return timed(["sh", "-c", f"seq {n} | parallel -j {cores} 'true {{}} > {out}/{{}}.stdout 2> {out}/{{}}.stderr'"])


HQ_SCRIPT = textwrap.dedent("""
    import sys
    from pathlib import Path
    from hyperqueue import Job
    from hyperqueue.cluster import LocalCluster, WorkerConfig
    n, cores, work = int(sys.argv[1]), int(sys.argv[2]), Path(sys.argv[3])
    with LocalCluster(server_dir=str(work / "hq-server")) as cluster:
        cluster.start_worker(WorkerConfig(cores=cores))
        client = cluster.client()
        job = Job(str(work / "hq-out"))
        for i in range(n):
            job.program(["true", str(i)])  # its default outputs: one stdout and stderr file per task
        client.wait_for_jobs([client.submit(job)])
""")


def run_hyperqueue(n: int, cores: int, work: Path, python: str | None) -> tuple[float, float, float] | None:
    if not python:
        return None
    (work / "hq-out").mkdir()
    return timed([python, "-c", HQ_SCRIPT, str(n), str(cores), str(work)], stdout=subprocess.DEVNULL,
                 stderr=subprocess.DEVNULL)


def run_cigri(n: int, cores: int, work: Path) -> tuple[float, float, float]:
    env = dict(os.environ, XDG_DATA_HOME=str(work / "xdg"))
    env.pop("CIGRICONFFILE", None)
    out = work / "cigri-out"
    out.mkdir()
    jdl = work / "bench.jdl"
    jdl.write_text(json.dumps({"name": "bench", "nb_jobs": n, "exec_file": "true", "exec_directory": str(out),
                               "walltime": "00:10:00", "clusters": {"local": {}}}))
    cigri = shutil.which("cigri", path=str(Path(sys.executable).parent)) or "cigri"
    # (the executor is detached from `cigri local run`: found by its state directory)
    res = timed([cigri, "local", "run", str(jdl), "--quiet", "--cores", str(cores)], marker=str(work / "xdg"),
                env=env, stdout=subprocess.DEVNULL)
    db = sqlite3.connect(work / "xdg" / "cigri" / "cigri.sqlite")
    (done,) = db.execute("SELECT count(DISTINCT param_id) FROM jobs WHERE state='terminated' AND param_id>0"
                         ).fetchone()
    db.close()
    assert done == n, f"only {done}/{n} tasks terminated"
    subprocess.run([cigri, "local", "stop"], env=env, stdout=subprocess.DEVNULL, check=False)
    return res


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-n", type=int, default=10000)
    ap.add_argument("--cores", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--rounds", type=int, default=3, help="rounds (the median is reported: this machine is noisy)")
    ap.add_argument("--hq-python", help="a Python with hyperqueue installed (else HyperQueue is left out)")
    ap.add_argument("--only-cigri", action="store_true", help="measure cigri local run (and xargs) only")
    args = ap.parse_args()
    n, cores = args.n, args.cores
    print(f"{n} tasks `true <i>` on {cores} cores, {args.rounds} rounds, load average before: "
          f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}", flush=True)
    names = {"xargs": "xargs -P (limit, no files)", "files": "xargs -P, 2 files per task",
             "parallel": "GNU parallel, 2 files/task", "hq": "HyperQueue LocalCluster",
             "cigri": "cigri local run (wall clock)"}
    rows: dict[str, list[tuple[float, float, float]]] = {k: [] for k in names}
    for r in range(args.rounds):
        work = Path(tempfile.mkdtemp(prefix="cigri-bench-local-"))
        try:
            rows["xargs"].append(run_xargs(n, cores, work, files=False))
            rows["files"].append(run_xargs(n, cores, work, files=True))
            rows["cigri"].append(run_cigri(n, cores, work))
            if not args.only_cigri:
                if (p := run_parallel(n, cores, work)) is not None:
                    rows["parallel"].append(p)
                if (h := run_hyperqueue(n, cores, work, args.hq_python)) is not None:
                    rows["hq"].append(h)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        print(f"  round {r + 1}: " + ", ".join(f"{k} {n / v[-1][0]:.0f}/s" for k, v in rows.items() if v),
              flush=True)

    def med(k: str, i: int) -> float:
        return statistics.median(x[i] for x in rows[k])

    print(f"\nResults: {n} tasks, {cores} cores, median of {args.rounds} rounds; load average after: "
          f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print(f"  {'':32} {'tasks/s':>8} {'seconds':>8} {'peak RSS MB':>12} {'peak PSS MB':>12}")
    for k, label in names.items():
        if rows[k]:
            print(f"  {label:32} {n / med(k, 0):8.0f} {med(k, 0):8.1f} {med(k, 1):12.0f} {med(k, 2):12.0f}")
        elif k == "hq":
            print(f"  {label:32} not measured (--hq-python: a Python with `pip install hyperqueue`)")
        else:
            print(f"  {label:32} not measured (not installed)")
    c = n / med("cigri", 0)
    print(f"\n  cigri / xargs with files: {c / (n / med('files', 0)):.2f}  (target >= 0.9)")
    print(f"  cigri / plain xargs:      {c / (n / med('xargs', 0)):.2f}  (target >= 0.5)")
    print(f"  cigri peak memory:        {med('cigri', 1):.0f} MB RSS, {med('cigri', 2):.0f} MB PSS  (target <= 150)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
