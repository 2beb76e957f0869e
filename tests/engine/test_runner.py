"""Runner logic against real PostgreSQL, with a fake cluster (fault injection) standing in for OAR."""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from datetime import timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from cigri.clusters.base import (
    ClusterAdapter,
    ClusterAPIConnectionError,
    ClusterAPINotFound,
    ClusterAPITimeoutPOST,
    JobRequest,
    Outcome,
    RemoteJob,
)
from cigri.clusters.oar2_5 import _describe, oar_outcome
from cigri.db import schema
from cigri.db.events import create_event
from cigri.engine import colombo
from cigri.engine.runner import ClusterGone, Runner, batch_script
from cigri.run_options import RunOptions, in_nightly_window
from tests.conftest import add_cluster


class FakeOAR(ClusterAdapter):
    """An in-memory OAR: jobs wait until the test runs or ends them; faults on demand."""

    batch = "fake"

    def __init__(self, cluster: Any = None, conf: Any = None, mapping: Any = None):
        super().__init__(cluster, conf, mapping)
        self.jobs: dict[int, RemoteJob] = {}
        self.files: dict[str, str] = {}
        self.requests: list[JobRequest] = []
        self.next_id = 0
        self.fail_submit: Exception | None = None
        self.accept_then_fail: Exception | None = None
        self.fail_get: Exception | None = None
        self.api_up = True

    # -- interface
    def check_api(self) -> bool:
        return self.api_up

    def submit(self, request: JobRequest, user: str) -> list[int]:
        if self.fail_submit is not None:
            raise self.fail_submit
        self.requests.append(request)
        ids = []
        for p in (list(request.params) or [None]):
            self.next_id += 1
            cmd = request.command if p is None else f"{request.command} {p}"
            self.jobs[self.next_id] = RemoteJob(id=self.next_id, outcome=Outcome.WAITING, raw_state="Waiting",
                                                command=cmd, owner=user,
                                                submission_time=int(time.time()),
                                                launching_directory=request.directory or "/home/u",
                                                stderr_file="OAR.%jobid%.stderr", types=list(request.types))
            ids.append(self.next_id)
        if self.accept_then_fail is not None:
            raise self.accept_then_fail
        return ids

    def get_job(self, remote_id: int, user: str | None = None) -> RemoteJob:
        if remote_id not in self.jobs:
            raise ClusterAPINotFound(f"job {remote_id}")
        return self.jobs[remote_id]

    def get_jobs(self, remote_ids: Sequence[int]) -> dict[int, RemoteJob]:
        if self.fail_get is not None:
            raise self.fail_get
        return {i: self.jobs[i] for i in remote_ids if i in self.jobs}

    def delete_job(self, remote_id: int, user: str) -> None:
        self.end(remote_id, None, [{"type": "FRAG_JOB_REQUEST"}])

    def get_file(self, path: str, user: str, tail: int = 0) -> str:
        if path not in self.files:
            raise ClusterAPINotFound(path)
        text = self.files[path]
        return "\n".join(text.splitlines()[-tail:]) if tail else text

    def delete_file(self, path: str, user: str) -> None:
        self.files.pop(path, None)

    def get_resources(self) -> list[dict[str, Any]]:
        return []

    def get_running_jobs(self) -> list[RemoteJob]:
        return [j for j in self.jobs.values() if j.outcome is Outcome.RUNNING]

    def get_stress_factor(self) -> float:
        return 0.0

    # -- test controls
    def run(self, rid: int) -> None:
        j = self.jobs[rid]
        j.outcome, j.raw_state, j.start_time = Outcome.RUNNING, "Running", int(time.time())

    def end(self, rid: int, exit_code: int | None = 0, events: list[dict[str, Any]] | None = None) -> None:
        j = self.jobs[rid]
        j.start_time = j.start_time or int(time.time())
        j.stop_time = int(time.time())
        j.raw_state = "Terminated" if exit_code is not None else "Error"
        # reported as the OAR adapter does, through its translation table
        j.outcome, j.exit, j.new_id = oar_outcome(j.raw_state, exit_code, events or [])
        j.reason, j.detail = _describe(events or [])

    def active(self) -> list[int]:
        return [i for i, j in self.jobs.items() if j.outcome.live]


# ------------------------------------------------------------------ helpers
def setc(conf: Any, values: dict[str, str]) -> None:
    for k, v in values.items():
        conf._set(k, v, "test")


