"""Almighty with real subprocesses: the real judas, meta-scheduler, updator and
nikita loops; runners and colombo replaced by a small stand-in process (tests/engine/test_runner.py and
test_colombo.py test them), so supervision is tested on its own."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import sqlalchemy as sa

from cigri.db.schema import campaigns, clusters, events, jobs_to_launch
from tests.conftest import add_cluster, pg_conf_values
from tests.engine.test_metascheduler import make_campaign

FAKE = ("import os, signal, sys, time, pathlib\n"
        "d = pathlib.Path(sys.argv[1]); name = sys.argv[-1]\n"
        "(d / f'{name}.{os.getpid()}').write_text(name)\n"
        "signal.signal(signal.SIGTERM, lambda *a: sys.exit(0))\n"
        "while True: time.sleep(0.2)\n")

LAUNCHER = ("import json, sys\n"
            "from cigri.config import Conf\n"
            "from cigri.engine.almighty import run_almighty\n"
            "from cigri.log import setup_daemon_logging\n"
            "conf = Conf(values=json.loads(sys.argv[1]))\n"
            "setup_daemon_logging('ALMIGHTY', conf)\n"
            "sys.exit(run_almighty(conf, commands=json.loads(sys.argv[2])))\n")


def wait_for(pred, timeout=120.0, what="condition"):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        v = pred()
        if v:
            return v
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ", 1)[1][0] != "Z"
    except (FileNotFoundError, IndexError):
        return False


def children_of(pid: int) -> set[int]:
    out: set[int] = set()
    try:
        for t in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{t}/children") as f:
                out |= {int(x) for x in f.read().split()}
    except FileNotFoundError:
        pass
    return out


class Runners:
    def __init__(self, d: Path):
        self.d = d

    def pids(self, name: str) -> list[int]:
        return sorted(int(p.suffix[1:]) for p in self.d.glob(f"{name}.*"))

    def live(self, name: str) -> list[int]:
        return [p for p in self.pids(name) if alive(p)]


def start(tmp_path: Path, values: dict[str, str]):
    rdir = tmp_path / "runners"
    rdir.mkdir()
    fake = [sys.executable, "-c", FAKE, str(rdir)]
    commands = {"runner": fake, "colombo": [*fake, "colombo"]}
    values = values | {"PID_FILE": str(tmp_path / "almighty.pid"), "RESTART_DELAY": "0.5",
                       "ALMIGHTY_CYCLE": "0.5", "JUDAS_POLL": "0.5", "GRID_USAGE_UPDATE_PERIOD": "0",
                       "LOG_FILE": str(tmp_path / "cigri.log"), "LOG_LEVEL": "INFO"}
    env = dict(os.environ)
    env.pop("CIGRICONFFILE", None)
    proc = subprocess.Popen([sys.executable, "-c", LAUNCHER, json.dumps(values), json.dumps(commands)],
                            env=env, cwd=str(Path(__file__).resolve().parents[2]))
    return proc, Runners(rdir)


def codes(engine) -> list[str]:
    with engine.connect() as c:
        return [r[0] for r in c.execute(sa.select(events.c.code).order_by(events.c.id))]


@pytest.fixture
def almighty_pg(pg_engine, pg_dbname, tmp_path):
    a = add_cluster(pg_engine, "alpha", api_url="http://127.0.0.1:9/")
    b = add_cluster(pg_engine, "beta", api_url="http://127.0.0.1:9/")
    proc, runners = start(tmp_path, pg_conf_values(pg_dbname))
    yield proc, runners, a, b
    if proc.poll() is None:
        proc.kill()
        proc.wait()


def test_almighty_supervises_restarts_and_stops_cleanly(pg_engine, almighty_pg, tmp_path):
    proc, runners, a, b = almighty_pg
    wait_for(lambda: runners.live("alpha") and runners.live("beta"), what="one runner per enabled cluster")
    assert (tmp_path / "almighty.pid").read_text().strip() == str(proc.pid)
    wait_for(lambda: "ALMIGHTY_STARTING" in codes(pg_engine), what="ALMIGHTY_STARTING")

    # the periodic loops work: a campaign gets queued, an empty one terminates
    cid = make_campaign(pg_engine, "alice", [a], n_tasks=3)
    empty = make_campaign(pg_engine, "alice", [b], n_tasks=0)

    def queued():
        with pg_engine.connect() as c:
            return c.execute(sa.select(sa.func.count()).select_from(jobs_to_launch)).scalar() == 3

    def terminated():
        with pg_engine.connect() as c:
            return c.execute(sa.select(campaigns.c.state).where(campaigns.c.id == empty)).scalar() == "terminated"

    wait_for(queued, what="the meta-scheduler loop to queue the tasks")
    wait_for(terminated, what="the updator loop to terminate the empty campaign")
    assert cid

    # judas marks the events it handled
    def started_notified():
        with pg_engine.connect() as c:
            return c.execute(sa.select(events.c.notified).where(events.c.code == "ALMIGHTY_STARTING")).scalar()
    wait_for(started_notified, what="judas to handle ALMIGHTY_STARTING")

    # a runner killed -9 is restarted, with a RUNNER_FAILED event
    first = runners.live("alpha")[0]
    os.kill(first, signal.SIGKILL)
    wait_for(lambda: [p for p in runners.live("alpha") if p != first], what="the runner to be restarted")
    wait_for(lambda: "RUNNER_FAILED" in codes(pg_engine), what="RUNNER_FAILED")

    # a periodic module killed -9 is restarted too
    mods = {p: Path(f"/proc/{p}/cmdline").read_bytes() for p in children_of(proc.pid)}
    nikita = next(p for p, cmd in mods.items() if b"cigri.modules.nikita" in cmd)
    os.kill(nikita, signal.SIGKILL)
    wait_for(lambda: "NIKITA_FAILED" in codes(pg_engine), what="NIKITA_FAILED")
    wait_for(lambda: any(b"cigri.modules.nikita" in Path(f"/proc/{p}/cmdline").read_bytes()
                         for p in children_of(proc.pid) if alive(p)), what="nikita to be restarted")

    # a new cluster gets a runner; a disabled one loses it — no restart of almighty
    add_cluster(pg_engine, "gamma", api_url="http://127.0.0.1:9/")
    wait_for(lambda: runners.live("gamma"), what="a runner for the new cluster")
    beta = runners.live("beta")[0]
    with pg_engine.begin() as c:
        c.execute(clusters.update().where(clusters.c.id == b).values(enabled=False))
    wait_for(lambda: not alive(beta), what="the runner of the disabled cluster to stop")
    time.sleep(2)  # several almighty ticks: it must not come back
    assert runners.live("beta") == []

    # SIGTERM: clean stop, every child gone, events recorded, PID file removed
    kids = children_of(proc.pid)
    assert len(kids) >= 7  # judas, colombo, 3 loops, 2 runners
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(120) == 0
    assert not any(alive(p) for p in kids)
    assert "ALMIGHTY_TERMINATING" in codes(pg_engine)
    assert not (tmp_path / "almighty.pid").exists()
    log = (tmp_path / "cigri.log").read_text()
    assert "[ALMIGHTY]" in log and "[JUDAS]" in log and "[METASCHEDULER]" in log


def test_almighty_kill9_leaves_no_orphans(pg_engine, almighty_pg):
    proc, runners, _a, _b = almighty_pg
    wait_for(lambda: runners.live("alpha") and runners.live("beta"), what="runners")
    wait_for(lambda: len(children_of(proc.pid)) >= 7, what="every child")
    kids = children_of(proc.pid)
    proc.kill()
    proc.wait()
    wait_for(lambda: not any(alive(p) for p in kids), what="children to die with almighty")


def test_almighty_on_sqlite(tmp_path):
    """The same process tree on SQLite (local mode): loops poll instead of LISTEN."""
    from cigri.config import Conf
    from cigri.db.admin import init_schema
    from cigri.db.engine import make_engine

    values = {"DATABASE_TYPE": "SQLite", "DATABASE_PATH": str(tmp_path / "cigri.sqlite")}
    eng = make_engine(Conf(values=values))
    init_schema(eng)
    a = add_cluster(eng, "local1", batch="local", api_url="local://")
    make_campaign(eng, "alice", [a], n_tasks=4)
    proc, runners = start(tmp_path, values)
    try:
        wait_for(lambda: runners.live("local1"), what="the runner")

        def queued():
            with eng.connect() as c:
                return c.execute(sa.select(sa.func.count()).select_from(jobs_to_launch)).scalar() == 4
        wait_for(queued, what="the tasks to be queued")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(120) == 0
        assert "ALMIGHTY_TERMINATING" in codes(eng)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        eng.dispose()


HANG = ("import os, time\n"
        "os.write(int(os.environ['CIGRI_HEARTBEAT_FD']), b'B')  # a cycle starts and never ends\n"
        "time.sleep(3600)\n")


def test_module_stuck_in_a_cycle_is_killed_and_restarted(pg_engine, pg_dbname, tmp_path):
    add_cluster(pg_engine, "alpha", api_url="http://127.0.0.1:9/")
    values = pg_conf_values(pg_dbname) | {"MODULE_TIMEOUT": "1"}
    rdir = tmp_path / "runners"
    rdir.mkdir()
    fake = [sys.executable, "-c", FAKE, str(rdir)]
    commands = {"runner": fake, "colombo": [*fake, "colombo"], "nikita": [sys.executable, "-c", HANG]}
    values |= {"RESTART_DELAY": "0.5", "ALMIGHTY_CYCLE": "0.5", "JUDAS_POLL": "0.5",
               "GRID_USAGE_UPDATE_PERIOD": "0", "LOG_FILE": str(tmp_path / "cigri.log")}
    proc = subprocess.Popen([sys.executable, "-c", LAUNCHER, json.dumps(values), json.dumps(commands)])
    try:
        wait_for(lambda: "CHILD_TIMEOUT" in codes(pg_engine), what="CHILD_TIMEOUT")
        wait_for(lambda: "NIKITA_FAILED" in codes(pg_engine), what="the stuck module to be restarted")
        with pg_engine.connect() as c:
            msg = c.execute(sa.select(events.c.message).where(events.c.code == "CHILD_TIMEOUT").limit(1)).scalar()
        assert msg == "nikita timeout! Canceling!"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(120) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
