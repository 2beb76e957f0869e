"""The whole engine on the real OAR testbed: campaigns end with the true story in the DB."""

from __future__ import annotations

import time
from typing import Any

import pytest

from cigri.campaigns import cancel_campaign, submit_campaign
from cigri.db.events import close_event, cluster_blacklisted
from tests.e2e.conftest import WORK, Grid, script, wait_for

pytestmark = [pytest.mark.oar, pytest.mark.slow]


def jdl(name: str, exec_file: str, params: list[str], clusters: dict[str, dict[str, Any]]) -> dict[str, Any]:
    base = {"type": "best-effort", "walltime": "00:10:00", "exec_directory": str(WORK), "resources": "/core=1"}
    return {"name": name, "exec_file": exec_file, "params": params,
            "clusters": {c: base | extra for c, extra in clusters.items()}}


def finished(grid: Grid, cid: int) -> bool:
    return grid.campaign_state(cid) == "terminated"


def test_campaign_on_three_clusters_with_prologue_and_epilogue(grid: Grid) -> None:
    ok = script("ok.sh", 'echo "task $1" > "out_$1"\n')
    pro = {"prologue": [f"echo pro >> {WORK}/prologue.log"], "epilogue": [f"echo epi >> {WORK}/epilogue.log"]}
    n = 15
    cid = submit_campaign(grid.engine, jdl("three", ok, [f"p{i}" for i in range(n)],
                                           {c: pro for c in ("c1", "c2", "c3")}), "alice", grid.conf)
    wait_for("campaign terminated", lambda: finished(grid, cid), timeout=240)
    jobs = grid.jobs(cid)
    tasks = [j for j in jobs if j["param_id"] != 0]
    assert sum(1 for j in tasks if j["state"] == "terminated") == n
    grid.assert_true_story(cid, n)
    assert {j["cluster_id"] for j in tasks} <= set(grid.clusters.values())
    for tag in ("prologue", "epilogue"):
        per_cluster = [j["cluster_id"] for j in jobs if j["tag"] == tag and j["state"] == "terminated"]
        assert sorted(per_cluster) == sorted(set(per_cluster)) and len(per_cluster) == 3, tag
    assert (WORK / "prologue.log").read_text().count("pro") == 3
    assert (WORK / "epilogue.log").read_text().count("epi") == 3
    assert all((WORK / f"out_p{i}").read_text().strip() == f"task p{i}" for i in range(n))


def test_failing_task_blacklists_that_cluster_for_that_campaign_only_and_fix_lifts_it(grid: Grid) -> None:
    bad = script("bad.sh", 'if [ "$1" = fail ]; then echo "E2E-FAIL-MARK $1" >&2; exit 3; fi\necho ok\n')
    ok = script("ok2.sh", "echo ok\n")
    a = submit_campaign(grid.engine, jdl("failing", bad, ["fail", "fine"], {"c2": {}}), "alice", grid.conf)
    b = submit_campaign(grid.engine, jdl("other", ok, ["x1", "x2"], {"c2": {}}), "alice", grid.conf)
    ev = wait_for("EXIT_ERROR", lambda: grid.events(a, "EXIT_ERROR"), timeout=180)[0]
    assert "768" in ev["message"] and "E2E-FAIL-MARK fail" in ev["message"]
    c2 = grid.clusters["c2"]
    bl = wait_for("campaign blacklist", lambda: [e for e in grid.events(a, "BLACKLIST") if e["state"] == "open"])
    assert bl[0]["class"] == "campaign" and bl[0]["cluster_id"] == c2 and bl[0]["parent"] == ev["id"]
    with grid.engine.connect() as c:
        assert not cluster_blacklisted(c, c2) and not cluster_blacklisted(c, c2, b)
    wait_for("other campaign terminated", lambda: finished(grid, b), timeout=180)
    assert grid.campaign_state(a) == "in_treatment"  # the open failure keeps it alive
    with grid.engine.begin() as c:  # the user fixes the event (gridevents -f)
        close_event(c, ev["id"])
    wait_for("blacklist lifted", lambda: all(e["state"] == "closed" for e in grid.events(a, "BLACKLIST")))
    wait_for("failing campaign terminated", lambda: finished(grid, a), timeout=120)


def test_best_effort_jobs_killed_by_normal_jobs_are_resubmitted(grid: Grid) -> None:
    from tests import oar_testbed as tb

    slow = script("slow.sh", "sleep 15\necho done\n")
    n = 8
    cid = submit_campaign(grid.engine, jdl("killed", slow, [f"k{i}" for i in range(n)], {"c3": {}}),
                          "alice", grid.conf)
    wait_for("best-effort jobs running", lambda: sum(j["state"] == "running" for j in grid.jobs(cid)) >= 2)
    tb.oar_cli("c3", "oarsub", "-l", "/core=8,walltime=00:05:00", "sleep 3", user="bob", check=True)
    wait_for("a RESUBMIT event", lambda: [e for e in grid.events(cid, "RESUBMIT")
                                          if "BESTEFFORT_KILL" in (e["message"] or "")], timeout=180,
             diag=lambda: ([(j["state"], j["remote_id"]) for j in grid.jobs(cid)], grid.events(cid),
                           tb.oar_cli("c3", "oarstat").stdout))
    wait_for("campaign terminated", lambda: finished(grid, cid), timeout=240)
    grid.assert_true_story(cid, n)
    assert all(e["state"] == "closed" for e in grid.events(cid, "RESUBMIT"))


