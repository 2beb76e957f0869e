#!/usr/bin/env python3
"""Dispatch benchmark: how fast CiGri's runner pushes tasks through one cluster, next to the
limit measured in the same run (the same tasks POSTed directly as arrays of 100).

  bench/dispatch.py fake [--tasks 3000]            # fake OAR 2.5 HTTP server on loopback:
                                                   # CiGri's own ceiling (no constant caps it)
  bench/dispatch.py oar  [--tasks 300] [--task-seconds 1]   # testbed cluster c1 (real OAR 2.5)
  bench/dispatch.py slurm [--tasks 300] [--task-seconds 1]  # the Slurm testbed (real slurmrestd; as root),
                                                   # limit: the same tasks POSTed raw to slurmrestd

Each run creates a scratch PostgreSQL database (dropped at the end), registers the cluster,
submits a best-effort campaign of N tasks through the normal path (JDL → campaign), and runs
the meta-scheduler and the runner in this process. Printed: tasks/s submitted and completed,
seconds from campaign submission to full rate, and the limit."""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import sqlalchemy as sa  # noqa: E402

from cigri.config import Conf, set_conf  # noqa: E402
from cigri.db import schema  # noqa: E402

PG_BASE = os.environ.get("CIGRI_TEST_PG", "postgresql+psycopg://cigri:cigri@127.0.0.1:5432")


# ----------------------------------------------------------------------------- fake OAR 2.5
class FakeOARState:
    def __init__(self, task_seconds: float, cores: int):
        self.lock = threading.Lock()
        self.jobs: dict[int, dict[str, Any]] = {}
        self.next_id = 0
        self.task_seconds = task_seconds
        self.cores = cores
        self.posts = 0

    def doc(self, j: dict[str, Any]) -> dict[str, Any]:
        t = time.time()
        d = dict(j)
        start = j["submission_time"]
        if t >= start + self.task_seconds:
            d.update(state="Terminated", exit_code=0, start_time=int(start), stop_time=int(start + self.task_seconds))
        else:
            d.update(state="Running", start_time=int(start), stop_time=0)
        d["submission_time"] = int(j["submission_time"])
        return d


def make_handler(st: FakeOARState) -> type[BaseHTTPRequestHandler]:
    class H(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *a: Any) -> None:
            pass

        def _send(self, code: int, body: Any) -> None:
            data = json.dumps(body).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _path(self) -> tuple[str, dict[str, list[str]]]:
            u = urlparse(self.path)
            p = re.sub(r"^/oarapi/?", "", u.path).removesuffix(".json").strip("/")
            return p, parse_qs(u.query)

        def do_GET(self) -> None:  # noqa: N802
            p, q = self._path()
            if p in ("", "index", "version"):
                return self._send(200, {"oar_version": "2.5.9 (fake)", "api_version": "1.0.2", "links": []})
            if p == "stress_factor":
                return self._send(200, {"GLOBAL_STRESS": "0"})
            if p.startswith("resources"):
                items = [{"id": i + 1, "core": i + 1, "network_address": "n1", "state": "Alive", "type": "default"}
                         for i in range(min(st.cores, 1000))]
                return self._send(200, {"items": items, "total": len(items), "offset": 0, "links": []})
            if p in ("jobs/details", "jobs"):
                with st.lock:
                    if "ids" in q:
                        ids = [int(x) for x in re.split("[:,]", q["ids"][0]) if x]
                        items = [st.doc(st.jobs[i]) for i in ids if i in st.jobs]
                    elif "array" in q:
                        a = int(q["array"][0])
                        items = [st.doc(j) for j in st.jobs.values() if j["array_id"] == a]
                    else:
                        items = [d for d in (st.doc(j) for j in st.jobs.values()) if d["state"] != "Terminated"]
                return self._send(200, {"items": items, "total": len(items), "offset": 0, "links": []})
            m = re.fullmatch(r"jobs/(\d+)(/details)?", p)
            if m:
                with st.lock:
                    j = st.jobs.get(int(m.group(1)))
                    return self._send(200, st.doc(j)) if j else self._send(404, {"title": "not found"})
            if p.startswith("media"):
                return self._send(404, {"title": "not found"})
            return self._send(404, {"title": f"unknown {p}"})

        def do_POST(self) -> None:  # noqa: N802
            p, _ = self._path()
            n = int(self.headers.get("Content-Length") or 0)
            body = json.loads(self.rfile.read(n) or b"{}")
            if p != "jobs":
                return self._send(202, {"status": "ok"})
            lines: list[str | None] = [ln for ln in str(body.get("param_file") or "").split("\n") if ln] or [None]
            out = []
            with st.lock:
                st.posts += 1
                first = st.next_id + 1
                for ln in lines:
                    st.next_id += 1
                    cmd = body.get("command", "") + (f" {ln}" if ln is not None else "")
                    st.jobs[st.next_id] = {"id": st.next_id, "array_id": first, "command": cmd,
                                           "name": body.get("name"),
                                           "owner": self.headers.get("X_REMOTE_IDENT") or "alice",
                                           "submission_time": time.time(), "events": [], "exit_code": None,
                                           "launching_directory": body.get("directory") or "/tmp",
                                           "stdout_file": f"OAR.{st.next_id}.stdout",
                                           "stderr_file": f"OAR.{st.next_id}.stderr", "queue": "besteffort",
                                           "types": [], "resources": []}
                    out.append(f"OAR_JOB_ID={st.next_id}")
            out.append(f"OAR_ARRAY_ID={first}")
            return self._send(201, {"id": first, "cmd_output": "\n".join(out) + "\n",
                                    "links": [{"rel": "self", "href": f"/oarapi/jobs/{first}"}]})

        def do_DELETE(self) -> None:  # noqa: N802
            return self._send(202, {"status": "Delete request registered"})

    return H


