"""The command CiGri builds for a containerised task, run by real engines (ch-run, bwrap,
rootless podman) as user alice, the way a batch system runs it: through bash, in the task's
working directory, with the parameter line appended."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from cigri import containers
from cigri.engine.runner import batch_script, script_command
from tests.containers.conftest import Node, require

ENGINES = ["charliecloud", "bwrap", "podman"]
#: a parameter line with quotes, spaces and a variable: the task must get it as without a container
PARAM = """alpha 'two words' "with \\"quote\\"" $HOME tail"""


@pytest.fixture(params=ENGINES)
def engine(request: pytest.FixtureRequest, node: Node) -> str:
    require(request.param)
    if request.param == "podman":
        node.env = request.getfixturevalue("podman_env")
    else:
        node.env = {}
    return str(request.param)


def block(node: Node, engine: str, **extra: Any) -> dict[str, Any]:
    b = {"engine": engine, "image": str(node.image), "bind": [f"{node.root}/data:/data:ro"],
         "env": {"GREETING": "hello $USER \\$USER `id` $(id) \"q\" 'x'"}} | extra
    return containers.finish_block(containers.check_block(b), "local")  # type: ignore[arg-type]


def read(path: Path) -> dict[str, str]:
    return dict(line.split("=", 1) for line in path.read_text().splitlines())


def test_task_runs_in_the_image_with_its_directory_binds_env_and_exit_code(node: Node, engine: str) -> None:
    out = node.runs / f"seen-{engine}"
    cmd = containers.wrap_command(block(node, engine), str(node.runs), "/opt/test/probe.sh",
                                  f"{out.name} 7 {PARAM}")
    r = node.run(f"export CIGRI_CAMPAIGN_ID=42 OAR_JOB_ID=1001 SLURM_JOB_ID=77 LEAKED=yes; {cmd}")
    assert r.returncode == 7, r.stderr  # the task's exit code
    assert r.stdout == "probe stdout 7\n"  # stdout and stderr unchanged, kept apart
    assert r.stderr == "probe stderr 7\n"
    seen = read(out)
    assert seen["os"] == "cigri-demo"  # its /etc/os-release: it ran inside the image
    assert seen["pwd"] == str(node.runs)  # the working directory, bound at the same path
    assert seen["data"] == "10"  # a bind mount
    # the block's env: $VARIABLES expand on the node (\$ is a $), nothing else is evaluated
    assert seen["greeting"] == "hello alice $USER `id` $(id) \"q\" 'x'"
    assert (seen["campaign"], seen["oar"], seen["slurm"]) == ("42", "1001", "77")  # CIGRI_*, OAR_*, SLURM_*
    assert seen["leaked"] == "none"  # the rest of the node's environment stays out
    assert (seen["home"], seen["user"]) == (node.home, node.user)
    st = out.stat()
    assert (st.st_uid, st.st_gid) == (node.uid, node.gid)  # files written belong to the user
    # the parameter line reaches the program exactly as without a container
    direct = node.runs / f"direct-{engine}"
    r = node.run(f"{node.image}/opt/test/probe.sh {direct.name} 0 {PARAM}")
    assert r.returncode == 0, r.stderr
    args = {k: v for k, v in read(direct).items() if k.startswith("arg")}
    assert args == {k: v for k, v in seen.items() if k.startswith("arg")}
    assert args["arg2"] == "<two words>" and args["arg3"] == '<with "quote">' and args["arg4"] == f"<{node.home}>"


@pytest.mark.parametrize("engine", ["bwrap", "podman"], indirect=True)  # ch-run has no read-only bind
def test_read_only_bind_is_read_only(node: Node, engine: str) -> None:
    cmd = containers.wrap_command(block(node, engine, options=[]), str(node.runs), "/bin/sh -c",
                                  "'echo x > /data/new'")
    r = node.run(cmd)
    assert r.returncode != 0 and not (node.root / "data" / "new").exists()


@pytest.mark.parametrize("cause", ["engine-missing", "image-not-found", "bind-source-missing",
                                   "exec-file-missing"])
def test_failures_name_their_cause(node: Node, engine: str, cause: str) -> None:
    env: dict[str, str] = {}
    b = block(node, engine)
    exec_file = "/opt/test/probe.sh"
    if cause == "engine-missing":  # a node without the engine: the same PATH minus its program
        nopath = node.root / f"bin-without-{engine}"
        nopath.mkdir(exist_ok=True)
        for d in os.environ.get("PATH", "/usr/bin:/bin").split(":"):
            for p in Path(d).glob("*") if Path(d).is_dir() else []:
                if p.name != containers.BINARIES[engine] and not (nopath / p.name).exists():
                    (nopath / p.name).symlink_to(p)
        env["PATH"] = str(nopath)
    elif cause == "image-not-found":
        b["image"] = str(node.root / "no-such-image")
    elif cause == "bind-source-missing":
        b["bind"] = [f"{node.root}/no-such-dir:/data"]
    else:
        exec_file = "/opt/no/such/program"
    r = node.run(containers.wrap_command(b, str(node.runs), exec_file, "x 0"), env)
    assert r.returncode == containers.ERROR_STATUS, r.stderr
    diag = containers.diagnose(r.returncode, r.stderr)
    assert diag is not None and diag[0] == cause, r.stderr
    assert containers.ADVICE[cause] in diag[1]


def test_temporal_grouping_runs_each_line_in_the_container(node: Node, engine: str) -> None:
    class J:
        def __init__(self, i: int, param: str) -> None:
            self.id, self.param = i, param

    d = node.runs / f"batch-{engine}"
    d.mkdir()
    node.chown(d)
    jobs = [J(1, "t1 0 a"), J(2, "t2 3 'b c'"), J(3, "t3 0 d")]
    script = batch_script("/opt/test/probe.sh", jobs, block(node, engine), str(d))  # type: ignore[arg-type]
    r = node.run("export CIGRI_CAMPAIGN_ID=9; " + script_command(script), cwd=d)
    assert r.returncode == 0, r.stderr
    for j, status in ((1, 0), (2, 3), (3, 0)):
        state = (d / f"cigri_batch_state_{j}").read_text()
        assert f"RET={status}\n" in state
        assert (d / f"cigri_batch_stdout_{j}").read_text() == f"probe stdout {status}\n"
        assert (d / f"cigri_batch_stderr_{j}").read_text() == f"probe stderr {status}\n"
        seen = read(d / f"t{j}")
        assert seen["os"] == "cigri-demo" and seen["campaign"] == "9" and seen["pwd"] == str(d)
    assert read(d / "t2")["arg1"] == "<b c>"
