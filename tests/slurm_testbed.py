"""Helpers for tests that talk to the real Slurm testbed (`tools/slurm-testbed/slurm-testbed up`).

The testbed is one Slurm 22.05 cluster on loopback: slurmrestd with JWT auth at
http://127.0.0.1:6920/, two fake nodes of 4 CPUs, partitions `normal` (default),
`besteffort` (preempted jobs are requeued by Slurm) and `bestcancel` (preempted jobs
end PREEMPTED), users alice and bob. Usage::

    from tests.slurm_testbed import mint_token, slurm

    pytestmark = [slurm]                # needs the testbed (tests/parts.py: skip on a laptop, FAIL in CI)

    def test_x():
        token = mint_token("alice")

Tests that use the testbed hold /tmp/cigri-slurm.lock for their session (taken by the
probe when the run was not started under `flock` on it: some tests kill the testbed's
daemons, which must never happen under another run's feet) and leave no job behind
(`cancel_all`)."""

from __future__ import annotations

import fcntl
import os
import subprocess
import time
from pathlib import Path
from typing import Any

import jwt
import pytest
import requests

from tests.parts import Part
from tests.testbed_common import read_env_file, wait_for  # noqa: F401 - wait_for re-exported for the Slurm tests

ETC = Path("/etc/slurm-testbed")
ENV_FILE = ETC / "testbed.env"
TOOL = Path(__file__).resolve().parents[1] / "tools" / "slurm-testbed" / "slurm-testbed"
RUND = Path("/run/slurm-testbed")
DEFAULT_URL = "http://127.0.0.1:6920/"
API_VERSION = "v0.0.38"

def testbed_env() -> dict[str, str]:
    return read_env_file(ENV_FILE)


def testbed_url() -> str:
    """Base URL of slurmrestd, with a trailing slash (what a cluster row's api_url holds)."""
    url = testbed_env().get("SLURM_TESTBED_URL", DEFAULT_URL)
    return url if url.endswith("/") else url + "/"


def api(path: str) -> str:
    return f"{testbed_url()}slurm/{API_VERSION}/{path.lstrip('/')}"


def jwt_key_file() -> Path:
    return Path(testbed_env().get("SLURM_TESTBED_JWT_KEY", "/var/lib/slurm-testbed/ctld/jwt_hs256.key"))


def mint_token(user: str, lifespan: int = 3600) -> str:
    """A Slurm JWT for `user`, signed with the testbed's HS256 key (needs root to read it)."""
    now = int(time.time())
    return jwt.encode({"iat": now, "exp": now + lifespan, "sun": user}, jwt_key_file().read_bytes(),
                      algorithm="HS256")


def headers(user: str, token: str | None = None) -> dict[str, str]:
    return {"X-SLURM-USER-NAME": user, "X-SLURM-USER-TOKEN": token or mint_token(user)}


def api_answers(timeout: float = 5.0) -> bool:
    try:
        r = requests.get(api("ping"), headers=headers("alice"), timeout=timeout)
        return r.status_code == 200 and r.json()["pings"][0]["ping"] == "UP"
    except (requests.RequestException, OSError, ValueError, KeyError, IndexError):
        return False


LOCK = "/tmp/cigri-slurm.lock"
_lock_fd: int | None = None


def hold_lock(patience: float = 1800) -> None:
    """Take /tmp/cigri-slurm.lock for the rest of this test session (the testbed is shared and
    some tests kill its daemons), unless this process already runs under `flock` on it."""
    global _lock_fd
    if _lock_fd is not None:
        return
    for name in os.listdir("/proc/self/fd"):
        try:
            if os.readlink(f"/proc/self/fd/{name}") == LOCK:
                return  # inherited from `flock /tmp/cigri-slurm.lock pytest ...`
        except OSError:
            continue
    fd = os.open(LOCK, os.O_RDWR | os.O_CREAT, 0o666)
    end = time.monotonic() + patience
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            _lock_fd = fd
            return
        except BlockingIOError:
            if time.monotonic() > end:
                os.close(fd)
                raise RuntimeError(f"{LOCK} still held by another test run after {patience:.0f} s") from None
            time.sleep(1)