# ----------------------------------------------------------------------------- helpers
def scratch_db(name: str) -> Conf:
    from cigri.db.admin import create_scratch_database

    return Conf(values=create_scratch_database(PG_BASE, name) | {
        "LOG_FILE": "STDERR", "LOG_LEVEL": "WARN", "RUNNER_MIN_CYCLE_DURATION": "1",
        "ALMIGHTY_CYCLE": "0.5", "STRESS_FACTOR": "100"})


def drop_db(name: str) -> None:
    from cigri.db.admin import drop_scratch_database

    drop_scratch_database(PG_BASE, name)


def direct_limit(adapter: Any, exec_file: str, params: list[str], wait_done: bool) -> float:
    """tasks/s when the same tasks are POSTed straight to the cluster as arrays of 100
    (and, with wait_done, until the cluster has run them all)."""
    from cigri.clusters.base import ClusterAPIError, JobRequest

    t0 = time.monotonic()
    ids: list[int] = []
    for i in range(0, len(params), 100):
        ids += adapter.submit(JobRequest(command=exec_file, params=params[i:i + 100], resources="/resource_id=1",
                                         walltime="00:10:00", name="bench.direct", types=["besteffort"],
                                         directory="/home/alice"), "alice")
    if wait_done:
        pending = set(ids)
        while pending:
            try:
                got = adapter.get_jobs(sorted(pending))
            except ClusterAPIError as e:  # a slow API on a loaded machine: ask again
                print(f"  (direct run: {e})", file=sys.stderr)
                continue
            pending -= {i for i, r in got.items() if r.outcome.ended}
            if pending:
                time.sleep(0.5)
    return len(params) / (time.monotonic() - t0)


def slurm_direct_limit(api: str, secs: float, n: int, user: str = "alice") -> float:
    """tasks/s when Slurm is fed directly: the same number of tasks POSTed raw to slurmrestd as
    arrays of 100 (a script that sleeps like the tasks), until Slurm has run them all."""
    import requests

    from tests.slurm_testbed import headers

    base = f"{api}slurm/v0.0.38/"
    s = requests.Session()
    t0 = time.monotonic()
    arrays = []
    for i in range(0, n, 100):
        size = min(100, n - i)
        job: dict[str, Any] = {"name": "bench.direct", "array": f"0-{size - 1}", "partition": "bestcancel",
               "current_working_directory": "/tmp", "standard_output": "/dev/null", "standard_error": "/dev/null",
               "environment": {"PATH": "/usr/bin:/bin"}, "time_limit": 10}
        r = s.post(base + "job/submit", json={"script": f"#!/bin/sh\nsleep {secs}\n", "job": job},
                   headers=headers(user), timeout=60)
        r.raise_for_status()
        arrays.append((int(r.json()["job_id"]), size))
    live = {"PENDING", "CONFIGURING", "RUNNING", "COMPLETING"}
    pending = dict(arrays)
    while pending:
        for aid in list(pending):
            recs = s.get(base + f"job/{aid}", headers=headers(user), timeout=60).json().get("jobs") or []
            if recs and not any(r["job_state"] in live for r in recs):
                del pending[aid]
        if pending:
            time.sleep(0.5)
    return n / (time.monotonic() - t0)


