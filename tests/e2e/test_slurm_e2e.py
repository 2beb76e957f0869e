"""The whole engine on the OAR testbed and the Slurm testbed at once: one campaign spread
over OAR clusters and a Slurm cluster, a best-effort Slurm task preempted by a normal job
(REQUEUE mode: Slurm's own copy is cancelled, CiGri resubmits once), an EXIT_ERROR on Slurm
with its stderr tail that blacklists the campaign there only, and a cancellation that
kills the Slurm jobs. Every parameter ends with exactly one terminated job."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
import sqlalchemy as sa

from cigri.campaigns import cancel_campaign, submit_campaign
from cigri.clusters import get_adapter
from cigri.clusters.base import Outcome
from cigri.clusters.slurm import instance_tag, key_of, parse_array_spec, remote_id
from cigri.db import schema
from cigri.db.admission_rules import DISABLED_MARK
from cigri.db.clusters import get_cluster
from cigri.db.events import close_event, cluster_blacklisted
from tests import slurm_testbed as stb
from tests.e2e.conftest import WORK, Grid, script, wait_for

pytestmark = [pytest.mark.oar, pytest.mark.slurm, pytest.mark.slow]

SL = "slr"  # the Slurm testbed as a CiGri cluster: best-effort in the REQUEUE partition


@pytest.fixture(scope="module")
def sl(grid: Grid) -> Iterator[int]:
    """Register the Slurm testbed in the running grid (almighty starts its runner)."""
    row = stb.cluster_row(SL, besteffort_partition="besteffort", besteffort_mode="requeue",
                          normal_partition="normal")
    with grid.engine.begin() as c:
        cid = int(c.execute(schema.clusters.insert().values(**row).returning(schema.clusters.c.id)).scalar_one())
    grid.clusters[SL] = cid
    try:
        yield cid
    finally:
        with grid.engine.begin() as c:
            c.execute(schema.clusters.update().where(schema.clusters.c.id == cid).values(enabled=False))
        stb.cancel_all("cigri.")


def jdl(name: str, exec_file: str, params: list[str], clusters: dict[str, dict[str, Any]]) -> dict[str, Any]:
    base = {"type": "best-effort", "walltime": "00:10:00", "exec_directory": str(WORK), "resources": "/core=1"}
    return {"name": name, "exec_file": exec_file, "params": params,
            "clusters": {c: base | extra for c, extra in clusters.items()}}


def finished(grid: Grid, cid: int) -> bool:
    return grid.campaign_state(cid) == "terminated"


def on(grid: Grid, cid: int, cluster: str, state: str | None = None) -> list[dict[str, Any]]:
    return [j for j in grid.jobs(cid) if j["cluster_id"] == grid.clusters[cluster] and j["param_id"] != 0
            and (state is None or j["state"] == state)]


def adapter(grid: Grid, cluster_id: int) -> Any:
    with grid.engine.connect() as c:
        return get_adapter(get_cluster(c, cluster_id=cluster_id), grid.conf, {})


def test_campaign_across_oar_and_slurm_with_a_preempted_slurm_task(grid: Grid, sl: int) -> None:
    # long on Slurm (there to be preempted), short on OAR; each start is logged per parameter
    body = ('echo start >> "runs_$1"\n'
            'if [ -n "$SLURM_JOB_ID" ]; then sleep 25; where=slurm; else sleep 1; where=oar; fi\n'
            'echo "$1 $where" > "mix_$1"\n')
    exe = script("mix.sh", body)
    n = 30
    params = [f"m{i}" for i in range(n)]
    cid = submit_campaign(grid.engine, jdl("mixed", exe, params, {"c1": {}, "c2": {}, SL: {}}), "alice", grid.conf)
    wait_for("best-effort tasks running on Slurm", lambda: len(on(grid, cid, SL, "running")) >= 2, timeout=240)
    normal = stb.submit("bob", "#!/bin/bash\nsleep 5\n", name="e2e-normal", partition="normal", tasks=8,
                        standard_output="/dev/null")
    try:
        kills = wait_for("a BESTEFFORT_KILL resubmission on Slurm", lambda: [
            e for e in grid.events(cid, "RESUBMIT") if "BESTEFFORT_KILL" in (e["message"] or "")
            and e["cluster_id"] == sl], timeout=240, diag=lambda: (on(grid, cid, SL), grid.events(cid)))
    finally:
        stb.cancel(normal, "bob")
    wait_for("campaign terminated", lambda: finished(grid, cid), timeout=600,
             diag=lambda: ([(j["param_id"], j["cluster_id"], j["state"]) for j in grid.jobs(cid)
                            if j["state"] != "terminated"], grid.events(cid)))
    grid.assert_true_story(cid, n)
    jobs = [j for j in grid.jobs(cid) if j["param_id"] != 0]
    assert {j["cluster_id"] for j in jobs if j["state"] == "terminated"} >= {sl}
    assert any(j["cluster_id"] != sl and j["state"] == "terminated" for j in jobs)
    for p in params:
        assert (WORK / f"mix_{p}").read_text().split()[0] == p
    # one resubmission per preemption, and Slurm never ran a requeued copy next to it
    preempted = [j for j in jobs if j["cluster_id"] == sl and j["state"] == "event"]
    assert preempted and len(kills) == len(preempted)
    by_param: dict[int, int] = {}
    for j in jobs:
        by_param[j["param_id"]] = by_param.get(j["param_id"], 0) + 1
    with grid.engine.connect() as c:
        names = dict(c.execute(sa.select(schema.parameters.c.id, schema.parameters.c.name)
                               .where(schema.parameters.c.campaign_id == cid)).all())
    for pid, attempts in by_param.items():
        starts = (WORK / f"runs_{names[pid]}").read_text().count("start")
        assert 1 <= starts <= attempts, (names[pid], starts, attempts)
    remote = adapter(grid, sl).get_jobs([j["remote_id"] for j in preempted])
    assert all(r.outcome is Outcome.PREEMPTED and r.requeues == 1 and r.raw_state == "CANCELLED"
               for r in remote.values()), remote


def test_exit_error_on_slurm_carries_stderr_and_blacklists_that_cluster_only(grid: Grid, sl: int) -> None:
    bad = script("bad_on_slurm.sh", 'if [ "$1" = fail ] && [ -n "$SLURM_JOB_ID" ]; then\n'
                                    '  echo "E2E-SLURM-FAIL $1 line1" >&2; echo "E2E-SLURM-FAIL line2" >&2; exit 3\n'
                                    'fi\nsleep 1\n')
    ok = script("ok_slurm.sh", "echo ok\n")
    a = submit_campaign(grid.engine, jdl("failing-on-slurm", bad, ["fail"], {SL: {}}), "alice", grid.conf)
    b = submit_campaign(grid.engine, jdl("other-on-slurm", ok, ["x1", "x2"], {SL: {}}), "alice", grid.conf)
    ev = wait_for("EXIT_ERROR", lambda: grid.events(a, "EXIT_ERROR"), timeout=240)[0]
    assert ev["cluster_id"] == sl and "768" in ev["message"]
    assert "E2E-SLURM-FAIL fail line1\nE2E-SLURM-FAIL line2" in ev["message"], ev["message"]
    bl = wait_for("campaign blacklist", lambda: [e for e in grid.events(a, "BLACKLIST") if e["state"] == "open"])
    assert bl[0]["class"] == "campaign" and bl[0]["cluster_id"] == sl and bl[0]["parent"] == ev["id"]
    with grid.engine.connect() as c:
        assert not cluster_blacklisted(c, sl) and not cluster_blacklisted(c, sl, b)
        assert not any(cluster_blacklisted(c, grid.clusters[o], a) for o in ("c1", "c2", "c3"))
    wait_for("other campaign terminated", lambda: finished(grid, b), timeout=240)
    grid.assert_true_story(b, 2)
    # the same campaign goes on elsewhere: a second task of it on an OAR cluster is not blocked
    assert grid.campaign_state(a) == "in_treatment"
    with grid.engine.begin() as c:
        close_event(c, ev["id"])
    wait_for("blacklist lifted", lambda: all(e["state"] == "closed" for e in grid.events(a, "BLACKLIST")))
    wait_for("failing campaign terminated", lambda: finished(grid, a), timeout=120)


def test_cancel_kills_the_slurm_jobs(grid: Grid, sl: int) -> None:
    long = script("long_slurm.sh", "sleep 300\n")
    cid = submit_campaign(grid.engine, jdl("cancelled-slurm", long, ["l1", "l2", "l3", "l4"], {SL: {}}), "alice",
                          grid.conf)
    wait_for("jobs running on Slurm", lambda: len(on(grid, cid, SL, "running")) >= 2, timeout=240)
    cancel_campaign(grid.engine, cid, "alice")
    rids = wait_for("remote ids", lambda: [j["remote_id"] for j in grid.jobs(cid) if j["remote_id"]])
    ad = adapter(grid, sl)
    wait_for("Slurm jobs killed", lambda: all(r.outcome.ended for r in ad.get_jobs(rids).values()), timeout=120,
             diag=lambda: ad.get_jobs(rids))
    assert all(r.outcome in (Outcome.KILLED, Outcome.LOST) for r in ad.get_jobs(rids).values())
    assert not [j for j in stb.active_jobs() if j["name"] == f"cigri.{cid}"]
    assert grid.campaign_state(cid) == "cancelled"


def test_kill9_of_the_slurm_runner_mid_submission_loses_and_duplicates_nothing(grid: Grid, sl: int) -> None:
    """The runner tags each array with its CiGri job ids: after a kill -9 between a POST and its
    recording, the restarted runner adopts the array instead of submitting it again."""
    quick = script("quick_slurm.sh", "sleep 1\n")
    n = 60
    cid = submit_campaign(grid.engine, jdl("kill9-slurm", quick, [f"q{i}" for i in range(n)], {SL: {}}), "alice",
                          grid.conf)
    for _ in range(3):
        wait_for("some jobs submitted", lambda: any(j["state"] in ("launching", "submitted", "running")
                                                    for j in grid.jobs(cid)))
        grid.kill9_runner(SL)
        time.sleep(1.5)
        wait_for("runner restarted", lambda: grid.runner_pid(SL), timeout=60)
    wait_for("campaign terminated", lambda: finished(grid, cid), timeout=600)
    grid.assert_true_story(cid, n)
    jobs = grid.jobs(cid)
    known = {j["remote_id"] for j in jobs if j["remote_id"]}
    mine = {j["id"] for j in jobs}
    # Slurm ran exactly the tasks CiGri knows of: every array task tagged with this campaign's job ids
    ran = set()
    for r in stb.jobs():
        tagged = key_of(str(r.get("comment") or ""), instance_tag(grid.conf))
        if not tagged or not set(tagged) <= mine:
            continue  # another campaign's, or another CiGri database's
        if r.get("array_task_id") is not None:
            ran.add(remote_id(r["array_job_id"], r["array_task_id"]))
        else:  # the array's record of tasks that never started
            ran |= {remote_id(r["job_id"], i) for i in parse_array_spec(str(r.get("array_task_string") or ""))}
    assert ran == known


def test_normal_and_grouped_campaigns_on_slurm(grid: Grid, sl: int) -> None:
    """`type: normal` tasks go to the cluster's normal partition; temporal grouping, which reads
    files slurmrestd does not serve, is submitted as plain arrays there."""
    echo = script("echo_slurm.sh", 'printf "%s|" "$@" > "sg_$1"\n')
    params = ["g1 'two words' \\$HOME", "g2 x"]
    rules = schema.admission_rules
    with grid.engine.begin() as c:  # the site lets alice run normal jobs (CiGri3's rule 1 refuses them)
        seed = c.execute(sa.select(rules.c.code).where(rules.c.id == 1)).scalar()
        c.execute(rules.update().where(rules.c.id == 1).values(code=f"{DISABLED_MARK}\n{seed}"))
    try:
        cid = submit_campaign(grid.engine, jdl("normal-grouped", echo, params,
                                               {SL: {"type": "normal", "temporal_grouping": True}}), "alice",
                              grid.conf)
    finally:
        with grid.engine.begin() as c:
            c.execute(rules.update().where(rules.c.id == 1).values(code=seed))
    wait_for("campaign terminated", lambda: finished(grid, cid), timeout=240,
             diag=lambda: (grid.jobs(cid), grid.events(cid)))
    grid.assert_true_story(cid, 2)
    jobs = [j for j in grid.jobs(cid) if j["param_id"] != 0]
    assert {j["tag"] for j in jobs} == {None}
    remote = adapter(grid, sl).get_jobs([j["remote_id"] for j in jobs])
    assert {r.queue for r in remote.values()} == {"normal"}
    assert (WORK / "sg_g1").read_text() == "g1|two words|/home/alice|"
