"""Faults from outside the engine (bad answers, junk in task output), reproduced against the
real OAR testbed and PostgreSQL: a faulty proxy in front of a testbed cluster spoils the
answers the runner gets, the cluster itself really runs the jobs."""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.engine import Engine

from cigri.engine import colombo, updator
from cigri.engine.runner import Runner
from tests.engine.test_runner import events_of, jobs_of, make_campaign, queue_all, setc
from tests.faultproxy import Fault, fault_proxy
from tests.oar_testbed import cluster_row, requires_oar, testbed_api

pytestmark = [pytest.mark.oar, requires_oar]

DEADLINE = 240.0


@pytest.fixture
def work() -> Iterator[Path]:
    d = Path(f"/home/alice/cigri_faults_{os.getpid()}")
    shutil.rmtree(d, ignore_errors=True)
    d.mkdir(parents=True)
    shutil.chown(d, "alice", "alice")
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


def script(work: Path, name: str, body: str) -> str:
    p = work / name
    p.write_text("#!/bin/bash\n" + body)
    p.chmod(0o755)
    shutil.chown(p, "alice", "alice")
    return str(p)


def add_proxied_cluster(engine: Engine, url: str, name: str = "c1") -> int:
    from cigri.db.schema import clusters

    with engine.begin() as c:
        return int(c.execute(clusters.insert().values(**cluster_row(name, api_url=url))
                             .returning(clusters.c.id)).scalar_one())


def campaign(engine: Engine, cl: int, work: Path, exec_file: str, params: list[str]) -> int:
    cid = make_campaign(engine, [cl], params, props={"exec_file": exec_file, "exec_directory": str(work),
                                                     "resources": "/core=1", "walltime": "00:05:00",
                                                     "properties": "cluster='c1'"})
    queue_all(engine, cid, cl)
    return cid


def drive(engine: Engine, runner: Runner, until: Callable[[], Any], conf: Any, what: str,
          deadline: float = DEADLINE) -> Any:
    """Run the engine's steps (runner cycle, colombo, updator's autofix) until `until()`."""
    end = time.monotonic() + deadline
    while True:
        runner.run_cycle()
        colombo.check_events(engine, conf=conf)
        updator.run_once(engine, conf, force=True)
        value = until()
        if value:
            return value
        if time.monotonic() > end:
            raise AssertionError(f"timed out waiting for {what}: events "
                                 f"{[(e['code'], e['state'], e['message']) for e in events_of(engine)]}")
        time.sleep(1.0)


def all_done(engine: Engine, cid: int, n: int) -> bool:
    js = jobs_of(engine, cid)
    return len(js) == n and all(j["state"] in ("terminated", "event") for j in js)


def test_a_truncated_poll_answer_is_fixed_automatically(pg_engine: Engine, pg_conf: Any, work: Path) -> None:
    """#11.4: one bulk status answer cut short blacklists the cluster (FILL_JOBS_CACHE), and the
    blacklist is lifted by itself once the cluster answers again, as for a timeout."""
    setc(pg_conf, {"AUTOFIX_DELAY": "0", "RUNNER_DEFAULT_INITIAL_NUMBER_OF_JOBS": "3"})
    spoil = {"on": False}

    def rule(method: str, path: str, query: str) -> Fault | None:
        if spoil["on"] and method == "GET" and "jobs/details" in path:
            spoil["on"] = False  # one answer only
            return Fault("truncate", keep=40)
        return None

    with fault_proxy(testbed_api("c1"), rule) as proxy:
        cl = add_proxied_cluster(pg_engine, proxy.url)
        cid = campaign(pg_engine, cl, work, "/bin/sleep", ["1", "1", "1"])
        runner = Runner(pg_engine, "c1", pg_conf)
        runner.run_cycle()
        assert {j["state"] for j in jobs_of(pg_engine, cid)} == {"submitted"}
        spoil["on"] = True
        runner.run_cycle()
        assert proxy.faults, "the poll answer was not spoiled"
        [ev] = [e for e in events_of(pg_engine) if e["class"] == "cluster" and e["state"] == "open"]
        colombo.check_events(pg_engine, conf=pg_conf)
        assert [e for e in events_of(pg_engine, "BLACKLIST") if e["state"] == "open"]
        drive(pg_engine, runner, lambda: all_done(pg_engine, cid, 3), pg_conf, "the jobs to end")
    assert {j["state"] for j in jobs_of(pg_engine, cid)} == {"terminated"}
    closed = {e["id"]: e for e in events_of(pg_engine)}
    assert closed[ev["id"]]["state"] == "closed", ev  # fixed by the autofix, nobody had to
    assert all(e["state"] == "closed" for e in events_of(pg_engine, "BLACKLIST"))