def run_cigri(conf: Conf, cluster_name: str, api_url: str, exec_file: str, params: list[str],
              wait_done: bool, timeout: float, chunk: int, row: dict[str, Any] | None = None) -> dict[str, float]:
    from cigri.campaigns import submit_campaign
    from cigri.db.engine import get_engine
    from cigri.engine import metascheduler
    from cigri.engine.runner import Runner, run_forever

    set_conf(conf)
    engine = get_engine(conf)
    with engine.begin() as c:
        c.execute(schema.clusters.insert().values(**(row or dict(
            name=cluster_name, api_url=api_url, batch="oar2_5", api_auth_type="none", resource_unit="core",
            enabled=True, api_chunk_size=chunk))))
    stop = threading.Event()

    def sched() -> None:
        while not stop.is_set():
            try:
                metascheduler.run_once(engine, conf)
            except Exception as e:  # noqa: BLE001
                print("metascheduler:", e, file=sys.stderr)
            stop.wait(0.2)

    runner = Runner(engine, cluster_name, conf)
    t_sub = time.monotonic()
    jdl = {"name": "bench", "exec_file": exec_file, "params": params,
           "clusters": {cluster_name: {"type": "best-effort", "walltime": "00:10:00", "exec_directory": "/home/alice",
                                       "resources": "/resource_id=1"}}}
    cid = submit_campaign(engine, jdl, "alice", conf)
    threads = [threading.Thread(target=sched, daemon=True),
               threading.Thread(target=run_forever, args=(runner, stop.is_set), daemon=True)]
    for th in threads:
        th.start()
    samples: list[tuple[float, int, int]] = []
    n = len(params)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with engine.connect() as c:
            sub = c.execute(sa.select(sa.func.count()).select_from(schema.jobs).where(
                schema.jobs.c.campaign_id == cid, schema.jobs.c.submission_time.is_not(None))).scalar_one()
            done = c.execute(sa.select(sa.func.count()).select_from(schema.jobs).where(
                schema.jobs.c.campaign_id == cid, schema.jobs.c.state == "terminated")).scalar_one()
        samples.append((time.monotonic() - t_sub, int(sub), int(done)))
        if sub >= n and (done >= n or not wait_done):
            break
        time.sleep(0.25)
    stop.set()
    for th in threads:
        th.join(timeout=10)
    t_end = samples[-1][0]
    sub_end = next((s[0] for s in samples if s[1] >= n), t_end)
    done_end = next((s[0] for s in samples if s[2] >= n), float("nan"))
    # full rate: first time the 2-s sliding submission rate reaches 90 % of the overall rate
    overall = n / sub_end if sub_end else 0.0
    full_at = float("nan")
    for i, (t, s, _) in enumerate(samples):
        j = next((k for k in range(i, -1, -1) if t - samples[k][0] >= 2.0), None)
        if j is not None and (s - samples[j][1]) / (t - samples[j][0]) >= 0.9 * overall:
            full_at = samples[j][0]
            break
    peak = max(((samples[i][1] - samples[i - 8][1]) / (samples[i][0] - samples[i - 8][0])
                for i in range(8, len(samples))), default=overall)
    return {"submitted_per_s": overall, "done_per_s": n / done_end if done_end == done_end else float("nan"),
            "peak_2s_per_s": peak, "full_rate_after_s": full_at, "all_submitted_s": sub_end,
            "all_done_s": done_end}


