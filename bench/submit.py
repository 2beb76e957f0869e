#!/usr/bin/env python3
"""Submission and polling cost of a cluster adapter against a real cluster: the oar2_5 adapter on
an OAR 2.5 cluster, or the slurm adapter on slurmrestd (--batch slurm: the Slurm testbed).

    .venv/bin/python bench/submit.py [--api URL] [--sizes 1,10,100,1000] [--user alice]
    .venv/bin/python bench/submit.py --batch slurm      # as root (signs tokens with the testbed's key)

1. jobs/s submitted through `Oar25Adapter.submit` for array sizes 1, 10, 100, 1000, next to
   the SAME JSON payload POSTed raw with requests (the physical limit: OAR's oarsub behind
   the API) in the same run, interleaved. Jobs are submitted on hold (`hold` key added to
   the payload by a bench subclass) so they never occupy the shared testbed's cores.
2. polling N active jobs: bulk (`get_jobs`, jobs/details?ids=…, chunks of api_chunk_size)
   versus one `get_job` per job: API calls and seconds per 1000 jobs.
With --batch slurm: the same, as Slurm job arrays POSTed to slurmrestd (`"hold": true`); polling
is one GET per array in bulk, against one GET (of the task's array) per job.
Every job the benchmark created is deleted at the end (array deletions)."""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import requests

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cigri.clusters.base import ClusterInfo, JobRequest  # noqa: E402
from cigri.clusters.oar2_5 import Oar25Adapter  # noqa: E402
from cigri.clusters.slurm import INDEX_BASE, SlurmAdapter  # noqa: E402


class HoldAdapter(Oar25Adapter):
    """The real adapter; payloads only gain `"hold": ""` (oarsub --hold)."""

    def _common_payload(self, request: JobRequest) -> dict[str, Any]:
        return super()._common_payload(request) | {"hold": ""}


class HoldSlurmAdapter(SlurmAdapter):
    """The real Slurm adapter; job descriptions only gain `"hold": true`."""

    def build_submissions(self, request: JobRequest) -> list[tuple[dict[str, Any], list[int]]]:
        return [({**body, "job": {**body["job"], "hold": True}}, pos)
                for body, pos in super().build_submissions(request)]


