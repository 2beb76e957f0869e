"""`pip install .` gives every command: the wheel declares each console script, each one
resolves to an importable function, and the SQL schema and default configuration ship."""

from __future__ import annotations

import configparser
import importlib
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

EXPECTED_COMMANDS = {
    "cigri", "cigri-db", "cigri-admin", "newcluster", "grid_test_cluster", "gridsub", "gridstat", "griddel",
    "gridevents", "gridnotify", "gridclusters", "gridtoken", "gridclean", "cigri-api", "cigri-almighty",
    "cigri-runner", "cigri-metascheduler", "cigri-updator", "cigri-nikita", "cigri-colombo", "cigri-judas",
}


def _entry_points() -> dict[str, str]:
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    lines = cfg["options.entry_points"]["console_scripts"].strip().splitlines()
    return {k.strip(): v.strip() for k, v in (line.split("=", 1) for line in lines)}


def test_every_console_script_resolves():
    eps = _entry_points()
    assert EXPECTED_COMMANDS <= set(eps)
    for name, target in eps.items():
        mod, func = target.split(":")
        assert callable(getattr(importlib.import_module(mod), func)), name


def test_wheel_ships_modules_sql_and_conf(tmp_path):
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                    "-w", str(tmp_path), str(ROOT)], check=True, capture_output=True)
    wheel = next(tmp_path.glob("cigri-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    assert "cigri/modules/almighty.py" in names
    assert "cigri/modules/runner.py" in names
    for init in ROOT.glob("cigri/**/__init__.py"):  # every subpackage (a new one is easily forgotten)
        assert init.relative_to(ROOT).as_posix() in names, init
    assert any(n.endswith("share/cigri/sql/cigri3.sql") for n in names)
    assert any(n.endswith("share/cigri/conf/cigri.conf") for n in names)
    for example in ROOT.glob("conf/examples/*"):  # every example (the README points at them)
        assert any(n.endswith(f"share/cigri/examples/{example.name}") for n in names), example
    ep = next(n for n in names if n.endswith("entry_points.txt"))
    text = zipfile.ZipFile(wheel).read(ep).decode()
    for cmd in EXPECTED_COMMANDS:
        assert f"{cmd} =" in text, cmd