def make_campaign(engine: Engine, cluster_ids: list[int], params: list[str], user: str = "alice",
                  props: dict[str, str] | None = None, options: dict[str, Any] | None = None,
                  queue_on: int | None = None, state: str = "in_treatment") -> int:
    """A campaign with its properties and bag; tasks queued on `queue_on` (as the scheduler would)."""
    p = {"exec_file": "$HOME/run.sh", "resources": "/core=1", "walltime": "00:10:00", "type": "best-effort",
         "exec_directory": "/home/alice"} | (props or {})
    with engine.begin() as c:
        cid = c.execute(schema.campaigns.insert().values(grid_user=user, state=state, type="normal", name="t",
                                                         nb_jobs=len(params), jdl="{}")
                        .returning(schema.campaigns.c.id)).scalar_one()
        for cl in cluster_ids:
            for k, v in p.items():
                c.execute(schema.campaign_properties.insert().values(campaign_id=cid, cluster_id=cl, name=k, value=v))
        for i, line in enumerate(params):
            pid = c.execute(schema.parameters.insert().values(campaign_id=cid, name=f"p{i}", param=line)
                            .returning(schema.parameters.c.id)).scalar_one()
            c.execute(schema.bag_of_tasks.insert().values(campaign_id=cid, param_id=pid, priority=10))
    if queue_on is not None:
        queue_all(engine, cid, queue_on, options)
    return int(cid)


def queue_all(engine: Engine, cid: int, cluster_id: int, options: dict[str, Any] | None = None) -> int:
    opts = json.dumps({"besteffort": True} | (options or {}))
    with engine.begin() as c:
        queued = sa.select(schema.jobs_to_launch.c.task_id)
        rows = c.execute(sa.select(schema.bag_of_tasks.c.id).where(
            schema.bag_of_tasks.c.campaign_id == cid, schema.bag_of_tasks.c.id.notin_(queued))
            .order_by(schema.bag_of_tasks.c.id)).all()
        for i, r in enumerate(rows):
            c.execute(schema.jobs_to_launch.insert().values(task_id=r.id, cluster_id=cluster_id,
                                                            runner_options=opts, order_num=i + 1))
    return len(rows)


def jobs_of(engine: Engine, cid: int) -> list[dict[str, Any]]:
    with engine.connect() as c:
        return [dict(r) for r in c.execute(sa.select(schema.jobs).where(schema.jobs.c.campaign_id == cid)
                                           .order_by(schema.jobs.c.id)).mappings()]


def events_of(engine: Engine, code: str | None = None) -> list[dict[str, Any]]:
    q = sa.select(schema.events).order_by(schema.events.c.id)
    if code:
        q = q.where(schema.events.c.code == code)
    with engine.connect() as c:
        return [dict(r) for r in c.execute(q).mappings()]


def bag_of(engine: Engine, cid: int) -> list[dict[str, Any]]:
    with engine.connect() as c:
        return [dict(r) for r in c.execute(sa.select(schema.bag_of_tasks).where(
            schema.bag_of_tasks.c.campaign_id == cid)).mappings()]


@pytest.fixture
def fake() -> FakeOAR:
    return FakeOAR()


@pytest.fixture
def cluster(pg_engine: Engine) -> int:
    return add_cluster(pg_engine, "c1")


@pytest.fixture
def runner(pg_engine: Engine, pg_conf: Any, cluster: int, fake: FakeOAR) -> Runner:
    setc(pg_conf, {"RUNNER_DEFAULT_INITIAL_NUMBER_OF_JOBS": "4", "RUNNER_MIN_CYCLE_DURATION": "0"})
    def factory(info: Any, conf: Any, mapping: Any) -> FakeOAR:
        fake.cluster = info
        return fake
    return Runner(pg_engine, "c1", pg_conf, adapter_factory=factory)


def finish_all(fake: FakeOAR, exit_code: int = 0) -> None:
    for rid in fake.active():
        fake.end(rid, exit_code)


