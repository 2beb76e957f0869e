"""Containerised tasks inside real Slurm jobs (the Slurm testbed, next to the OAR testbed the e2e
grid needs): the same probe campaign as on OAR, with ch-run and bwrap, and a container that
cannot start, whose stderr marker reaches CiGri through the job's comment."""

from __future__ import annotations

from typing import Any

import pytest

from cigri.campaigns import submit_campaign
from tests.containers.conftest import Node, node, require  # noqa: F401 - fixture
from tests.e2e.conftest import Grid, wait_for
from tests.e2e.test_containers_e2e import seen
from tests.e2e.test_slurm_e2e import SL, sl  # noqa: F401 - fixture

pytestmark = [pytest.mark.oar, pytest.mark.slurm, pytest.mark.slow]


@pytest.mark.parametrize("engine", ["charliecloud", "bwrap"])
def test_tasks_in_slurm_jobs_run_in_the_image(grid: Grid, sl: int, node: Node, engine: str) -> None:  # noqa: F811
    require(engine)
    work = node.root / f"slurm-{engine}"
    work.mkdir()
    node.chown(work)
    jdl: dict[str, Any] = {
        "name": f"slurm-probe-{engine}", "exec_file": "/opt/test/probe.sh", "exec_directory": str(work),
        "params": ["ok1 0 x", "ok2 0 'y z'", "bad 7 w"], "walltime": "00:10:00",
        "container": {"engine": engine, "image": str(node.image), "bind": [f"{node.root}/data:/data:ro"],
                      "env": {"GREETING": "hi {CAMPAIGN_ID}"}},
        "clusters": {SL: {}}}
    cid = submit_campaign(grid.engine, jdl, "alice", grid.conf)
    ev = wait_for("EXIT_ERROR of the failing task", lambda: grid.events(cid, "EXIT_ERROR"), timeout=240,
                  diag=lambda: (grid.events(cid), grid.jobs(cid)))[0]
    assert "probe stderr 7" in ev["message"], ev  # the task's own exit code and stderr
    wait_for("the other tasks", lambda: sum(j["state"] == "terminated" for j in grid.jobs(cid)) == 2,
             timeout=240, diag=lambda: (grid.events(cid), grid.jobs(cid)))
    for name in ("ok1", "ok2", "bad"):
        s = seen(work / name)
        assert s["os"] == "cigri-demo" and s["pwd"] == str(work) and s["data"] == "10", s
        assert s["greeting"] == f"hi {cid}" and s["campaign"] == str(cid) and s["slurm"].isdigit(), s
        assert s["uid"] == str(node.uid) and (work / name).stat().st_uid == node.uid
    assert seen(work / "ok2")["arg1"] == "<y z>"
    assert sorted(j["return_code"] for j in grid.jobs(cid)) == [0, 0, 7 << 8]


def test_container_that_cannot_start_on_slurm_gives_a_container_error(grid: Grid, sl: int,  # noqa: F811
                                                                       node: Node) -> None:  # noqa: F811
    require("bwrap")
    jdl = {"name": "slurm-no-image", "exec_file": "/opt/test/probe.sh", "exec_directory": str(node.runs),
           "params": ["a 0"], "walltime": "00:10:00",
           "container": {"engine": "bwrap", "image": f"{node.root}/missing-image"}, "clusters": {SL: {}}}
    cid = submit_campaign(grid.engine, jdl, "alice", grid.conf)
    ev = wait_for("CONTAINER_ERROR", lambda: grid.events(cid, "CONTAINER_ERROR"), timeout=240,
                  diag=lambda: (grid.events(cid), grid.jobs(cid)))[0]
    assert ev["message"].startswith(f"Container error (image-not-found): image {node.root}/missing-image does "
                                    "not exist (bwrap, node ")
    assert ev["cluster_id"] == sl
