"""End-to-end harness: the real CiGri daemons on the real OAR testbed (3 OAR 2.5 clusters).

A scratch PostgreSQL database and a cigri.conf with short cycles are made for the session;
the daemons run as subprocesses with CIGRICONFFILE pointing at it: `cigri-almighty` when it
exists (it starts runners and colombo), else `cigri-runner <c>` per cluster, `cigri-colombo`
and the periodic modules (meta-scheduler, updator, nikita) driven from a thread.
Tests are marked `oar`: skipped when the testbed is absent on a developer machine, failed in CI
(tests/parts.py)."""

from __future__ import annotations

import importlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from cigri.config import Conf, set_conf
from cigri.db import schema

PG_BASE = os.environ.get("CIGRI_TEST_PG", "postgresql+psycopg://cigri:cigri@127.0.0.1:5432")
BIN = Path(sys.executable).parent
WORK = Path("/home/alice/cigri_e2e")


def wait_for(what: str, cond: Callable[[], Any], timeout: float = 180, every: float = 0.5,
             diag: Callable[[], Any] | None = None) -> Any:
    """Poll until cond() is truthy (generous deadlines: OAR is slow on a loaded machine)."""
    deadline = time.monotonic() + timeout
    while True:
        v = cond()
        if v:
            return v
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}" + (f"; {diag()}" if diag else ""))
        time.sleep(every)


class Grid:
    """The running CiGri: daemons, database, and helpers to look at the true story."""

    def __init__(self, engine: Engine, conf: Conf, conf_file: Path, logdir: Path, clusters: dict[str, int]):
        self.engine = engine
        self.conf = conf
        self.conf_file = conf_file
        self.logdir = logdir
        self.clusters = clusters
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.almighty = not os.environ.get("CIGRI_E2E_NO_ALMIGHTY")

    # -- processes
    def _spawn(self, key: str, argv: list[str]) -> subprocess.Popen[bytes]:
        env = dict(os.environ, CIGRICONFFILE=str(self.conf_file), PYTHONUNBUFFERED="1")
        out = open(self.logdir / f"{key.replace(' ', '_')}.log", "ab")  # noqa: SIM115
        p = subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        self.procs[key] = p
        return p

    def start(self) -> None:
        if self.almighty:
            self._spawn("almighty", [str(BIN / "cigri-almighty")])
            return
        for name in self.clusters:
            self.start_runner(name)
        self._spawn("colombo", [str(BIN / "cigri-colombo")])
        self._thread = threading.Thread(target=self._periodic, daemon=True)
        self._thread.start()

    def start_runner(self, name: str) -> None:
        self._spawn(f"runner {name}", [str(BIN / "cigri-runner"), name])

    def runner_pid(self, name: str) -> int | None:
        if not self.almighty:
            p = self.procs.get(f"runner {name}")
            return p.pid if p is not None and p.poll() is None else None
        root = self.procs["almighty"].pid
        for d in Path("/proc").iterdir():
            if not d.name.isdigit():
                continue
            try:
                stat = (d / "stat").read_text().rsplit(")", 1)[1].split()
                cmd = (d / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if int(stat[1]) == root and any(b"runner" in c for c in cmd) and name.encode() in cmd:
                return int(d.name)
        return None

    def kill9_runner(self, name: str) -> None:
        pid = self.runner_pid(name)
        assert pid is not None, f"no runner for {name}"
        os.kill(pid, signal.SIGKILL)
        if not self.almighty:
            self.procs[f"runner {name}"].wait()
            self.start_runner(name)  # almighty would restart it

    def _periodic(self) -> None:
        mods = [importlib.import_module(m) for m in ("cigri.engine.metascheduler", "cigri.engine.updator",
                                                      "cigri.engine.nikita")]
        while not self._stop.is_set():
            for m in mods:
                try:
                    m.run_once(self.engine, self.conf)
                except Exception as e:  # noqa: BLE001
                    print(f"{m.__name__}: {e}", file=sys.stderr)
            self._stop.wait(1.0)

    def stop(self) -> None:
        self._stop.set()
        for p in self.procs.values():
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGTERM)
        for p in self.procs.values():
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()
        if self._thread is not None:
            self._thread.join(timeout=30)

    # -- the true story
    def campaign_state(self, cid: int) -> str:
        with self.engine.connect() as c:
            return str(c.execute(sa.select(schema.campaigns.c.state).where(schema.campaigns.c.id == cid)).scalar())

    def jobs(self, cid: int) -> list[dict[str, Any]]:
        with self.engine.connect() as c:
            return [dict(r) for r in c.execute(sa.select(schema.jobs).where(schema.jobs.c.campaign_id == cid)
                                               .order_by(schema.jobs.c.id)).mappings()]

    def events(self, cid: int | None = None, code: str | None = None) -> list[dict[str, Any]]:
        q = sa.select(schema.events).order_by(schema.events.c.id)
        if cid is not None:
            q = q.where(schema.events.c.campaign_id == cid)
        if code is not None:
            q = q.where(schema.events.c.code == code)
        with self.engine.connect() as c:
            return [dict(r) for r in c.execute(q).mappings()]

    def assert_true_story(self, cid: int, n_params: int) -> None:
        """Each parameter has exactly one terminated job; no two attempts of a parameter were
        active at the same time (each resubmission follows a finished attempt)."""
        jobs = [j for j in self.jobs(cid) if j["param_id"] != 0]
        by_param: dict[int, list[dict[str, Any]]] = {}
        for j in jobs:
            by_param.setdefault(j["param_id"], []).append(j)
        assert len(by_param) == n_params
        for pid, attempts in by_param.items():
            assert [a["state"] for a in attempts[:-1]] == ["event"] * (len(attempts) - 1), (pid, attempts)
            assert attempts[-1]["state"] == "terminated", (pid, attempts)
            for prev, nxt in zip(attempts, attempts[1:], strict=False):
                if prev["stop_time"] and nxt["submission_time"]:
                    assert (nxt["submission_time"] - prev["stop_time"]).total_seconds() > -1, (pid, attempts)
        owners: dict[tuple[int, int], set[Any]] = {}
        for j in jobs:
            if j["remote_id"] is not None:  # one OAR job = one CiGri job, or one temporal-grouping batch
                key = ("batch", j["batch_id"]) if j["tag"] == "batch" else ("job", j["id"])
                owners.setdefault((j["cluster_id"], j["remote_id"]), set()).add(key)
        assert all(len(o) == 1 for o in owners.values()), "one OAR job given to two CiGri jobs"