# ------------------------------------------------------------------ tests
def test_campaign_runs_to_the_end_with_one_job_per_task(pg_engine: Engine, runner: Runner, fake: FakeOAR,
                                                         cluster: int) -> None:
    cid = make_campaign(pg_engine, [cluster], [f"{i} x" for i in range(10)], queue_on=cluster)
    for _ in range(30):
        runner.run_cycle()
        finish_all(fake)
        if all(j["state"] == "terminated" for j in jobs_of(pg_engine, cid)) and len(jobs_of(pg_engine, cid)) == 10:
            break
    jobs = jobs_of(pg_engine, cid)
    assert len(jobs) == 10 and {j["state"] for j in jobs} == {"terminated"}
    assert len({j["remote_id"] for j in jobs}) == 10
    # exact matching: every job got the OAR job running its own parameter line
    with pg_engine.connect() as c:
        params = dict(c.execute(sa.select(schema.parameters.c.id, schema.parameters.c.param)).all())
    for j in jobs:
        assert fake.jobs[j["remote_id"]].command.endswith(" " + params[j["param_id"]])
    assert all(j["start_time"] is not None and j["stop_time"] is not None for j in jobs)
    # arrays grew with the tap (4 → 6 → ...), the first array is the tap's initial rate
    assert len(fake.requests[0].params) == 4 and len(fake.requests[1].params) > 4
    assert "besteffort" in fake.requests[0].types


def test_waiting_jobs_close_the_tap_and_nothing_more_is_submitted(pg_engine: Engine, runner: Runner,
                                                                  fake: FakeOAR, cluster: int) -> None:
    cid = make_campaign(pg_engine, [cluster], [str(i) for i in range(20)], queue_on=cluster)
    runner.run_cycle()
    with pg_engine.begin() as c:  # waiting for long (on CiGri's clock): the cluster is full
        c.execute(schema.jobs.update().values(submission_time=schema.now() - timedelta(seconds=100)))
    runner.run_cycle()
    runner.run_cycle()
    assert len(jobs_of(pg_engine, cid)) == 4
    with pg_engine.connect() as c:
        assert c.execute(sa.select(schema.taps.c.state)).scalar() == "closed"
    for rid in fake.active():
        fake.run(rid)
    runner.run_cycle()
    assert len(jobs_of(pg_engine, cid)) > 4


def test_junk_from_a_cluster_never_blocks_the_poll_of_other_jobs(pg_engine: Engine, runner: Runner, fake: FakeOAR,
                                                                  cluster: int) -> None:
    """#11.1: a NUL byte in one job's stderr tail (PostgreSQL refuses NUL in text), an absurd
    time in another's answer: every job of the poll is still recorded."""
    cid = make_campaign(pg_engine, [cluster], ["a", "b", "c"], queue_on=cluster)
    runner.run_cycle()
    bad, weird, good = fake.active()
    fake.files[f"/home/alice/OAR.{bad}.stderr"] = "a\0b\n"
    fake.end(bad, 3 << 8)
    fake.end(weird, 0)
    fake.jobs[weird].start_time = 10 ** 15  # year ~31 million
    fake.end(good, 0)
    runner.run_cycle()
    states = {j["remote_id"]: j["state"] for j in jobs_of(pg_engine, cid)}
    assert states == {bad: "event", weird: "terminated", good: "terminated"}
    [ev] = events_of(pg_engine, "EXIT_ERROR")
    assert "a\ufffdb" in ev["message"] and "\0" not in ev["message"]


def test_exit_error_records_stderr_tail_and_colombo_blacklists_this_cluster_for_this_campaign(
        pg_engine: Engine, runner: Runner, fake: FakeOAR, cluster: int) -> None:
    other = add_cluster(pg_engine, "c2")
    cid = make_campaign(pg_engine, [cluster, other], ["a", "b"], queue_on=cluster)
    runner.run_cycle()
    rid = fake.active()[0]
    fake.files[f"/home/alice/OAR.{rid}.stderr"] = "line1\nline2\nboom: no such file\n"
    fake.end(rid, 256)
    runner.run_cycle()
    ev = events_of(pg_engine, "EXIT_ERROR")
    assert len(ev) == 1 and "exit status 256" in ev[0]["message"] and "boom: no such file" in ev[0]["message"]
    assert ev[0]["campaign_id"] == cid and ev[0]["cluster_id"] == cluster
    colombo.check_events(pg_engine)
    bl = events_of(pg_engine, "BLACKLIST")
    assert len(bl) == 1 and bl[0]["class"] == "campaign" and bl[0]["cluster_id"] == cluster
    assert bl[0]["parent"] == ev[0]["id"]
    from cigri.db.events import cluster_blacklisted
    with pg_engine.connect() as c:
        assert cluster_blacklisted(c, cluster, cid) and not cluster_blacklisted(c, other, cid)
        assert not cluster_blacklisted(c, cluster, cid + 1)
    # the other job keeps being followed (exit-error blacklists do not stop polling)
    fake.end(fake.active()[0], 0)
    runner.run_cycle()
    assert sorted(j["state"] for j in jobs_of(pg_engine, cid)) == ["event", "terminated"]
    # fixing the event lifts the blacklist
    from cigri.db.events import close_event
    with pg_engine.begin() as c:
        close_event(c, ev[0]["id"])
        colombo.check_blacklists(c)
        assert not cluster_blacklisted(c, cluster, cid)


