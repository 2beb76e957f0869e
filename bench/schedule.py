#!/usr/bin/env python3
"""Meta-scheduler cycle time vs. the number of waiting tasks (issue #4, target ≤ 1 s).

Builds a scratch PostgreSQL database with C running campaigns × K clusters and N waiting
tasks (bulk-loaded with generate_series), then times meta-scheduler passes:
  cold    - empty queues: every (cluster, campaign) pair gets its stack and queue;
  steady  - queues full: nothing to top up;
  top-up  - after "runners" took 1/3 of each queue: only the missing entries are added.
Run for N = 100k and 1M to show the cost does not grow with N (compare rates whose full
queues, 300 pairs x 10 x rate, fit in 100k tasks: 3 and 30; with --rate 100 the queues
hold 300k entries, more than the 100k bag). "queued" = queue entries once every queue is
full. Next to it, one indexed primary-key SELECT round trip (the floor of any query).

  .venv/bin/python bench/schedule.py [--tasks 1000000 100000] [--campaigns 100] [--clusters 3]
Uses CIGRI_TEST_PG (default postgresql+psycopg://cigri:cigri@127.0.0.1:5432)."""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import sqlalchemy as sa

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cigri.config import Conf, set_conf  # noqa: E402
from cigri.db.admin import create_scratch_database, drop_scratch_database  # noqa: E402
from cigri.db.engine import make_engine  # noqa: E402
from cigri.db.schema import jobs_to_launch  # noqa: E402
from cigri.engine import metascheduler as ms  # noqa: E402

PG = os.environ.get("CIGRI_TEST_PG", "postgresql+psycopg://cigri:cigri@127.0.0.1:5432")
PROPS = {"type": "best-effort", "test_mode": "false", "exec_file": "/bin/true", "walltime": "00:10:00",
         "resources": "/resource_id=1", "temporal_grouping": "false", "dimensional_grouping": "false",
         "max_jobs": "None"}


def populate(eng: sa.Engine, n_campaigns: int, n_clusters: int, n_tasks: int) -> None:
    per = n_tasks // n_campaigns
    with eng.begin() as c:
        for i in range(n_clusters):
            c.execute(sa.text("INSERT INTO clusters (name, api_url, batch, api_auth_type) "
                              "VALUES (:n, 'http://127.0.0.1:1/', 'oar2_5', 'none')"), {"n": f"cl{i}"})
        c.execute(sa.text("INSERT INTO campaigns (grid_user, state, type, name, submission_time, nb_jobs, jdl) "
                          "SELECT 'user' || (g % 7), 'in_treatment', 'normal', 'c' || g, now(), :per, '{}' "
                          "FROM generate_series(1, :n) g"), {"n": n_campaigns, "per": per})
        for k, v in PROPS.items():
            c.execute(sa.text("INSERT INTO campaign_properties (campaign_id, cluster_id, name, value) "
                              "SELECT ca.id, cl.id, :k, :v FROM campaigns ca CROSS JOIN clusters cl"),
                      {"k": k, "v": v})
        c.execute(sa.text("INSERT INTO parameters (campaign_id, name, param) "
                          "SELECT ca.id, 'p' || g, 'p' || g || ' arg' FROM campaigns ca "
                          "CROSS JOIN generate_series(1, :per) g"), {"per": per})
        c.execute(sa.text("INSERT INTO bag_of_tasks (campaign_id, param_id, priority) "
                          "SELECT campaign_id, id, 10 FROM parameters WHERE id > 0"))
    with eng.connect().execution_options(isolation_level="AUTOCOMMIT") as c:
        c.execute(sa.text("VACUUM ANALYZE"))


def timed(fn, repeat: int = 1) -> list[float]:
    out = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return out