def slurm_main(args: argparse.Namespace) -> int:
    """Slurm: adapter vs raw POST loop to slurmrestd, then polling (see the module's docstring)."""
    from tests.slurm_testbed import cluster_row, headers, testbed_url

    api = args.api if args.api != default_api() else testbed_url()
    info = ClusterInfo.from_row({"id": 1} | cluster_row("bench", api_url=api))
    adapter = HoldSlurmAdapter(info)
    if not adapter.check_api():
        print(f"slurmrestd {api} does not answer (sudo tools/slurm-testbed/slurm-testbed up)", file=sys.stderr)
        return 2
    raw = requests.Session()
    submit_url = f"{api}slurm/{adapter.version}/job/submit"
    arrays: list[int] = []
    all_ids: list[int] = []
    rows = []
    try:
        for size in [int(s) for s in args.sizes.split(",")]:
            posts = max(args.min_posts, args.budget // size)
            req = JobRequest(command="/bin/true", params=[f"p{i} x" for i in range(size)], resources="/core=1",
                             walltime="00:05:00", name="cigri.bench", directory=f"/home/{args.user}",
                             types=["besteffort"], job_ids=list(range(1, size + 1)))
            bodies = adapter.build_submissions(req)
            assert len(bodies) == 1
            body = json.dumps(bodies[0][0])
            hdrs = headers(args.user) | {"Content-Type": "application/json", "Accept": "application/json"}
            t_ad: list[float] = []
            t_raw: list[float] = []
            for _ in range(posts):  # interleaved: both sides see the same controller load
                t0 = time.perf_counter()
                ids = adapter.submit(req, args.user)
                t_ad.append(time.perf_counter() - t0)
                assert len(ids) == size
                arrays.append(ids[0] // INDEX_BASE)
                all_ids.extend(ids)
                t0 = time.perf_counter()
                r = raw.post(submit_url, data=body, headers=hdrs, timeout=600)
                t_raw.append(time.perf_counter() - t0)
                r.raise_for_status()
                arrays.append(int(r.json()["job_id"]))
            ad = size / statistics.median(t_ad)
            rw = size / statistics.median(t_raw)
            rows.append((size, posts, ad, rw, statistics.median(t_ad), statistics.median(t_raw)))
            print(f"  size {size}: {posts} POST(s) each side done", file=sys.stderr)
        print(f"\nSubmission to slurmrestd {api} (arrays on hold; {os.cpu_count()} CPUs shared with Slurm)")
        print("jobs/s = array size / median time of one POST; raw = same JSON body POSTed with requests")
        print(f"{'array size':>10} {'POSTs':>6} {'adapter jobs/s':>15} {'raw jobs/s':>11} {'ratio':>6} "
              f"{'adapter s/POST':>15} {'raw s/POST':>11}")
        for size, posts, ad, rw, mad, mrw in rows:
            print(f"{size:>10} {posts:>6} {ad:>15.1f} {rw:>11.1f} {ad / rw:>6.2f} {mad:>15.3f} {mrw:>11.3f}")
        polled = all_ids[-args.poll:]
        n = len(polled)
        adapter.http.calls = 0
        t0 = time.perf_counter()
        jobs = adapter.get_jobs(polled)
        t_bulk = time.perf_counter() - t0
        bulk_calls = adapter.http.calls
        assert len(jobs) == n and all(j.raw_state == "PENDING" for j in jobs.values()), "unexpected states"
        sample = polled[: args.one_by_one]
        adapter.http.calls = 0
        t0 = time.perf_counter()
        for rid in sample:
            adapter.get_job(rid)
        t_one = time.perf_counter() - t0
        one_calls = adapter.http.calls
        print(f"\nPolling {n} pending array tasks ({len(all_ids)} on hold in {len(arrays)} arrays)")
        print(f"{'method':>24} {'API calls/1000 jobs':>20} {'s/1000 jobs':>12}")
        print(f"{'bulk GET job/<array>':>24} {bulk_calls * 1000 / n:>20.1f} {t_bulk * 1000 / n:>12.2f}")
        print(f"{'one get_job each':>24} {one_calls * 1000 / len(sample):>20.1f} "
              f"{t_one * 1000 / len(sample):>12.2f}   (measured on {len(sample)} jobs)")
    finally:
        t0 = time.perf_counter()
        for aid in arrays:
            try:
                raw.delete(f"{api}slurm/{adapter.version}/job/{aid}", headers=headers(args.user), timeout=600)
            except requests.RequestException as exc:
                print(f"could not delete array {aid}: {exc}", file=sys.stderr)
        adapter.close()
        print(f"\ncleanup: {len(arrays)} array deletions sent in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
    return 0


def default_api() -> str:
    url = os.environ.get("RIG_API_c1")
    if not url and Path("/etc/oar-rig/rig.env").exists():
        for line in Path("/etc/oar-rig/rig.env").read_text().splitlines():
            if line.startswith("RIG_API_c1="):
                url = line.split("=", 1)[1].strip().strip('"')
    return url or "http://127.0.0.1:6668/oarapi/"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", choices=["oar2_5", "slurm"], default="oar2_5")
    ap.add_argument("--api", default=default_api())
    ap.add_argument("--sizes", default="1,10,100,1000")
    ap.add_argument("--user", default="alice")
    ap.add_argument("--budget", type=int, default=60, help="jobs per size and per side (at least --min-posts POSTs)")
    ap.add_argument("--min-posts", type=int, default=3, help="POSTs per size and per side, at least")
    ap.add_argument("--one-by-one", type=int, default=100, help="jobs polled one by one (extrapolated)")
    ap.add_argument("--poll", type=int, default=1000, help="active jobs polled in bulk")
    args = ap.parse_args()
    if args.batch == "slurm":
        return slurm_main(args)
    api = args.api if args.api.endswith("/") else args.api + "/"
    info = ClusterInfo(id=1, name="bench", api_url=api, batch="oar2_5", resource_unit="core",
                       api_chunk_size=100, api_limit=100)
    adapter = HoldAdapter(info)
    raw = requests.Session()
    raw_headers = {"X_REMOTE_IDENT": args.user, "Accept": "application/json", "Content-Type": "application/json"}
    arrays: list[int] = []
    all_ids: list[int] = []
    rows = []
    if not adapter.check_api():
        print(f"API {api} does not answer (sudo tools/oar-testbed/oar-testbed up)", file=sys.stderr)
        return 2
    try:
        for size in [int(s) for s in args.sizes.split(",")]:
            posts = max(args.min_posts, args.budget // size)
            req = JobRequest(command="/bin/true", params=[f"p{i} x" for i in range(size)], resources="/core=1",
                             walltime="00:05:00", name="cigri.bench", directory=f"/home/{args.user}")
            payloads = adapter.build_payloads(req)
            assert len(payloads) == 1
            body = json.dumps(payloads[0][0])
            t_ad: list[float] = []
            t_raw: list[float] = []
            for _ in range(posts):  # interleaved: both sides see the same cluster load
                t0 = time.perf_counter()
                ids = adapter.submit(req, args.user)
                t_ad.append(time.perf_counter() - t0)
                assert len(ids) == size
                arrays.append(ids[0])
                all_ids.extend(ids)
                t0 = time.perf_counter()
                r = raw.post(api + "jobs", data=body, headers=raw_headers, timeout=600)
                if r.status_code >= 500 and "json" not in r.headers.get("Content-Type", ""):
                    r = raw.post(api + "jobs", data=body, headers=raw_headers, timeout=600)  # same retry rule
                t_raw.append(time.perf_counter() - t0)
                r.raise_for_status()
                arrays.append(int(r.json()["id"]))
            ad = size / statistics.median(t_ad)  # medians: the 2-CPU machine is shared, outliers happen
            rw = size / statistics.median(t_raw)
            rows.append((size, posts, ad, rw, statistics.median(t_ad), statistics.median(t_raw)))
            print(f"  size {size}: {posts} POST(s) each side done", file=sys.stderr)

        print(f"\nSubmission to {api} (jobs on hold; {os.cpu_count()} CPUs shared with OAR)")
        print("jobs/s = array size / median time of one POST; raw = same JSON body POSTed with requests")
        print(f"{'array size':>10} {'POSTs':>6} {'adapter jobs/s':>15} {'raw jobs/s':>11} {'ratio':>6} "
              f"{'adapter s/POST':>15} {'raw s/POST':>11}")
        for size, posts, ad, rw, mad, mrw in rows:
            print(f"{size:>10} {posts:>6} {ad:>15.1f} {rw:>11.1f} {ad / rw:>6.2f} {mad:>15.3f} {mrw:>11.3f}")

        # polling: N active (on hold) jobs
        polled = all_ids[-args.poll:]
        n = len(polled)
        adapter.http.calls = 0
        t0 = time.perf_counter()
        jobs = adapter.get_jobs(polled)
        t_bulk = time.perf_counter() - t0
        bulk_calls = adapter.http.calls
        assert len(jobs) == n and all(j.raw_state == "Hold" for j in jobs.values()), "unexpected states"
        sample = polled[: args.one_by_one]
        adapter.http.calls = 0
        t0 = time.perf_counter()
        for rid in sample:
            adapter.get_job(rid)
        t_one = time.perf_counter() - t0
        one_calls = adapter.http.calls
        print(f"\nPolling {n} active jobs (api_chunk_size {info.api_chunk_size}; {len(all_ids)} on hold)")
        print(f"{'method':>24} {'API calls/1000 jobs':>20} {'s/1000 jobs':>12}")
        print(f"{'bulk jobs/details?ids=':>24} {bulk_calls * 1000 / n:>20.1f} {t_bulk * 1000 / n:>12.2f}")
        print(f"{'one GET jobs/<id> each':>24} {one_calls * 1000 / len(sample):>20.1f} "
              f"{t_one * 1000 / len(sample):>12.2f}   (measured on {len(sample)} jobs)")
    finally:
        t0 = time.perf_counter()
        for aid in arrays:
            for _attempt in range(3):  # OAR 2.5's FastCGI process exits every 51 requests: retry 5xx
                try:
                    r = raw.post(f"{api}jobs/array/{aid}/deletions/new.json", data="{}", headers=raw_headers,
                                 timeout=600)
                    if r.status_code < 500:
                        break
                except requests.RequestException as exc:
                    print(f"could not delete array {aid}: {exc}", file=sys.stderr)
        print(f"\ncleanup: {len(arrays)} array deletions sent in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
