"""Containerised campaigns inside real OAR jobs (the testbed's 3 OAR 2.5 clusters), tasks run as
alice with real engines: the example JDL unchanged (charliecloud on c1, bwrap on c2, the image
rebuilt by the clusters' prologue), a probe campaign per engine (array jobs, and temporal
grouping), and a container that cannot start."""

from __future__ import annotations

import pwd
import shutil
from pathlib import Path
from typing import Any

import pytest

from cigri.campaigns import submit_campaign
from tests.containers.conftest import MAKE_IMAGE, ROOT, Node, node, require  # noqa: F401 - fixture
from tests.e2e.conftest import Grid, wait_for

pytestmark = [pytest.mark.oar, pytest.mark.slow]


def seen(path: Path) -> dict[str, str]:
    return dict(line.split("=", 1) for line in path.read_text().splitlines())


def finished(grid: Grid, cid: int) -> bool:
    return grid.campaign_state(cid) == "terminated"


def test_the_example_runs_unchanged_on_oar_clusters(grid: Grid) -> None:
    """conf/examples/container.jdl as a user submits it after trying it locally: the image
    directory is gone on the clusters, their prologue rebuilds it once, tasks run in it."""
    require("charliecloud")
    require("bwrap")
    user = pwd.getpwnam("alice")
    demo = Path(user.pw_dir) / "cigri-demo"
    shutil.rmtree(demo, ignore_errors=True)
    demo.mkdir()
    shutil.chown(demo, "alice", "alice")
    n = Node(demo)
    assert n.run(f"sh {MAKE_IMAGE} {demo}", cwd=demo).returncode == 0
    shutil.rmtree(demo / "image")  # the clusters' prologue must make it again
    try:
        text = (ROOT / "conf" / "examples" / "container.jdl").read_text()
        cid = submit_campaign(grid.engine, text, "alice", grid.conf)
        wait_for("campaign terminated", lambda: finished(grid, cid), timeout=300,
                 diag=lambda: grid.events(cid))
        grid.assert_true_story(cid, 3)
        assert not [e for e in grid.events(cid) if e["state"] == "open"]
        for name, value in (("alpha", 10), ("beta", 20), ("gamma", 30)):
            out = demo / "runs" / f"result_{name}.txt"
            assert out.read_text() == f"{name} {value} image=cigri-demo greeting=hello from the JDL campaign={cid}\n"
            assert out.stat().st_uid == user.pw_uid
        used = {j["cluster_id"] for j in grid.jobs(cid) if j["param_id"] != 0}
        assert used <= {grid.clusters["c1"], grid.clusters["c2"]}
    finally:
        shutil.rmtree(demo, ignore_errors=True)


@pytest.mark.parametrize("engine,cluster,grouping", [("charliecloud", "c1", False), ("bwrap", "c2", False),
                                                     ("charliecloud", "c3", True), ("bwrap", "c3", True)])
def test_tasks_in_oar_jobs_run_in_the_image(grid: Grid, node: Node, engine: str, cluster: str,  # noqa: F811
                                            grouping: bool) -> None:
    require(engine)
    work = node.root / f"oar-{engine}-{cluster}"
    work.mkdir()
    node.chown(work)
    jdl: dict[str, Any] = {
        "name": f"probe-{engine}", "exec_file": "/opt/test/probe.sh", "exec_directory": str(work),
        "params": ["ok1 0 x", "ok2 0 'y z'", "bad 7 w"], "walltime": "00:10:00", "resources": "/core=1",
        "container": {"engine": engine, "image": str(node.image), "bind": [f"{node.root}/data:/data:ro"],
                      "env": {"GREETING": "hi {CAMPAIGN_ID}"}},
        "clusters": {cluster: {"temporal_grouping": "true"} if grouping else {}}}
    cid = submit_campaign(grid.engine, jdl, "alice", grid.conf)
    ev = wait_for("EXIT_ERROR of the failing task", lambda: grid.events(cid, "EXIT_ERROR"), timeout=240,
                  diag=lambda: (grid.events(cid), grid.jobs(cid)))[0]
    assert "probe stderr 7" in ev["message"], ev  # the task's own exit code and stderr
    wait_for("the other tasks", lambda: sum(j["state"] == "terminated" for j in grid.jobs(cid)) == 2,
             timeout=240, diag=lambda: (grid.events(cid), grid.jobs(cid)))
    for name in ("ok1", "ok2", "bad"):
        s = seen(work / name)
        assert s["os"] == "cigri-demo" and s["pwd"] == str(work) and s["data"] == "10", s
        assert s["greeting"] == f"hi {cid}" and s["campaign"] == str(cid) and s["oar"].isdigit(), s
        assert s["uid"] == str(node.uid) and (work / name).stat().st_uid == node.uid
    assert seen(work / "ok2")["arg1"] == "<y z>"
    rcs = sorted(j["return_code"] for j in grid.jobs(cid))
    assert rcs == [0, 0, 7 << 8]
    if grouping:  # each line of a batch script ran in the container
        assert all(j["tag"] == "batch" and j["batch_id"] for j in grid.jobs(cid))


def test_container_that_cannot_start_gives_a_container_error_and_blacklists_that_cluster_only(
        grid: Grid, node: Node) -> None:  # noqa: F811
    require("bwrap")
    jdl = {"name": "no-image", "exec_file": "/opt/test/probe.sh", "exec_directory": str(node.runs),
           "params": ["a 0"], "walltime": "00:10:00", "resources": "/core=1",
           "container": {"engine": "bwrap", "image": f"{node.root}/missing-image"}, "clusters": {"c2": {}}}
    cid = submit_campaign(grid.engine, jdl, "alice", grid.conf)
    ev = wait_for("CONTAINER_ERROR", lambda: grid.events(cid, "CONTAINER_ERROR"), timeout=240,
                  diag=lambda: grid.events(cid))[0]
    assert ev["message"].startswith(f"Container error (image-not-found): image {node.root}/missing-image does "
                                    "not exist (bwrap, node ")
    assert "Put the image where every node of this cluster sees it" in ev["message"]
    bl = wait_for("blacklist", lambda: [e for e in grid.events(cid, "BLACKLIST") if e["state"] == "open"])
    assert bl[0]["class"] == "campaign" and bl[0]["cluster_id"] == grid.clusters["c2"]
    assert bl[0]["parent"] == ev["id"]
