"""`cigri local` argument handling that needs no running engine."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from cigri.cli.local import find_jdl, load_jdl


def test_bad_jdl_gives_one_message_and_changes_nothing(tmp_path: Path):
    bad = tmp_path / "bad.jdl"
    bad.write_text('{"name": "x", "exec_file": "true"}')
    env = dict(os.environ, XDG_DATA_HOME=str(tmp_path / "xdg"))
    env.pop("CIGRICONFFILE", None)
    r = subprocess.run([sys.executable, "-m", "cigri.cli.local", "local", "run", str(bad)], env=env,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 1
    assert r.stderr.strip().splitlines() == [f"cigri: {bad}: JDL file does not contain mandatory field 'clusters'"]
    assert "Traceback" not in r.stdout + r.stderr
    assert not (tmp_path / "xdg" / "cigri" / "local-runs.json").exists()


def test_grid_jdl_is_tried_on_the_local_cluster(tmp_path: Path):
    p = tmp_path / "grid.jdl"
    p.write_text(json.dumps({"name": "g", "params": ["a"], "exec_file": "echo",
                             "clusters": {"dahu": {"walltime": "00:01:00"}, "luke": {}}}))
    data, digest = load_jdl(str(p))
    assert data["clusters"] == {"local": {"walltime": "00:01:00"}} and len(digest) == 64


def test_shipped_example_is_found():
    path = find_jdl("examples/hello.jdl")
    assert Path(path).is_file() and json.loads(Path(path).read_text())["clusters"] == {"local": {}}


def _run(tmp_path: Path, jdl: Path) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, XDG_DATA_HOME=str(tmp_path / "xdg"))
    env.pop("CIGRICONFFILE", None)
    return subprocess.run([sys.executable, "-m", "cigri.cli.local", "local", "run", str(jdl)], env=env,
                          capture_output=True, text=True, timeout=120)


def test_bad_input_gives_one_line_naming_the_problem(tmp_path: Path):
    cases = {
        b'{"name": "caf\xe9", "exec_file": "true", "params": ["a"], "clusters": {"local": {}}}':
            "line 1: not UTF-8 text (byte 0xe9); save the JDL as UTF-8",
        b'{\n "name": "x",\n "exec_file": "true",\n "nb_job": 3,\n "clusters": {"local": {}}\n}':
            "line 4: Unknown field 'nb_job': did you mean 'nb_jobs'?",
        json.dumps({"name": "x", "exec_file": "true", "params": ["a", "b " + "x" * 70_000],
                    "clusters": {"local": {}}}).encode():
            "Parameter element 1 of 'params' is longer than 65536 bytes",
        json.dumps({"name": "x", "exec_file": "true " + "y" * 40_000, "params": ["a"],
                    "clusters": {"local": {}}}, indent=1).encode():
            "line 3: Field 'exec_file' is longer than 32768 bytes",
    }
    for i, (body, message) in enumerate(cases.items()):
        jdl = tmp_path / f"bad{i}.jdl"
        jdl.write_bytes(body)
        r = _run(tmp_path, jdl)
        assert r.returncode == 1 and len(r.stderr.strip().splitlines()) == 1, r.stderr
        assert message in r.stderr and "Traceback" not in r.stdout + r.stderr, r.stderr
    assert not list(tmp_path.rglob("*.tmp"))  # no temporary file left behind


def test_over_long_line_of_a_param_file_is_refused_with_its_line_number(tmp_path: Path):
    params = tmp_path / "params.txt"
    params.write_text("a 1\nb 2\nc " + "z" * 70_000 + "\n")
    jdl = tmp_path / "pf.jdl"
    jdl.write_text(json.dumps({"name": "pf", "exec_file": "true", "param_file": str(params),
                               "clusters": {"local": {}}}))
    r = _run(tmp_path, jdl)
    assert r.returncode == 1 and f"line 3 of parameter file '{params}' is longer than 65536 bytes" in r.stderr, \
        r.stderr
