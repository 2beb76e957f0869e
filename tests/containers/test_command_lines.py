"""The exact command lines of the engines this machine cannot run (Apptainer, SingularityCE,
Docker: no Debian 12 package, no daemon): a stand-in program records the arguments and the
environment it gets, so quoting, binds, variables and the working directory are checked
argument by argument, through the same bash command a batch system runs."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from cigri import containers
from tests.containers.conftest import Node

STUB = """#!/usr/bin/env python3
import json, os, sys
with open(os.environ["STUB_LOG"], "a") as f:
    env = {k: v for k, v in os.environ.items() if k.startswith(("APPTAINERENV_", "SINGULARITYENV_"))}
    f.write(json.dumps({"argv": sys.argv[1:], "env": env, "cwd": os.getcwd()}) + "\\n")
sys.exit(int(os.environ.get("STUB_RC_" + sys.argv[1].upper(), "0")))
"""


@pytest.fixture
def stubs(root_node: Node, tmp_path: Path) -> dict[str, str]:
    bindir = tmp_path / "bin"
    bindir.mkdir()
    for name in ("apptainer", "singularity", "docker"):
        (bindir / name).write_text(STUB)
        (bindir / name).chmod(0o755)
    return {"PATH": f"{bindir}:{os.environ['PATH']}", "STUB_LOG": str(tmp_path / "log")}


def run(node: Node, env: dict[str, str], block: dict[str, Any], extra: dict[str, str] | None = None
        ) -> tuple[int, str, list[dict[str, Any]]]:
    b = containers.finish_block(containers.check_block(block), "c")  # type: ignore[arg-type]
    cmd = containers.wrap_command(b, str(node.runs), "/opt/demo/bin/run.sh", """one 'two words' "$HOME" """)
    r = node.run(f"export CIGRI_CAMPAIGN_ID=42 OAR_JOB_ID=7 OTHER=x; {cmd}", env | (extra or {}))
    log = Path(env["STUB_LOG"])
    calls = [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
    log.unlink(missing_ok=True)
    return r.returncode, r.stderr, calls


@pytest.mark.parametrize("engine,prefix", [("apptainer", "APPTAINERENV_"), ("singularity", "SINGULARITYENV_")])
def test_apptainer_and_singularity(root_node: Node, stubs: dict[str, str], engine: str, prefix: str) -> None:
    node = root_node
    rc, err, calls = run(node, stubs, {
        "engine": engine, "image": f"{node.image}", "bind": [f"{node.root}/data:/data:ro", f"{node.root}/data"],
        "env": {"GREETING": "hi, $USER `id` $(id) $1 ${2} \\$USER \"q\" 'x'"},
        "options": ["--nv", "--env-file", "~/f"]})
    assert (rc, err) == (0, "")
    [call] = calls
    wd = str(node.runs)
    assert call["argv"] == [
        "exec", "--cleanenv", "--no-home", "--bind", wd, "--pwd", wd,
        "--bind", f"{node.root}/data:/data:ro", "--bind", f"{node.root}/data:{node.root}/data",
        "--nv", "--env-file", f"{node.home}/f", str(node.image), "/opt/demo/bin/run.sh", "one", "two words", node.home]
    assert call["cwd"] == wd
    assert call["env"] == {f"{prefix}CIGRI_CAMPAIGN_ID": "42", f"{prefix}OAR_JOB_ID": "7",
                           f"{prefix}GREETING": "hi, root `id` $(id) $1 ${2} $USER \"q\" 'x'"}


def test_apptainer_image_uri_is_not_checked_on_the_node(root_node: Node, stubs: dict[str, str]) -> None:
    rc, err, calls = run(root_node, stubs, {"engine": "apptainer", "image": "docker://alpine:3"})
    assert rc == 0 and calls[0]["argv"][-5] == "docker://alpine:3", err


def test_docker(root_node: Node, stubs: dict[str, str]) -> None:
    node = root_node
    rc, err, calls = run(node, stubs, {"engine": "docker", "image": "registry.example/app:1.2",
                                       "bind": [f"{node.root}/data:/data:ro"], "env": {"A": "1 2"}})
    assert (rc, err) == (0, "")
    [call] = calls
    wd = str(node.runs)
    assert call["argv"] == [
        "run", "--rm", "--init", "--network=host", "-u", f"{node.uid}:{node.gid}", "-v", f"{wd}:{wd}", "-w", wd,
        "-e", "HOME", "-e", "USER", "-e", "LOGNAME", "-e", "CIGRI_CAMPAIGN_ID", "-e", "OAR_JOB_ID",
        "-e", "A=1 2", "-v", f"{node.root}/data:/data:ro", "registry.example/app:1.2",
        "/opt/demo/bin/run.sh", "one", "two words", node.home]


def test_docker_image_missing_from_the_store_is_named(root_node: Node, stubs: dict[str, str]) -> None:
    """docker's own failure (125) is diagnosed once, by asking for the image."""
    rc, err, calls = run(root_node, stubs, {"engine": "docker", "image": "app:9"},
                         {"STUB_RC_RUN": "125", "STUB_RC_IMAGE": "1"})
    assert rc == 125
    assert [c["argv"][:3] for c in calls][1] == ["image", "inspect", "app:9"]
    diag = containers.diagnose(rc, err)
    assert diag is not None and diag[0] == "image-not-found" and "docker image store of root" in diag[1]


def test_a_path_the_bind_syntax_cannot_carry_is_named(root_node: Node, stubs: dict[str, str]) -> None:
    odd = root_node.root / "a,b"
    odd.mkdir(exist_ok=True)
    rc, err, calls = run(root_node, stubs, {"engine": "apptainer", "image": str(root_node.image),
                                            "bind": [f"{root_node.root}/$D"]}, {"D": "a,b"})
    assert rc == 125 and not calls
    assert containers.diagnose(rc, err) is not None and "[bad-path]" in err and "a,b" in err