def test_a_nul_byte_in_a_task_stderr_does_not_stop_the_runner(pg_engine: Engine, pg_conf: Any, work: Path) -> None:
    """#11.1: `printf 'a\\0b\\n' >&2; exit 3` on a real cluster: its EXIT_ERROR event is recorded
    (the NUL shown as U+FFFD) and the other jobs of the same poll end normally."""
    setc(pg_conf, {"RUNNER_DEFAULT_INITIAL_NUMBER_OF_JOBS": "3"})
    task = script(work, "nul.sh", 'if [ "$1" = bad ]; then printf \'a\\0b\\n\' >&2; exit 3; fi\nexit 0\n')
    with fault_proxy(testbed_api("c1"), lambda m, p, q: None) as proxy:
        cl = add_proxied_cluster(pg_engine, proxy.url)
        cid = campaign(pg_engine, cl, work, task, ["bad", "good1", "good2"])
        runner = Runner(pg_engine, "c1", pg_conf)
        drive(pg_engine, runner, lambda: all_done(pg_engine, cid, 3), pg_conf, "the jobs to end")
    by_param = {j["param_id"]: j for j in jobs_of(pg_engine, cid)}
    assert sorted(j["state"] for j in by_param.values()) == ["event", "terminated", "terminated"]
    [ev] = events_of(pg_engine, "EXIT_ERROR")
    assert "exit status 768" in ev["message"] and "a\ufffdb" in ev["message"], ev["message"]


@pytest.mark.parametrize("fault", [Fault("truncate", keep=25), Fault("garble", body=b"<html>proxy error")])
def test_an_unreadable_submission_answer_is_reconciled_never_run_twice(pg_engine: Engine, pg_conf: Any,
                                                                       work: Path, fault: Fault) -> None:
    """#11.2: OAR accepts the POST but its answer is cut short or unreadable. The jobs stay
    `launching` and the next cycle adopts what OAR has: no failure event, no blacklist, and
    every task runs exactly once."""
    setc(pg_conf, {"RUNNER_DEFAULT_INITIAL_NUMBER_OF_JOBS": "3"})
    task = script(work, "count.sh", f'echo run >> {work}/runs.$1\n')
    spoil = {"on": True}

    def rule(method: str, path: str, query: str) -> Fault | None:
        if spoil["on"] and method == "POST" and path.endswith("/jobs"):
            spoil["on"] = False
            return fault
        return None

    with fault_proxy(testbed_api("c1"), rule) as proxy:
        cl = add_proxied_cluster(pg_engine, proxy.url)
        cid = campaign(pg_engine, cl, work, task, ["1", "2", "3"])
        runner = Runner(pg_engine, "c1", pg_conf)
        runner.run_cycle()
        assert proxy.faults == [("POST", "/oarapi/jobs", fault.kind)]
        assert {j["state"] for j in jobs_of(pg_engine, cid)} == {"launching"}
        drive(pg_engine, runner, lambda: all_done(pg_engine, cid, 3), pg_conf, "the jobs to end")
    js = jobs_of(pg_engine, cid)
    assert [j["state"] for j in js] == ["terminated"] * 3 and len({j["remote_id"] for j in js}) == 3
    assert not [e for e in events_of(pg_engine) if e["class"] == "job" or e["code"] == "BLACKLIST"]
    assert {p: (work / f"runs.{p}").read_text() for p in "123"} == {p: "run\n" for p in "123"}
