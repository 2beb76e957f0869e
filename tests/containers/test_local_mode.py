"""`cigri local run` of containerised campaigns with real engines (ch-run, bwrap): the example
JDL unchanged, a probe campaign per engine, and a container that cannot start. Local mode runs
tasks as the user running CiGri: root here, as the other local-mode tests (rootless engines
as alice are tested in test_engines and, inside OAR jobs, in tests/e2e)."""

from __future__ import annotations

import json
import sqlite3
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.containers.conftest import ROOT, Node, require

pytestmark = pytest.mark.slow


class Local:
    """`cigri local run` in a data directory of its own."""

    def __init__(self, node: Node, name: str, env: dict[str, str] | None = None) -> None:
        self.node = node
        self.data = node.root / f"xdg-{name}"
        self.data.mkdir()
        node.chown(self.data)
        self.env = {"XDG_DATA_HOME": str(self.data), "PYTHONUNBUFFERED": "1"} | (env or {})

    def run(self, jdl: Path | str, timeout: float = 300) -> tuple[int, str]:
        r = self.node.exec([sys.executable, "-m", "cigri.cli.local", "local", "run", "--quiet", str(jdl)],
                           self.env, cwd=self.node.root, timeout=timeout)
        return r.returncode, r.stdout + r.stderr

    def stop(self) -> None:
        self.node.exec([sys.executable, "-m", "cigri.cli.local", "local", "stop", "--kill-tasks"], self.env,
                       cwd=self.node.root)

    def query(self, sql: str) -> list[tuple[Any, ...]]:
        with sqlite3.connect(self.data / "cigri" / "cigri.sqlite") as db:
            return list(db.execute(sql))


@pytest.fixture
def local(root_node: Node, request: pytest.FixtureRequest) -> Any:
    made: list[Local] = []

    def make(env: dict[str, str] | None = None) -> Local:
        lm = Local(root_node, f"{request.node.name}-{len(made)}".replace("[", "-").replace("]", ""), env)
        made.append(lm)
        return lm

    yield make
    for lm in made:
        lm.stop()


def write_jdl(node: Node, name: str, body: dict[str, Any]) -> Path:
    p = node.root / f"{name}.jdl"
    p.write_text(json.dumps(body))
    node.chown(p)
    return p


def test_the_example_runs_unchanged_in_local_mode(root_node: Node, local: Any) -> None:
    """conf/examples/container.jdl as a new user runs it: make the image, `cigri local run`."""
    require("bwrap")
    node = root_node
    home = node.root / "home"
    home.mkdir()
    node.chown(home)
    r = node.run(f"sh {ROOT}/conf/examples/make-container-image ~/cigri-demo", {"HOME": str(home)}, cwd=home)
    assert r.returncode == 0, r.stderr
    rc, out = local({"HOME": str(home)}).run(ROOT / "conf" / "examples" / "container.jdl")
    assert rc == 0, out
    assert "Campaign 1 terminated: 3/3 tasks done." in out
    runs = home / "cigri-demo" / "runs"
    assert (runs / "result_alpha.txt").read_text() == \
        "alpha 10 image=cigri-demo greeting=hello from the JDL campaign=1\n"
    assert (runs / "result_gamma.txt").read_text().startswith("gamma 30 image=cigri-demo ")
    assert (runs / "result_alpha.txt").stat().st_uid == node.uid


@pytest.mark.parametrize("engine", ["charliecloud", "bwrap"])
def test_campaign_in_each_engine(root_node: Node, local: Any, engine: str) -> None:
    require(engine)
    node = root_node
    work = node.root / f"local-{engine}"
    work.mkdir()
    node.chown(work)
    jdl = write_jdl(node, f"local-{engine}", {
        "name": f"in-{engine}", "exec_file": "/opt/test/probe.sh", "exec_directory": str(work),
        "params": ["ok1 0 x", "ok2 0 'y z'", "bad 7 w"],
        "container": {"engine": "apptainer", "image": str(node.image), "bind": [f"{node.root}/data:/data:ro"],
                      "env": {"GREETING": "hi"}},
        "clusters": {"dahu": {}, "local": {"container": {"engine": engine}}}})
    lm = local()
    rc, out = lm.run(jdl)
    assert rc == 2, out  # stopped by the failing task's open event
    assert "task bad failed: exit code 7" in out and "probe stderr 7" in out, out  # its exit code and stderr
    for name in ("ok1", "ok2", "bad"):
        seen = dict(line.split("=", 1) for line in (work / name).read_text().splitlines())
        assert seen["os"] == "cigri-demo" and seen["pwd"] == str(work) and seen["data"] == "10"
        assert seen["greeting"] == "hi" and seen["campaign"] == "1" and seen["job"].isdigit()  # (local: CIGRI_JOB_ID)
        assert (work / name).stat().st_uid == node.uid
    assert "arg1=<y z>" in (work / "ok2").read_text()
    [(msg,)] = lm.query("SELECT message FROM events WHERE code = 'EXIT_ERROR'")
    assert "exit status 1792" in msg
    assert lm.query("SELECT count(*) FROM jobs WHERE state = 'terminated'") == [(2,)]


def test_container_that_cannot_start_tells_what_to_fix(root_node: Node, local: Any) -> None:
    require("bwrap")
    node = root_node
    jdl = write_jdl(node, "noimage", {
        "name": "noimage", "exec_file": "/opt/test/probe.sh", "exec_directory": str(node.runs),
        "params": ["a 0"], "container": {"engine": "bwrap", "image": f"{node.root}/missing-image"},
        "clusters": {"local": {}}})
    lm = local()
    rc, out = lm.run(jdl)
    assert rc == 2, out
    assert (f"task a failed: CONTAINER_ERROR: Container error (image-not-found): image {node.root}/missing-image "
            "does not exist (bwrap, node ") in out, out
    assert "Put the image where every node of this cluster sees it" in out
    assert "--rerun-failed" in out
    assert lm.query("SELECT count(*) FROM events WHERE code = 'CONTAINER_ERROR' AND state = 'open'") == [(1,)]