def slurm_mode(conf: Conf, args: argparse.Namespace) -> int:
    """CiGri's runner on the Slurm testbed (best-effort in its CANCEL partition) next to Slurm fed
    directly, in the same run."""
    from tests.slurm_testbed import cluster_row, testbed_url

    n = args.tasks or 300
    secs = args.task_seconds if args.task_seconds is not None else 1.0
    api = testbed_url()
    exe = Path("/home/alice/cigri_bench_sleep.sh")
    exe.write_text("#!/bin/sh\nsleep $1\n")
    exe.chmod(0o755)
    limit = slurm_direct_limit(api, secs, n)
    row = cluster_row("sl") | {"api_chunk_size": 100}
    res = run_cigri(conf, "sl", api, f"{exe} {secs}", [f"{i} y" for i in range(n)], True, args.timeout, 100, row)
    rate = res["done_per_s"]
    print(f"mode=slurm tasks={n} task_seconds={secs} api={api} (2 fake nodes x 4 CPUs)")
    print(f"  limit (Slurm fed directly: raw POSTs of arrays of 100, completed): {limit:8.1f} tasks/s")
    print(f"  CiGri runner, completed:                                        {rate:8.1f} tasks/s "
          f"({rate / limit:.2f} of the limit)")
    print(f"  CiGri submission rate {res['submitted_per_s']:.1f} tasks/s (peak over 2 s: {res['peak_2s_per_s']:.1f});"
          f" all submitted after {res['all_submitted_s']:.1f} s; full rate after {res['full_rate_after_s']:.1f} s")
    print(f"  all tasks terminated {res['all_done_s']:.1f} s after campaign submission")
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("mode", choices=["fake", "oar", "slurm"])
    ap.add_argument("--tasks", type=int, default=None)
    ap.add_argument("--task-seconds", type=float, default=None)
    ap.add_argument("--timeout", type=float, default=600)
    args = ap.parse_args()
    from cigri.clusters import get_adapter
    from cigri.clusters.base import ClusterInfo

    name = f"cigri_bench_{os.getpid()}"
    conf = scratch_db(name)
    server = None
    try:
        if args.mode == "fake":
            n = args.tasks or 3000
            secs = args.task_seconds if args.task_seconds is not None else 0.5
            st = FakeOARState(secs, cores=100000)
            server = ThreadingHTTPServer(("127.0.0.1", 0), make_handler(st))
            threading.Thread(target=server.serve_forever, daemon=True).start()
            api = f"http://127.0.0.1:{server.server_address[1]}/oarapi/"
            exec_file = "/bin/true"
            wait_done = False
        elif args.mode == "slurm":
            return slurm_mode(conf, args)
        else:
            n = args.tasks or 300
            secs = args.task_seconds if args.task_seconds is not None else 1.0
            api = os.environ.get("RIG_API_c1", "http://127.0.0.1:6668/oarapi/")
            exec_file = f"/home/alice/cigri_bench_sleep.sh {secs}"
            Path("/home/alice/cigri_bench_sleep.sh").write_text("#!/bin/sh\nsleep $1\n")
            os.chmod("/home/alice/cigri_bench_sleep.sh", 0o755)
            wait_done = True
        chunk = 1000 if args.mode == "fake" else 100
        info = ClusterInfo(id=0, name="bench", api_url=api, batch="oar2_5", api_auth_type="none",
                           api_chunk_size=chunk)
        adapter = get_adapter(info, conf, {})
        limit = direct_limit(adapter, exec_file, [f"{i} x" for i in range(n)], wait_done)
        res = run_cigri(conf, "c1" if args.mode == "oar" else "fake1", api, exec_file,
                        [f"{i} y" for i in range(n)], wait_done, args.timeout, chunk)
        what = "completed" if wait_done else "submitted"
        cigri_rate = res["done_per_s"] if wait_done else res["submitted_per_s"]
        print(f"mode={args.mode} tasks={n} task_seconds={secs} api={api}")
        print(f"  limit (same tasks POSTed directly as arrays of 100, {what}): {limit:8.1f} tasks/s")
        print(f"  CiGri runner, {what}:                                   {cigri_rate:8.1f} tasks/s "
              f"({cigri_rate / limit:.2f} of the limit)")
        print(f"  CiGri submission rate {res['submitted_per_s']:.1f} tasks/s "
              f"(peak over 2 s: {res['peak_2s_per_s']:.1f}); "
              f"all submitted after {res['all_submitted_s']:.1f} s; full rate after {res['full_rate_after_s']:.1f} s")
        if wait_done:
            print(f"  all tasks terminated {res['all_done_s']:.1f} s after campaign submission")
    finally:
        if server is not None:
            server.shutdown()
        from cigri.db.engine import reset_engines

        reset_engines()
        drop_db(name)
    return 0


if __name__ == "__main__":
    tempfile.tempdir = tempfile.gettempdir()
    sys.exit(main())
