#!/usr/bin/env python3
"""Campaign ingestion benchmark (issue #2 item 8).

Submits a campaign whose param_file has N lines (default 1,000,000) into a scratch
PostgreSQL database with cigri.campaigns.submit_campaign, and measures in the same run
the raw COPY rate of the same rows (parameters + bag_of_tasks):
  (a) into scratch tables without any index  (this machine's physical limit),
  (b) into tables shaped like CiGri3's (CREATE TABLE ... LIKE ... INCLUDING ALL: same
      indexes and constraints).
Peak RSS of the submitting process is measured for N and N/10 lines (it should not
grow with the file). SQLite figures follow.

    .venv/bin/python bench/ingest.py [--lines 1000000] [--rounds 2] [--pg postgresql+psycopg://...]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import sqlalchemy as sa

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

CHUNK = 50_000


def write_param_file(path: Path, n: int) -> None:
    with open(path, "w") as f:
        for i in range(n):
            f.write(f"param{i} {i} input/file_{i}.dat --option=value\n")


def vm_hwm_kb() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return 0


def child_submit(url: str, param_file: str) -> None:
    """Runs in a fresh process: submit and print seconds + peak RSS (kB). VmHWM, not
    ru_maxrss: the latter keeps the parent's peak across fork+exec."""
    from cigri import campaigns
    from cigri.config import Conf, set_conf
    from cigri.db.engine import make_engine

    kind = "SQLite" if url.startswith("sqlite") else "PostgreSQL"
    conf = Conf(values={"DATABASE_TYPE": kind})
    set_conf(conf)
    eng = make_engine(conf, url=url)
    base = vm_hwm_kb()
    t = time.perf_counter()
    cid = campaigns.submit_campaign(eng, {"name": "bench", "param_file": param_file, "exec_file": "/bin/true",
                                          "clusters": {"c1": {}}}, "bench")
    dt = time.perf_counter() - t
    peak = vm_hwm_kb()
    print(json.dumps({"cid": cid, "seconds": dt, "peak_kb": peak, "base_kb": base}))