def _scratch_db(name: str) -> dict[str, str]:
    from cigri.db.admin import create_scratch_database

    return create_scratch_database(PG_BASE, name)


@pytest.fixture(scope="session")
def grid(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Grid]:
    from tests import oar_testbed as tb
    from tests.conftest import POSTGRES

    POSTGRES.require()
    tb.OAR_TESTBED.require()  # skipped on a developer machine without it, FAILS in CI

    name = f"cigri_e2e_{os.getpid()}"
    values = _scratch_db(name)
    # not under pytest's basetemp: other pytest sessions on this machine rotate it away
    d = Path(tempfile.mkdtemp(prefix="cigri-e2e-"))
    values |= {"LOG_FILE": str(d / "cigri.log"), "LOG_LEVEL": "INFO", "RUNNER_MIN_CYCLE_DURATION": "1",
               "ALMIGHTY_CYCLE": "1", "AUTOFIX_DELAY": "2", "RUNNER_TAP_GRACE_PERIOD": "5",
               "REMOTE_WAITING_TIMEOUT": "600", "STRESS_FACTOR": "100", "GRID_USAGE_UPDATE_PERIOD": "0",
               "RESTART_DELAY": "1", "STDERR_TAIL": "5", "REST_QUERIES_TIMEOUT": "20",
               "PID_FILE": str(d / "almighty.pid"), "JUDAS_POLL": "5"}
    conf_file = d / "cigri.conf"
    conf_file.write_text("".join(f'{k}="{v}"\n' for k, v in values.items()))
    conf = Conf(str(conf_file))
    set_conf(conf)
    from cigri.db.engine import make_engine

    engine = make_engine(conf)
    clusters = tb.register_testbed_clusters(engine)
    if not isinstance(clusters, dict):
        with engine.connect() as c:
            clusters = {r.name: r.id for r in c.execute(sa.select(schema.clusters.c.name, schema.clusters.c.id))}
    shutil.rmtree(WORK, ignore_errors=True)
    WORK.mkdir(parents=True)
    shutil.chown(WORK, "alice", "alice")
    g = Grid(engine, conf, conf_file, d, clusters)
    g.start()
    try:
        yield g
    finally:
        g.stop()
        print(f"CiGri logs in {d}", file=sys.stderr)
        engine.dispose()
        from cigri.db.engine import reset_engines

        reset_engines()
        adm = sa.create_engine(f"{PG_BASE}/postgres", isolation_level="AUTOCOMMIT")
        with adm.connect() as c:
            c.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        adm.dispose()
        set_conf(None)


def script(name: str, body: str) -> str:
    """An executable in alice's e2e directory (tasks run as alice)."""
    p = WORK / name
    p.write_text("#!/bin/bash\n" + body)
    p.chmod(0o755)
    shutil.chown(p, "alice", "alice")
    return str(p)
