"""The Slurm testbed the Slurm tests rely on: what it promises (JWT-only REST API, the
three partitions and their preemption modes, both users) and that `up` repairs a
testbed whose daemons were killed."""

from __future__ import annotations

import os
import signal
import subprocess

import pytest
import requests

from tests.slurm_testbed import (
    RUND,
    TOOL,
    api,
    api_answers,
    headers,
    slurm,
    testbed_env,
    wait_for,
)

pytestmark = [slurm]


def test_rest_api_needs_a_valid_jwt() -> None:
    assert requests.get(api("ping"), timeout=30).status_code == 401
    forged = headers("alice", token="eyJhbGciOiJIUzI1NiJ9.eyJzdW4iOiJhbGljZSJ9.AAAA")
    r = requests.get(api("ping"), headers=forged, timeout=30)
    assert r.status_code == 500 and r.json()["errors"] and not r.json().get("pings")  # (sic: 500, not 401)
    r = requests.get(api("ping"), headers=headers("bob"), timeout=30)
    assert r.status_code == 200 and r.json()["meta"]["plugin"]["type"] == "openapi/v0.0.38"


def test_partitions_and_preemption_modes() -> None:
    parts = {p["name"]: p for p in requests.get(api("partitions"), headers=headers("alice"),
                                                timeout=30).json()["partitions"]}
    assert parts["normal"]["priority_tier"] > parts["besteffort"]["priority_tier"]
    assert parts["besteffort"]["preemption_mode"] == ["requeue"]
    assert parts["bestcancel"]["preemption_mode"] == []  # CANCEL serialises as an empty list
    assert "default" in parts["normal"]["flags"]
    env = testbed_env()
    assert int(env["SLURM_TESTBED_CPUS"]) == parts["normal"]["total_cpus"]


def test_up_repairs_killed_daemons() -> None:
    if os.geteuid() != 0:
        pytest.skip("killing and starting the testbed's daemons needs root")
    killed = []
    for name in ("slurmctld", "slurmrestd", "slurmd-slnode2"):
        pid = int((RUND / f"{name}.pid").read_text())
        os.kill(pid, signal.SIGKILL)
        killed.append(pid)
    wait_for(lambda: not api_answers(timeout=2), deadline=30, what="the API to go down")
    out = subprocess.run([str(TOOL), "up"], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "slurmctld started" in out.stdout and "slurmrestd started" in out.stdout
    assert api_answers()
    nodes = requests.get(api("nodes"), headers=headers("alice"), timeout=30).json()["nodes"]
    assert {n["name"]: n["state"] for n in nodes} == {"slnode1": "idle", "slnode2": "idle"}
    again = subprocess.run([str(TOOL), "up"], capture_output=True, text=True, timeout=300)
    assert again.returncode == 0 and "started" not in again.stdout  # idempotent: nothing to do
    status = subprocess.run([str(TOOL), "status"], capture_output=True, text=True, timeout=60)
    assert status.returncode == 0 and "DOWN" not in status.stdout
    assert all(not os.path.exists(f"/proc/{p}") for p in killed)