def submit_in_child(url: str, param_file: Path) -> dict:
    out = subprocess.run([sys.executable, __file__, "--child", url, str(param_file)], capture_output=True,
                         text=True, check=False)
    if out.returncode != 0:
        raise SystemExit(f"submission failed:\n{out.stderr}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def copy_data(param_file: Path, cid: int, first_id: int) -> tuple[list[str], list[str]]:
    """The rows of the submission, pre-formatted for COPY (so (a) and (b) time the server only)."""
    params, bag = [], []
    buf, bbuf = [], []
    i = first_id
    with open(param_file) as f:
        for line in f:
            line = line.strip()
            name = line.split(None, 1)[0] if line else ""
            buf.append(f"{i}\t{cid}\t{name}\t{line}\n")
            bbuf.append(f"{i}\t{cid}\t{i}\t10\n")
            i += 1
            if len(buf) >= CHUNK:
                params.append("".join(buf))
                bag.append("".join(bbuf))
                buf, bbuf = [], []
    if buf:
        params.append("".join(buf))
        bag.append("".join(bbuf))
    return params, bag


def raw_copy(eng: sa.Engine, ptable: str, btable: str, params: list[str], bag: list[str]) -> float:
    raw = eng.raw_connection()
    try:
        cur = raw.cursor()
        t = time.perf_counter()
        with cur.copy(f"COPY {ptable} (id, campaign_id, name, param) FROM STDIN") as cp:
            for ch in params:
                cp.write(ch)
        with cur.copy(f"COPY {btable} (id, campaign_id, param_id, priority) FROM STDIN") as cp:
            for ch in bag:
                cp.write(ch)
        raw.commit()
        return time.perf_counter() - t
    finally:
        raw.close()


def bench_pg(base: str, n: int, tmp: Path, n_rounds: int) -> None:
    from cigri.db.admin import init_schema

    name = f"cigri_bench_ingest_{os.getpid()}"
    adm = sa.create_engine(f"{base}/postgres", isolation_level="AUTOCOMMIT")
    with adm.connect() as c:
        c.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        c.execute(sa.text(f'CREATE DATABASE "{name}" ENCODING \'UTF8\' TEMPLATE template0'))
    url = f"{base}/{name}"
    eng = sa.create_engine(url)
    try:
        init_schema(eng)
        with eng.begin() as c:
            c.execute(sa.text("INSERT INTO clusters (name, api_url, batch) VALUES ('c1', 'http://x/', 'oar2_5')"))
            c.execute(sa.text("CREATE TABLE scratch_params (id bigint, campaign_id int, name varchar(255), "
                              "param text)"))
            c.execute(sa.text("CREATE TABLE scratch_bag (id bigint, campaign_id int, param_id int, priority int)"))
            c.execute(sa.text("CREATE TABLE shaped_params (LIKE parameters INCLUDING ALL)"))
            c.execute(sa.text("CREATE TABLE shaped_bag (LIKE bag_of_tasks INCLUDING ALL)"))
            # autovacuum of the rows loaded by one measurement would slow down the next one
            for t in ("scratch_params", "scratch_bag", "shaped_params", "shaped_bag", "parameters", "bag_of_tasks"):
                c.execute(sa.text(f"ALTER TABLE {t} SET (autovacuum_enabled = false)"))
        pf = tmp / "params.txt"
        write_param_file(pf, n)
        small = tmp / "params-small.txt"
        write_param_file(small, n // 10)
        params, bag = copy_data(pf, 999, 1)
        rounds = []
        for r in range(n_rounds):
            with eng.begin() as c:  # every round starts from the same (empty) tables
                c.execute(sa.text("TRUNCATE scratch_params, scratch_bag, shaped_params, shaped_bag, parameters, "
                                  "bag_of_tasks, campaigns, campaign_properties, events"))
                c.execute(sa.text("INSERT INTO parameters (id, campaign_id, name, param) VALUES (0, 0, 'null', "
                                  "'null parameter for special jobs, dont delete!')"))
            ta = raw_copy(eng, "scratch_params", "scratch_bag", params, bag)
            tb = raw_copy(eng, "shaped_params", "shaped_bag", params, bag)
            sub = submit_in_child(url, pf)
            with eng.connect() as c:
                got = c.execute(sa.text("SELECT count(*) FROM bag_of_tasks WHERE campaign_id = :c"),
                                {"c": sub["cid"]}).scalar_one()
            assert got == n, got
            rounds.append((ta, tb, sub))
            print(f"  round {r + 1}: (a) {n / ta:,.0f} rows/s, (b) {n / tb:,.0f} rows/s, submission "
                  f"{n / sub['seconds']:,.0f} params/s, ratio to (b) {tb / sub['seconds']:.2f}, "
                  f"load {os.getloadavg()[0]:.1f}", flush=True)
        del params, bag
        sub_small = submit_in_child(url, small)
        ta = min(r[0] for r in rounds)
        tb = min(r[1] for r in rounds)
        sub = min((r[2] for r in rounds), key=lambda x: x["seconds"])
        rate = n / sub["seconds"]
        print(f"PostgreSQL, {n:,} parameters (+ {n:,} bag_of_tasks rows), best of {n_rounds} rounds")
        print(f"  raw COPY, scratch tables without indexes (a): {n / ta:12,.0f} rows/s  ({ta:.2f} s)")
        print(f"  raw COPY, CiGri3-shaped indexed tables   (b): {n / tb:12,.0f} rows/s  ({tb:.2f} s)")
        print(f"  submit_campaign (parse, admission, COPY):     {rate:12,.0f} params/s ({sub['seconds']:.2f} s)")
        print(f"  ratio submission / (b): {rate / (n / tb):.2f}    submission / (a): {rate / (n / ta):.2f}")
        print(f"  peak RSS of the submitting process: {sub['peak_kb'] / 1024:.0f} MB for {n:,} lines, "
              f"{sub_small['peak_kb'] / 1024:.0f} MB for {n // 10:,} lines "
              f"(after imports, before submitting: {sub['base_kb'] / 1024:.0f} MB)")
    finally:
        eng.dispose()
        drop_database(adm, name)
        adm.dispose()


def drop_database(adm: sa.Engine, name: str) -> None:
    """Drop the scratch database, waiting for a late autovacuum worker to leave it."""
    deadline = time.monotonic() + 120
    while True:
        try:
            with adm.connect() as c:
                c.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}"'))
            return
        except sa.exc.OperationalError:
            if time.monotonic() > deadline:
                print(f"could not drop database {name}: drop it by hand", file=sys.stderr)
                return
            time.sleep(2)


def bench_sqlite(n: int, tmp: Path) -> None:
    import sqlite3

    from cigri.db.admin import init_schema

    path = tmp / "bench.sqlite"
    url = f"sqlite:///{path}"
    eng = sa.create_engine(url)
    init_schema(eng)
    with eng.begin() as c:
        c.execute(sa.text("INSERT INTO clusters (name, api_url, batch) VALUES ('c1', 'http://x/', 'oar2_5')"))
    eng.dispose()
    pf = tmp / "params.txt"
    sub = submit_in_child(url, pf)
    raw = sqlite3.connect(tmp / "scratch.sqlite")
    raw.execute("PRAGMA journal_mode=WAL")
    raw.execute("PRAGMA synchronous=NORMAL")
    raw.execute("CREATE TABLE p (id INTEGER PRIMARY KEY, campaign_id int, name text, param text)")
    raw.execute("CREATE TABLE b (id INTEGER PRIMARY KEY, campaign_id int, param_id int, priority int)")
    rows = []
    with open(pf) as f:
        for i, line in enumerate(f, 1):
            line = line.strip()
            rows.append((i, 1, line.split(None, 1)[0], line))
    t = time.perf_counter()
    raw.executemany("INSERT INTO p VALUES (?, ?, ?, ?)", rows)
    raw.executemany("INSERT INTO b VALUES (?, 1, ?, 10)", ((r[0], r[0]) for r in rows))
    raw.commit()
    ts = time.perf_counter() - t
    print(f"SQLite, {n:,} parameters")
    print(f"  raw executemany, tables without secondary indexes: {n / ts:12,.0f} rows/s ({ts:.2f} s)")
    print(f"  submit_campaign:                                   {n / sub['seconds']:12,.0f} params/s "
          f"({sub['seconds']:.2f} s), peak RSS {sub['peak_kb'] / 1024:.0f} MB")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lines", type=int, default=1_000_000)
    ap.add_argument("--pg", default=os.environ.get("CIGRI_TEST_PG", "postgresql+psycopg://cigri:cigri@127.0.0.1:5432"))
    ap.add_argument("--rounds", type=int, default=2, help="measure (a), (b) and the submission N times (best)")
    ap.add_argument("--no-sqlite", action="store_true")
    ap.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        child_submit(*a.child)
        return
    print(f"machine: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}")
    with tempfile.TemporaryDirectory() as d:
        bench_pg(a.pg, a.lines, Path(d), a.rounds)
        if not a.no_sqlite:
            bench_sqlite(a.lines, Path(d))


if __name__ == "__main__":
    main()