def _probe_testbed() -> str | None:
    hold_lock()
    if not ENV_FILE.exists() and os.environ.get("CIGRI_SLURM_TESTBED") != "1":
        return f"not set up (no {ENV_FILE})"
    if not os.access(jwt_key_file(), os.R_OK):
        return f"cannot read the testbed's JWT key {jwt_key_file()} (the Slurm tests run as root)"
    if not api_answers(timeout=10.0):
        return f"slurmrestd ({testbed_url()}) does not answer a JWT ping"
    return None


SLURM_TESTBED = Part("Slurm testbed", "CIGRI_SLURM_TESTBED", _probe_testbed,
                     hint="sudo tools/slurm-testbed/slurm-testbed up; tools/test starts it unless CIGRI_NO_SLURM=1")


def testbed_available() -> bool:
    """True when the testbed answers (tests marked `slurm` require it: see tests/parts.py)."""
    return SLURM_TESTBED.available()


#: every test marked `slurm` needs the testbed (checked by tests/conftest.py): skipped on a
#: developer machine without it, FAILED in CI or when tools/test started it (CIGRI_SLURM_TESTBED=1)
slurm = pytest.mark.slurm


def cluster_row(name: str = "sl", **overrides: Any) -> dict[str, Any]:
    """Values of a `clusters` row for the Slurm testbed (best-effort in the CANCEL partition)."""
    return {"name": name, "api_url": testbed_url(), "batch": "slurm", "api_auth_type": "jwt",
            "resource_unit": "core", "api_chunk_size": 100, "api_limit": 100, "enabled": True,
            "jwt_key_file": str(jwt_key_file()), "besteffort_partition": "bestcancel",
            "besteffort_mode": "cancel"} | overrides


def jobs(user: str = "alice") -> list[dict[str, Any]]:
    """Every job slurmctld knows of (all users), as the REST API lists them."""
    r = requests.get(api("jobs"), headers=headers(user), timeout=60)
    r.raise_for_status()
    return list(r.json().get("jobs") or [])


def active_jobs(name_prefix: str = "") -> list[dict[str, Any]]:
    return [j for j in jobs() if j["job_state"] in ("PENDING", "RUNNING", "CONFIGURING", "COMPLETING", "SUSPENDED")
            and str(j.get("name") or "").startswith(name_prefix)]


def submit(user: str, script: str, **job: Any) -> int:
    """Submit a job directly through slurmrestd (not through CiGri); returns its id."""
    desc = {"environment": {"PATH": "/usr/local/bin:/usr/bin:/bin"}, "current_working_directory": "/tmp"} | job
    r = requests.post(api("job/submit"), json={"script": script, "job": desc}, headers=headers(user), timeout=60)
    assert r.status_code == 200, r.text
    return int(r.json()["job_id"])


def cancel(job_id: int | str, user: str) -> None:
    requests.delete(api(f"job/{job_id}"), headers=headers(user), timeout=60)


def cancel_all(name_prefix: str = "") -> None:
    """Cancel the active jobs (of every user) whose name starts with `name_prefix`; wait until none is left."""
    for _ in range(300):
        left = active_jobs(name_prefix)
        if not left:
            return
        for j in left:
            cancel(j["job_id"], str(j["user_name"]))
        time.sleep(0.5)
    raise RuntimeError(f"Slurm jobs {[j['job_id'] for j in active_jobs(name_prefix)]} still active")


def rest_pid() -> int | None:
    try:
        return int((RUND / "slurmrestd.pid").read_text().strip())
    except (OSError, ValueError):
        return None


def rest_stop(deadline: float = 60) -> None:
    """Stop slurmrestd only (the cluster keeps running): its port then refuses connections. Root only."""
    pid = rest_pid()
    if pid is not None:
        try:
            os.kill(pid, 2)
        except ProcessLookupError:
            pass
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        if not api_answers(timeout=2):
            return
        time.sleep(0.2)
    raise RuntimeError("slurmrestd still answers after SIGINT")


def rest_start() -> None:
    """Bring the testbed back (`slurm-testbed up` restarts what is missing). Root only."""
    subprocess.run([str(TOOL), "up"], check=True, capture_output=True, text=True, timeout=300)


# imported into test modules: keep pytest from collecting these as tests
testbed_url.__test__ = False  # type: ignore[attr-defined]
testbed_env.__test__ = False  # type: ignore[attr-defined]
testbed_available.__test__ = False  # type: ignore[attr-defined]