def test_besteffort_kill_is_resubmitted_once_even_with_two_colombos(pg_engine: Engine, runner: Runner,
                                                                    fake: FakeOAR, cluster: int) -> None:
    import threading

    cid = make_campaign(pg_engine, [cluster], ["a"], queue_on=cluster)
    runner.run_cycle()
    fake.end(fake.active()[0], None, [{"type": "BESTEFFORT_KILL"}, {"type": "FRAG_JOB_REQUEST"}])
    runner.run_cycle()
    ev = events_of(pg_engine, "RESUBMIT")
    assert len(ev) == 1 and "BESTEFFORT_KILL" in ev[0]["message"]
    barrier = threading.Barrier(4)
    def worker() -> None:
        barrier.wait()
        colombo.check_events(pg_engine)
    ts = [threading.Thread(target=worker) for _ in range(4)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    bag = bag_of(pg_engine, cid)
    assert len(bag) == 1 and bag[0]["priority"] == 20
    ev = events_of(pg_engine, "RESUBMIT")[0]
    assert ev["state"] == "closed" and ev["checked"] == "yes"
    assert colombo.check_events(pg_engine) == 0 and len(bag_of(pg_engine, cid)) == 1
    with pg_engine.connect() as c:
        assert c.execute(sa.select(schema.tasks_affinity.c.priority)).scalar() == -1


def test_resubmission_cap_opens_too_many_resubmit(pg_engine: Engine, runner: Runner, fake: FakeOAR,
                                                  cluster: int) -> None:
    cid = make_campaign(pg_engine, [cluster], ["a"], queue_on=cluster, props={"max_resubmit": "2"})
    for _ in range(3):
        runner.run_cycle()
        fake.end(fake.active()[0], 66 << 8)
        runner.run_cycle()
        colombo.check_events(pg_engine)
        queue_all(pg_engine, cid, cluster)
    assert len(jobs_of(pg_engine, cid)) == 3
    assert bag_of(pg_engine, cid) == []
    tm = events_of(pg_engine, "TOO_MANY_RESUBMIT")
    assert len(tm) == 1 and tm[0]["state"] == "open" and tm[0]["campaign_id"] == cid
    assert "max_resubmit = 2" in tm[0]["message"]


def test_exit_67_resubmits_at_the_end_of_the_queue(pg_engine: Engine, runner: Runner, fake: FakeOAR,
                                                   cluster: int) -> None:
    cid = make_campaign(pg_engine, [cluster], ["a"], queue_on=cluster)
    runner.run_cycle()
    fake.end(fake.active()[0], 67 << 8)
    runner.run_cycle()
    colombo.check_events(pg_engine)
    assert [b["priority"] for b in bag_of(pg_engine, cid)] == [0]


def test_oar_automatic_resubmission_keeps_following_the_new_job(pg_engine: Engine, runner: Runner,
                                                                fake: FakeOAR, cluster: int) -> None:
    cid = make_campaign(pg_engine, [cluster], ["a"], queue_on=cluster)
    runner.run_cycle()
    rid = fake.active()[0]
    fake.end(rid, None, [{"type": "RESUBMIT_JOB_AUTOMATICALLY", "description": "resubmitted (new id = 5555)"}])
    fake.jobs[5555] = RemoteJob(id=5555, outcome=Outcome.RUNNING, raw_state="Running", command="x",
                                start_time=int(time.time()))
    runner.run_cycle()
    job = jobs_of(pg_engine, cid)[0]
    assert job["remote_id"] == 5555 and job["state"] == "remote_waiting"
    fake.end(5555, 0)
    runner.run_cycle()
    assert jobs_of(pg_engine, cid)[0]["state"] == "terminated"
    assert events_of(pg_engine, "OAR_AUTO_RESUBMIT")[0]["state"] == "closed"


def test_crash_between_take_and_submit_submits_the_taken_jobs(pg_engine: Engine, runner: Runner,
                                                               fake: FakeOAR, cluster: int) -> None:
    cid = make_campaign(pg_engine, [cluster], ["a", "b"], queue_on=cluster)
    runner.load()
    from cigri.db import queue as dbqueue
    with pg_engine.begin() as c:
        dbqueue.take_tasks(c, cluster, [q.queue_id for q in dbqueue.queued_tasks(c, cluster)])
    # (the runner died here) a new runner submits them
    runner.run_cycle()
    assert [j["state"] for j in jobs_of(pg_engine, cid)] == ["submitted", "submitted"]
    assert len(fake.jobs) == 2


def test_crash_after_post_adopts_the_job_oar_accepted(pg_engine: Engine, runner: Runner, fake: FakeOAR,
                                                       cluster: int) -> None:
    cid = make_campaign(pg_engine, [cluster], ["1", "10", "100"], queue_on=cluster)
    fake.accept_then_fail = ClusterAPITimeoutPOST("POST timed out")  # OAR got it, we never saw the answer
    runner.run_cycle()
    assert [j["state"] for j in jobs_of(pg_engine, cid)] == ["launching"] * 3
    fake.accept_then_fail = None
    runner.run_cycle()
    jobs = jobs_of(pg_engine, cid)
    assert {j["state"] for j in jobs} <= {"submitted", "remote_waiting"}
    assert len(fake.jobs) == 3  # nothing submitted twice
    assert [fake.jobs[j["remote_id"]].command.split()[-1] for j in jobs] == ["1", "10", "100"]
    assert events_of(pg_engine, "STUCK_LAUNCHING_JOB") == []


def test_crash_before_post_resubmits_stuck_launching_jobs(pg_engine: Engine, runner: Runner, fake: FakeOAR,
                                                          cluster: int) -> None:
    cid = make_campaign(pg_engine, [cluster], ["a"], queue_on=cluster)
    fake.fail_submit = SystemExit  # type: ignore[assignment]  # the process dies inside the POST
    with pytest.raises(SystemExit):
        runner.run_cycle()
    fake.fail_submit = None
    runner.run_cycle()
    ev = events_of(pg_engine, "STUCK_LAUNCHING_JOB")
    assert len(ev) == 1 and jobs_of(pg_engine, cid)[0]["state"] == "event"
    colombo.check_events(pg_engine)
    assert len(bag_of(pg_engine, cid)) == 1 and events_of(pg_engine, "STUCK_LAUNCHING_JOB")[0]["state"] == "closed"


def test_connection_error_at_submission_is_recorded_and_the_cluster_blacklisted_then_autofixed(
        pg_engine: Engine, runner: Runner, fake: FakeOAR, cluster: int, pg_conf: Any,
        monkeypatch: pytest.MonkeyPatch) -> None:
    cid = make_campaign(pg_engine, [cluster], ["a"], queue_on=cluster)
    fake.fail_submit = ClusterAPIConnectionError("refused", code="CONNECTION_REFUSED")
    runner.run_cycle()
    assert events_of(pg_engine, "CONNECTION_REFUSED")[0]["class"] == "cluster"
    assert "connection error" in events_of(pg_engine, "RESUBMIT")[0]["message"]
    colombo.check_events(pg_engine)
    assert len(bag_of(pg_engine, cid)) == 1
    bl = events_of(pg_engine, "BLACKLIST")
    assert len(bl) == 1 and bl[0]["class"] == "cluster"
    fake.fail_submit = None
    n_before = len(fake.requests)
    queue_all(pg_engine, cid, cluster)
    runner.run_cycle()
    assert len(fake.requests) == n_before  # blacklisted: nothing submitted
    # autofix: API probed after AUTOFIX_DELAY, event closed, blacklist lifted
    setc(pg_conf, {"AUTOFIX_DELAY": "0"})
    import cigri.clusters
    monkeypatch.setattr(cigri.clusters, "get_adapter", lambda info, conf=None, mapping=None: fake)
    fake.api_up = False
    assert colombo.autofix_clusters(pg_engine, pg_conf) == 0
    fake.api_up = True
    assert colombo.autofix_clusters(pg_engine, pg_conf) == 1
    with pg_engine.begin() as c:
        assert colombo.check_blacklists(c) == 1
    runner.run_cycle()
    assert len(fake.requests) == n_before + 1


def test_polling_error_records_cluster_event(pg_engine: Engine, runner: Runner, fake: FakeOAR,
                                             cluster: int) -> None:
    make_campaign(pg_engine, [cluster], ["a"], queue_on=cluster)
    runner.run_cycle()
    fake.fail_get = ClusterAPIConnectionError("reset", code="CONNECTION_RESET")
    runner.run_cycle()
    assert [e["code"] for e in events_of(pg_engine) if e["class"] == "cluster"] == ["CONNECTION_RESET"]
    colombo.check_events(pg_engine)
    assert events_of(pg_engine, "BLACKLIST")[0]["class"] == "cluster"


def test_lost_remote_id_is_an_event(pg_engine: Engine, runner: Runner, fake: FakeOAR, cluster: int) -> None:
    cid = make_campaign(pg_engine, [cluster], ["a"], queue_on=cluster)
    runner.run_cycle()
    with pg_engine.begin() as c:
        c.execute(schema.jobs.update().values(remote_id=None))
    runner.run_cycle()
    assert jobs_of(pg_engine, cid)[0]["state"] == "event"
    assert len(events_of(pg_engine, "RUNNER_GET_REMOTE_ID_ERROR")) == 1


def test_prologue_is_submitted_alone_as_a_normal_job(pg_engine: Engine, runner: Runner, fake: FakeOAR,
                                                     cluster: int) -> None:
    cid = make_campaign(pg_engine, [cluster], ["a"], props={"prologue": "echo hi > /tmp/p\necho 'q' \"$X\""})
    with pg_engine.begin() as c:
        c.execute(schema.jobs.insert().values(campaign_id=cid, param_id=0, cluster_id=cluster, state="to_launch",
                                              tag="prologue", runner_options='{"besteffort":"false"}'))
    runner.run_cycle()
    req = fake.requests[0]
    assert list(req.params) == [] and "besteffort" not in req.types and req.resources == "resource_id=1"
    assert "$" not in req.command.split(";", 1)[1] and '"' not in req.command
    import base64
    script = base64.b64decode(req.command.split("echo ")[1].split("|")[0]).decode()
    assert "echo hi > /tmp/p\necho 'q' \"$X\"" in script
    fake.end(fake.active()[0], 256)
    runner.run_cycle()
    assert events_of(pg_engine, "PROLOG_EXIT_ERROR")


def test_temporal_grouping_batch_and_unfinished_subjobs_resubmitted(pg_engine: Engine, runner: Runner,
                                                                    fake: FakeOAR, cluster: int) -> None:
    cid = make_campaign(pg_engine, [cluster], ["a 1", "b 2", "c 3"], queue_on=cluster,
                        props={"temporal_grouping": "true"}, options={"temporal_grouping": True})
    runner.run_cycle()
    assert len(fake.jobs) == 1
    jobs = jobs_of(pg_engine, cid)
    assert {j["tag"] for j in jobs} == {"batch"} and len({j["remote_id"] for j in jobs}) == 1
    assert len({j["batch_id"] for j in jobs}) == 1 and jobs[0]["batch_id"] is not None
    rid = jobs[0]["remote_id"]
    fake.run(rid)
    j1, j2, j3 = (j["id"] for j in jobs)
    d = "/home/alice"
    fake.files[f"{d}/cigri_batch_state_{j1}"] = "BEGIN_DATE=100\nRET=0\nEND_DATE=110\n"
    fake.files[f"{d}/cigri_batch_state_{j2}"] = "BEGIN_DATE=110\n"
    runner.run_cycle()
    states = {j["id"]: j["state"] for j in jobs_of(pg_engine, cid)}
    assert states == {j1: "terminated", j2: "running", j3: "batch_waiting"}
    fake.end(rid, None, [{"type": "BESTEFFORT_KILL"}])
    runner.run_cycle()
    states = {j["id"]: j["state"] for j in jobs_of(pg_engine, cid)}
    assert states == {j1: "terminated", j2: "event", j3: "event"}
    colombo.check_events(pg_engine)
    assert len(bag_of(pg_engine, cid)) == 2


def test_batch_script_quotes_exactly() -> None:
    from cigri.db.runner import RunnerJob
    j = RunnerJob(7, 1, 1, "to_launch", None, "batch", RunOptions(), "x \\$HOME 'a b'", "u", "in_treatment")
    s = batch_script("$HOME/run.sh", [j])
    assert "$HOME/run.sh x $HOME 'a b' > cigri_batch_stdout_7 2> cigri_batch_stderr_7" in s
    assert 'echo "RET=$?" >> cigri_batch_state_7' in s


def test_semi_best_effort_task_killed_as_best_effort_runs_as_normal_job(pg_engine: Engine, runner: Runner,
                                                                        fake: FakeOAR, cluster: int) -> None:
    cid = make_campaign(pg_engine, [cluster], ["a"], queue_on=cluster, options={"campaign_type": "semi-best-effort"})
    runner.run_cycle()
    assert "besteffort" in fake.requests[-1].types
    fake.end(fake.active()[0], None, [{"type": "BESTEFFORT_KILL"}])
    runner.run_cycle()
    colombo.check_events(pg_engine)
    queue_all(pg_engine, cid, cluster, {"campaign_type": "semi-best-effort"})
    runner.run_cycle()
    assert len(fake.requests) == 2 and "besteffort" not in fake.requests[-1].types


def test_nightly_campaign_only_submitted_in_the_window(pg_engine: Engine, runner: Runner, fake: FakeOAR,
                                                       cluster: int, pg_conf: Any) -> None:
    from datetime import datetime
    make_campaign(pg_engine, [cluster], ["a"], queue_on=cluster, options={"campaign_type": "nightly"})
    h = datetime.now().hour
    setc(pg_conf, {"NIGHTLY_START": f"{(h + 2) % 24:02d}:00", "NIGHTLY_END": f"{(h + 3) % 24:02d}:00"})
    assert not in_nightly_window(pg_conf)
    runner.run_cycle()
    assert fake.requests == []
    setc(pg_conf, {"NIGHTLY_START": f"{(h + 23) % 24:02d}:00", "NIGHTLY_END": f"{(h + 1) % 24:02d}:00"})
    runner.run_cycle()
    assert len(fake.requests) == 1


def test_paused_campaign_tasks_are_not_taken_and_cancelled_to_launch_not_submitted(
        pg_engine: Engine, runner: Runner, fake: FakeOAR, cluster: int) -> None:
    make_campaign(pg_engine, [cluster], ["a"], queue_on=cluster, state="paused")
    runner.run_cycle()
    assert fake.requests == []


def test_disabled_cluster_stops_the_runner(pg_engine: Engine, runner: Runner, cluster: int) -> None:
    runner.run_cycle()
    with pg_engine.begin() as c:
        c.execute(schema.clusters.update().values(enabled=False))
    with pytest.raises(ClusterGone):
        runner.run_cycle()


def test_runner_module_exits_cleanly_for_unknown_cluster(pg_engine: Engine, pg_conf: Any, tmp_path: Any) -> None:
    from cigri.modules import runner as mod
    conf_file = tmp_path / "cigri.conf"
    conf_file.write_text("".join(f'{k}="{v}"\n' for k, v in pg_conf._raw.items()))
    assert mod.main(["nosuchcluster", "--conf", str(conf_file)]) == 0


def test_runner_and_colombo_work_on_sqlite(sqlite_engine: Engine, sqlite_conf: Any, fake: FakeOAR) -> None:
    """Local mode: the same runner and colombo on SQLite (single writer)."""
    cl = add_cluster(sqlite_engine, "c1")
    setc(sqlite_conf, {"RUNNER_DEFAULT_INITIAL_NUMBER_OF_JOBS": "4"})
    r = Runner(sqlite_engine, "c1", sqlite_conf, adapter_factory=lambda i, c, m: fake)
    cid = make_campaign(sqlite_engine, [cl], ["a", "b", "c"], queue_on=cl)
    r.run_cycle()
    fake.end(fake.active()[0], None, [{"type": "BESTEFFORT_KILL"}])
    for rid in fake.active():
        fake.end(rid, 0)
    r.run_cycle()
    assert colombo.check_events(sqlite_engine) == 1
    assert sorted(j["state"] for j in jobs_of(sqlite_engine, cid)) == ["event", "terminated", "terminated"]
    assert len(bag_of(sqlite_engine, cid)) == 1


def test_jobs_waiting_for_the_scheduler_bound_what_is_submitted(pg_engine: Engine, runner: Runner,
                                                                 fake: FakeOAR, cluster: int) -> None:
    """Freshly submitted jobs (within RUNNER_WAITING_GRACE) don't close the tap, but the runner
    does not pile up more than about two full arrays waiting for the cluster's scheduler."""
    cid = make_campaign(pg_engine, [cluster], [str(i) for i in range(400)], queue_on=cluster)
    counts = []
    for _ in range(14):
        runner.run_cycle()
        counts.append(len(jobs_of(pg_engine, cid)))
    assert counts[1] > counts[0]  # pipelined: a second array before the first started
    assert counts[-1] == counts[-3] <= 3 * 100  # then it waits (RUNNER_TAP_INCREASE_MAX = 100)
    for rid in fake.active():
        fake.run(rid)
    runner.run_cycle()
    runner.run_cycle()
    assert len(jobs_of(pg_engine, cid)) > counts[-1]


def test_adoption_when_the_api_shell_expanded_the_exec_file(pg_engine: Engine, runner: Runner, fake: FakeOAR,
                                                            cluster: int) -> None:
    cid = make_campaign(pg_engine, [cluster], ["a 1", "1", "b"], queue_on=cluster)
    fake.accept_then_fail = ClusterAPITimeoutPOST("POST timed out")
    runner.run_cycle()
    for j in fake.jobs.values():  # what OAR shows once the API's shell expanded $HOME
        j.command = (j.command or "").replace("$HOME", "/home/alice")
    fake.accept_then_fail = None
    runner.run_cycle()
    jobs = jobs_of(pg_engine, cid)
    assert {j["state"] for j in jobs} <= {"submitted", "remote_waiting"} and len(fake.jobs) == 3
    with pg_engine.connect() as c:
        params = dict(c.execute(sa.select(schema.parameters.c.id, schema.parameters.c.param)).all())
    for j in jobs:
        assert fake.jobs[j["remote_id"]].command.endswith(f"/home/alice/run.sh {params[j['param_id']]}")


def test_a_blacklist_never_stops_following_the_jobs_already_on_the_cluster(pg_engine: Engine, runner: Runner,
                                                                          fake: FakeOAR, cluster: int) -> None:
    """#11.3: after an UNKNOWN_ERROR blacklists the campaign here, and after the whole cluster
    is blacklisted, the jobs already there are still followed to their end (nothing new is sent)."""
    cid = make_campaign(pg_engine, [cluster], ["a", "b", "c"], queue_on=cluster)
    runner.run_cycle()
    first, second, third = fake.active()
    fake.end(first, None, [{"type": "SWITCH_INTO_ERROR_STATE"}])
    runner.run_cycle()
    colombo.check_events(pg_engine)
    assert [e["class"] for e in events_of(pg_engine, "BLACKLIST")] == ["campaign"]
    fake.end(second, 0)
    runner.run_cycle()
    assert {j["remote_id"]: j["state"] for j in jobs_of(pg_engine, cid)}[second] == "terminated"
    with pg_engine.begin() as c:
        create_event(c, "cluster", "CLUSTER_MANUALLY_DISABLED", cluster_id=cluster)
    colombo.check_events(pg_engine)
    n = len(fake.requests)
    fake.end(third, 0)
    runner.run_cycle()
    assert {j["remote_id"]: j["state"] for j in jobs_of(pg_engine, cid)} == {
        first: "event", second: "terminated", third: "terminated"}
    assert len(fake.requests) == n


def test_waiting_grace_is_measured_on_cigris_clock(pg_engine: Engine, runner: Runner, fake: FakeOAR,
                                                   cluster: int) -> None:
    """#11.5: OAR3's submission_time can be minutes stale: a job CiGri has just submitted is
    not 'waiting too long' whatever the cluster's clock says, so the tap stays open."""
    make_campaign(pg_engine, [cluster], [str(i) for i in range(20)], queue_on=cluster)
    runner.run_cycle()
    for j in fake.jobs.values():
        j.submission_time = int(time.time()) - 486
    runner.run_cycle()
    with pg_engine.connect() as c:
        assert c.execute(sa.select(schema.taps.c.state)).scalar() == "open"
