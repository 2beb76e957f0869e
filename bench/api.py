#!/usr/bin/env python3
"""API benchmark (issue #5): latency of the REST API under 20 concurrent clients, against a
real `cigri-api` process on its Unix socket, next to the floor measured in the same run.

  .venv/bin/python bench/api.py [--jobs 1000000] [--campaigns 10000] [--upload 100000] [--clients 20]

Builds a scratch PostgreSQL database (dropped at the end) with one campaign of N jobs
(terminated, with times, hence real statistics) and C small running campaigns, then measures:
  gridstat -c  - the two API calls of `gridstat -c <big campaign>` (campaign + stats);
  list         - GET /campaigns (all C+1 running campaigns, CiGri3's unpaginated answer)
                 and GET /campaigns?limit=100 (one page);
  upload       - a U-line `gridsub -f` (param_file streamed by the client) end to end,
                 vs the foundation's ingest rate (cigri.campaigns.submit_campaign in process);
                 then 20 concurrent uploads.
Floor: GET / (no database) through the same socket and client.
Uses CIGRI_TEST_PG (default postgresql+psycopg://cigri:cigri@127.0.0.1:5432)."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import sqlalchemy as sa

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from cigri.config import Conf, set_conf  # noqa: E402

PG_BASE = os.environ.get("CIGRI_TEST_PG", "postgresql+psycopg://cigri:cigri@127.0.0.1:5432")
BIN = Path(sys.executable).parent


def populate(engine: sa.Engine, jobs: int, campaigns: int) -> int:
    """One big campaign (id 1) with `jobs` terminated jobs, and `campaigns` small ones."""
    with engine.begin() as c:
        c.execute(sa.text("INSERT INTO clusters (name, api_url, batch, api_auth_type, enabled) "
                          "VALUES ('dahu', 'http://127.0.0.1:1/', 'oar2_5', 'none', true)"))
        c.execute(sa.text("INSERT INTO campaigns (grid_user, state, type, name, submission_time, nb_jobs, jdl) "
                          "VALUES ('alice', 'in_treatment', 'best-effort', 'big', now(), :n, "
                          "'{\"name\": \"big\", \"clusters\": {\"dahu\": {}}}')"), {"n": jobs})
        c.execute(sa.text("INSERT INTO campaign_properties (cluster_id, campaign_id, name, value) "
                          "VALUES (1, 1, 'exec_file', 'e')"))
        c.execute(sa.text("INSERT INTO parameters (campaign_id, name, param) "
                          "SELECT 1, g::text, g::text FROM generate_series(1, :n) g"), {"n": jobs})
        c.execute(sa.text(
            "INSERT INTO jobs (campaign_id, param_id, cluster_id, state, submission_time, start_time, stop_time, "
            "remote_id) SELECT 1, p.id, 1, CASE WHEN p.id % 1000 = 0 THEN 'running'::job_state "
            "ELSE 'terminated'::job_state END, now() - interval '2 hours', "
            "now() - (p.id % 3600) * interval '1 second', now() - (p.id % 1800) * interval '1 second', p.id "
            "FROM parameters p WHERE p.campaign_id = 1"))
        c.execute(sa.text("INSERT INTO campaigns (grid_user, state, type, name, submission_time, nb_jobs, jdl) "
                          "SELECT CASE WHEN g % 2 = 0 THEN 'alice' ELSE 'bob' END, 'in_treatment', 'best-effort', "
                          "'c' || g, now(), 5, '{}' FROM generate_series(1, :n) g"), {"n": campaigns})
        c.execute(sa.text("INSERT INTO campaign_properties (cluster_id, campaign_id, name, value) "
                          "SELECT 1, id, 'exec_file', 'e' FROM campaigns WHERE id > 1"))
    with engine.connect() as c:
        c.execution_options(isolation_level="AUTOCOMMIT").execute(sa.text("VACUUM ANALYZE"))
    return 1


def percentiles(samples: list[float]) -> tuple[float, float, float]:
    s = sorted(samples)
    p = lambda q: s[min(len(s) - 1, int(q * len(s)))]  # noqa: E731
    return p(0.5) * 1000, p(0.99) * 1000, len(s) / 1.0


def concurrent(fn: Callable[[], None], clients: int, per_client: int) -> tuple[list[float], float]:
    samples: list[float] = []
    lock = threading.Lock()

    def worker() -> None:
        local = []
        for _ in range(per_client):
            t = time.perf_counter()
            fn()
            local.append(time.perf_counter() - t)
        with lock:
            samples.extend(local)

    threads = [threading.Thread(target=worker) for _ in range(clients)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return samples, time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--jobs", type=int, default=1_000_000)
    ap.add_argument("--campaigns", type=int, default=10_000)
    ap.add_argument("--upload", type=int, default=100_000)
    ap.add_argument("--clients", type=int, default=20)
    ap.add_argument("--requests", type=int, default=10, help="requests per client")
    args = ap.parse_args()

    from cigri.db.admin import create_scratch_database, drop_scratch_database

    db = f"cigri_bench_api_{os.getpid()}"
    values = create_scratch_database(PG_BASE, db) | {"LOG_FILE": "STDERR", "LOG_LEVEL": "WARN"}
    d = tempfile.mkdtemp(prefix="cigri-bench-api-")
    proc = None
    try:
        from cigri.db.engine import make_engine

        conf = Conf(values=values)
        set_conf(conf)
        engine = make_engine(conf)
        print(f"load average at start: {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
        t = time.perf_counter()
        big = populate(engine, args.jobs, args.campaigns)
        print(f"populated: {args.jobs} jobs in campaign {big}, {args.campaigns} more running campaigns "
              f"({time.perf_counter() - t:.1f} s)")
        sock = os.path.join(d, "api.sock")
        conf_file = os.path.join(d, "cigri.conf")
        Path(conf_file).write_text("".join(f'{k} = "{v}"\n' for k, v in values.items())
                                   + f'API_LISTEN_SOCKET = "{sock}"\nAPI_JWT_SECRET_FILE = "{d}/jwt"\n')
        client_conf = os.path.join(d, "api-clients.conf")
        Path(client_conf).write_text(f'API_SOCKET = "{sock}"\nAPI_TIMEOUT = "600"\n')
        proc = subprocess.Popen([str(BIN / "cigri-api")], env=dict(os.environ, CIGRICONFFILE=conf_file))
        while not os.path.exists(sock):
            if proc.poll() is not None:
                raise SystemExit("cigri-api did not start")
            time.sleep(0.1)
        os.environ["CIGRICONFFILE"] = client_conf
        from cigri.cli.client import ApiClient

        local = threading.local()

        def api() -> ApiClient:
            if not hasattr(local, "c"):
                local.c = ApiClient()
            return local.c

        def check(r: object) -> None:
            if not getattr(r, "ok", False):
                raise SystemExit(f"API error: {getattr(r, 'status', '?')} {getattr(r, 'text', '')[:200]}")

        def floor() -> None:
            check(api().get("/"))

        stats_pool = ThreadPoolExecutor(args.clients)
        local2 = threading.local()

        def api2() -> ApiClient:
            if not hasattr(local2, "c"):
                local2.c = ApiClient()
            return local2.c

        def gridstat_c() -> None:  # as gridstat -c: campaign and stats requested together
            f = stats_pool.submit(lambda: api2().get(f"/campaigns/{big}/stats"))
            check(api().get(f"/campaigns/{big}"))
            check(f.result())

        def list_all() -> None:
            check(api().get("/campaigns"))

        def list_page() -> None:
            check(api().get("/campaigns", params={"limit": 100}))

        # cold single calls first (no cache)
        for name, fn in (("gridstat -c (cold, 1 client)", gridstat_c), ("campaign list (cold, 1 client)", list_all)):
            t = time.perf_counter()
            fn()
            print(f"{name:<44s} {1000 * (time.perf_counter() - t):8.1f} ms")
        print("\n1 client, 20 sequential requests (server time):     p50 ms    p99 ms")
        for name, fn in (("floor: GET / (no database)", floor), (f"gridstat -c ({args.jobs} jobs)", gridstat_c),
                         (f"GET /campaigns?limit=100 ({args.campaigns} camp.)", list_page),
                         (f"GET /campaigns (all {args.campaigns + 1})", list_all)):
            samples, _ = concurrent(fn, 1, 20)
            p50, p99, _ = percentiles(samples)
            print(f"  {name:<44s} {p50:8.1f} {p99:9.1f}")
        print(f"\n{args.clients} concurrent clients x {args.requests} requests:   p50 ms    p99 ms   req/s")
        for name, fn in (("floor: GET / (no database)", floor), (f"gridstat -c ({args.jobs} jobs)", gridstat_c),
                         (f"GET /campaigns?limit=100 ({args.campaigns} camp.)", list_page),
                         (f"GET /campaigns (all {args.campaigns + 1})", list_all)):
            concurrent(fn, args.clients, 1)  # warm every worker process (steady-state polling)
            samples, wall = concurrent(fn, args.clients, args.requests)
            p50, p99, _ = percentiles(samples)
            print(f"  {name:<44s} {p50:8.1f} {p99:9.1f} {len(samples) / wall:7.1f}")

        # ------------------------------------------------------------ upload
        from cigri import campaigns as C
        from cigri.db.engine import get_engine

        lines = [f"p{i} {i} some argument" for i in range(args.upload)]
        jdl = {"name": "ingest", "clusters": {"dahu": {"exec_file": "e"}}, "params": lines}
        t = time.perf_counter()
        C.submit_campaign(get_engine(conf), jdl, "alice", conf)
        ingest = args.upload / (time.perf_counter() - t)
        pf = os.path.join(d, "params.txt")
        Path(pf).write_text("\n".join(lines) + "\n")
        jf = os.path.join(d, "up.jdl")
        Path(jf).write_text(json.dumps({"name": "up", "param_file": pf, "clusters": {"dahu": {"exec_file": "e"}}}))

        failures: list[str] = []

        def upload() -> None:
            r = subprocess.run([str(BIN / "gridsub"), "-f", jf], capture_output=True, text=True)
            if r.returncode != 0:
                failures.append(r.stderr.strip()[:200])

        t = time.perf_counter()
        upload()
        up = args.upload / (time.perf_counter() - t)
        print(f"\nupload of {args.upload} lines: foundation ingest {ingest:,.0f} lines/s (in process); "
              f"gridsub -f end to end {up:,.0f} lines/s = {up / ingest:.2f} x ingest (target >= 0.8)")
        if failures:
            raise SystemExit(f"gridsub failed: {failures[0]}")
        n = min(args.clients, 20)
        samples, wall = concurrent(upload, n, 1)
        p50, p99, _ = percentiles(samples)
        ok = n - len(failures)
        print(f"{n} concurrent {args.upload}-line gridsub uploads: p50 {p50 / 1000:.1f} s, p99 {p99 / 1000:.1f} s, "
              f"aggregate {ok * args.upload / wall:,.0f} lines/s, {len(failures)} failed "
              f"{failures[:1] if failures else ''}")
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(30)
        from cigri.db.engine import reset_engines

        reset_engines()
        drop_scratch_database(PG_BASE, db)
        import shutil

        shutil.rmtree(d, ignore_errors=True)


if __name__ == "__main__":
    main()