def test_cancel_kills_the_jobs_on_oar(grid: Grid) -> None:
    from cigri.clusters import get_adapter
    from cigri.db.clusters import get_cluster

    long = script("long.sh", "sleep 300\n")
    cid = submit_campaign(grid.engine, jdl("cancelled", long, ["l1", "l2", "l3"], {"c1": {}}), "alice", grid.conf)
    wait_for("jobs running", lambda: sum(j["state"] == "running" for j in grid.jobs(cid)) >= 2)
    cancel_campaign(grid.engine, cid, "alice")
    with grid.engine.connect() as c:
        adapter = get_adapter(get_cluster(c, cluster_id=grid.clusters["c1"]), grid.conf, {})
    rids = [j["remote_id"] for j in grid.jobs(cid) if j["remote_id"]]

    def all_dead() -> bool:
        got = adapter.get_jobs(rids)
        return all(r.outcome.ended for r in got.values())
    wait_for("OAR jobs killed", all_dead, timeout=120)
    assert grid.campaign_state(cid) == "cancelled"


def test_cluster_whose_api_goes_down_is_blacklisted_and_autofixed(grid: Grid) -> None:
    from tests import oar_testbed as tb

    ok = script("ok3.sh", "echo ok\n")
    c3 = grid.clusters["c3"]
    tb.api_stop("c3")
    try:
        cid = submit_campaign(grid.engine, jdl("apidown", ok, ["d1", "d2", "d3"], {"c3": {}}), "alice", grid.conf)
        def blacklisted() -> bool:
            with grid.engine.connect() as c:
                return cluster_blacklisted(c, c3)
        wait_for("cluster blacklisted", blacklisted, timeout=120)
    finally:
        tb.api_start("c3")
    wait_for("blacklist lifted", lambda: not blacklisted(), timeout=120)
    wait_for("campaign terminated", lambda: finished(grid, cid), timeout=240)
    grid.assert_true_story(cid, 3)
    errs = [e for e in grid.events() if e["class"] == "cluster" and e["cluster_id"] == c3
            and e["code"] in ("CONNECTION_REFUSED", "CONNECTION_RESET", "TIMEOUT", "SOCKET_ERROR")]
    assert errs and all(e["state"] == "closed" for e in errs)


def test_kill9_of_a_runner_mid_submission_loses_and_duplicates_nothing(grid: Grid) -> None:
    from cigri.clusters import get_adapter
    from cigri.db.clusters import get_cluster

    quick = script("quick.sh", "sleep 1\n")
    n = 60
    cid = submit_campaign(grid.engine, jdl("kill9", quick, [f"q{i}" for i in range(n)], {"c1": {}}),
                          "alice", grid.conf)
    for _ in range(3):
        wait_for("some jobs submitted", lambda: any(j["state"] in ("launching", "submitted", "running")
                                                    for j in grid.jobs(cid)))
        grid.kill9_runner("c1")
        time.sleep(1.5)
        wait_for("runner restarted", lambda: grid.runner_pid("c1"), timeout=60)
    wait_for("campaign terminated", lambda: finished(grid, cid), timeout=300)
    grid.assert_true_story(cid, n)
    # OAR ran exactly the jobs CiGri knows of: no orphan (duplicated) job of this campaign
    c1 = grid.clusters["c1"]
    known = {j["remote_id"] for j in grid.jobs(cid) if j["remote_id"] and j["cluster_id"] == c1}
    with grid.engine.connect() as c:
        adapter = get_adapter(get_cluster(c, cluster_id=c1), grid.conf, {})
    lo, hi = min(known), max(known) + 200
    got = adapter.get_jobs(list(range(lo, hi)))
    ours = {rid for rid, r in got.items() if f"CIGRI_CAMPAIGN_ID={cid};" in (r.command or "")
            or (r.raw.get("name") == f"cigri.{cid}")}
    assert ours == known


def test_temporal_grouping_runs_tasks_in_one_oar_job_with_exact_quoting(grid: Grid) -> None:
    echo = script("echo.sh", 'printf "%s|" "$@" > "tg_$1"\n')
    params = ["g1 'two words' \\$HOME", "g2 x", "g3 y"]
    cid = submit_campaign(grid.engine, jdl("grouped", echo, params, {"c2": {"temporal_grouping": True}}),
                          "alice", grid.conf)
    wait_for("campaign terminated", lambda: finished(grid, cid), timeout=240,
             diag=lambda: (grid.jobs(cid), grid.events(cid)))
    jobs = [j for j in grid.jobs(cid) if j["param_id"] != 0]
    assert {j["tag"] for j in jobs} == {"batch"}
    grid.assert_true_story(cid, 3)
    assert (WORK / "tg_g1").read_text() == "g1|two words|/home/alice|"
    assert all(j["start_time"] is not None and j["return_code"] == 0 for j in jobs)