def run(n_tasks: int, n_campaigns: int, n_clusters: int, conf_values: dict[str, str],
        taken: int) -> dict[str, float]:
    name = f"cigri_bench_sched_{os.getpid()}"
    db_values = create_scratch_database(PG, name)
    try:
        conf = Conf(values=conf_values | db_values)
        set_conf(conf)
        eng = make_engine(conf)
        t0 = time.perf_counter()
        populate(eng, n_campaigns, n_clusters, n_tasks)
        load = time.perf_counter() - t0
        floor = statistics.median(timed(lambda: _pk_select(eng), 50))
        colds = []
        for _ in range(3):  # cold = empty queues (the runners took everything)
            with eng.begin() as c:
                c.execute(sa.text("DELETE FROM jobs_to_launch"))
            colds += timed(lambda: ms.run_once(eng, conf))
        cold = statistics.median(colds)
        fill = 0
        while sum(ms.run_once(eng, conf).queued.values()) and fill < 1000:  # fill every queue
            fill += 1
        with eng.connect() as c:
            queued = c.execute(sa.select(sa.func.count()).select_from(jobs_to_launch)).scalar()
        steady = statistics.median(timed(lambda: ms.run_once(eng, conf), 5))
        tops = []
        for _ in range(5):
            with eng.begin() as c:  # each runner takes `taken` tasks (the oldest entries of its queue)
                c.execute(sa.text("WITH t AS (DELETE FROM jobs_to_launch WHERE id IN (SELECT id FROM (SELECT id, "
                                  "row_number() OVER (PARTITION BY cluster_id ORDER BY id) AS n "
                                  "FROM jobs_to_launch) q WHERE n <= :k) RETURNING task_id) "
                                  "DELETE FROM bag_of_tasks WHERE id IN (SELECT task_id FROM t)"), {"k": taken})
            tops += timed(lambda: ms.run_once(eng, conf))
        eng.dispose()
        return {"tasks": n_tasks, "load_s": load, "floor_ms": floor * 1000, "cold_s": cold, "queued": queued,
                "steady_s": steady, "topup_s": statistics.median(tops)}
    finally:
        set_conf(None)
        drop_scratch_database(PG, name)


def _pk_select(eng: sa.Engine) -> None:
    with eng.connect() as c:
        c.execute(sa.text("SELECT id FROM campaigns WHERE id = 1")).first()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tasks", type=int, nargs="+", default=[100_000, 1_000_000])
    ap.add_argument("--campaigns", type=int, default=100)
    ap.add_argument("--clusters", type=int, default=3)
    ap.add_argument("--rate", type=int, nargs="+", default=[3, 30],
                    help="tap rates (queue depth = 10 × rate per pair)")
    ap.add_argument("--taken", type=int, default=300, help="tasks each runner takes before a top-up pass")
    a = ap.parse_args()
    print(f"meta-scheduler: {a.campaigns} running campaigns x {a.clusters} clusters; cold = empty queues, "
          f"steady = full queues, top-up = after each runner took (as jobs) {a.taken} tasks (medians of 3-5 passes)")
    print(f"{'rate':>5} {'waiting tasks':>14} {'load s':>8} {'1 PK query ms':>14} {'cold s':>8} {'queued':>8} "
          f"{'steady s':>9} {'top-up s':>9}")
    for rate in a.rate:
        values = {"DATABASE_TYPE": "PostgreSQL", "DATABASE_SSL_MODE": "disable", "LOG_LEVEL": "WARN",
                  "RUNNER_DEFAULT_INITIAL_NUMBER_OF_JOBS": str(rate)}
        for n in a.tasks:
            r = run(n, a.campaigns, a.clusters, values, a.taken)
            print(f"{rate:>5} {r['tasks']:>14,} {r['load_s']:>8.1f} {r['floor_ms']:>14.2f} {r['cold_s']:>8.3f} "
                  f"{r['queued']:>8,} {r['steady_s']:>9.3f} {r['topup_s']:>9.3f}", flush=True)
    print("target: a cycle <= 1 s whose cost does not grow with the number of waiting tasks")
    return 0


if __name__ == "__main__":
    sys.exit(main())
