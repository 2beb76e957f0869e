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
