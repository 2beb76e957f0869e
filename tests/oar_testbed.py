"""Helpers for tests that talk to the real OAR 2.5.9 testbed (`tools/oar-testbed/oar-testbed up`).

The testbed runs 3 independent OAR clusters on loopback: c1 (32 cores), c2 and c3
(8 cores each), users `alice` and `bob`, API identity taken from the X_REMOTE_IDENT
header. Usage::

    from tests.oar_testbed import requires_oar, register_testbed_clusters, set_stress

    pytestmark = [pytest.mark.oar, requires_oar]

    def test_x(pg_engine):
        ids = register_testbed_clusters(pg_engine)          # {"c1": 1, "c2": 2, "c3": 3}
        set_stress("c2", 0.9)                                 # c2 now reports GLOBAL_STRESS 0.9

Rules for sharing the testbed (several test sessions may run on it at once):
- always reset what you change (`set_stress(name, 0)`, `api_start(name)`) in a `finally`;
- `api_stop` makes the cluster unreachable for everybody: keep that window short;
- never assert timings; OAR jobs take 3-10 s (more under load): poll with deadlines >= 120 s.
"""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.parts import Part, requires_part
from tests.testbed_common import read_env_file, wait_for  # noqa: F401 - wait_for re-exported for the OAR tests

RIG_ETC = Path("/etc/oar-rig")
RIG_RUN = Path("/run/oar-rig")
RIG_ENV = RIG_ETC / "rig.env"
DEFAULT_NAMES = ("c1", "c2", "c3")


def _rig_env() -> dict[str, str]:
    """rig.env as a dict, overridden by the RIG_API_cN variables of the environment."""
    values = read_env_file(RIG_ENV)
    for k, v in os.environ.items():
        if k.startswith("RIG_API_"):
            values[k] = v
    return values


def _cluster_index(name: str) -> int:
    if not name.startswith("c") or not name[1:].isdigit():
        raise ValueError(f"testbed cluster names are c1, c2, c3...: got {name!r}")
    return int(name[1:])


def testbed_api(name: str = "c1") -> str:
    """API base URL of a testbed cluster, with a trailing slash (http://127.0.0.1:6668/oarapi/)."""
    url = _rig_env().get(f"RIG_API_{name}")
    if not url:
        url = f"http://127.0.0.1:{6668 + 10 * (_cluster_index(name) - 1)}/oarapi/"
    return url if url.endswith("/") else url + "/"


def api_answers(name: str = "c1", timeout: float = 5.0) -> bool:
    try:
        r = requests.get(testbed_api(name) + "version.json", timeout=timeout)
        return r.status_code == 200
    except requests.RequestException:
        return False


def _probe_testbed() -> str | None:
    if os.environ.get("CIGRI_OAR_TESTBED") != "1" and not RIG_ENV.exists():
        return f"not set up (no {RIG_ENV}; sudo tools/oar-testbed/oar-testbed up)"
    for name in DEFAULT_NAMES:
        if not api_answers(name, timeout=10.0):
            return f"the API of {name} ({testbed_api(name)}) does not answer"
    return None


OAR_TESTBED = Part("OAR testbed", "CIGRI_OAR_TESTBED", _probe_testbed,
                   hint="sudo tools/oar-testbed/oar-testbed up; tools/test starts it")


def testbed_available() -> bool:
    """True when the testbed answers (see tests/parts.py: prefer `requires_oar`, which fails in CI)."""
    return OAR_TESTBED.available()


#: tests needing the testbed: skipped on a developer machine without it, FAIL in CI (tests/parts.py)
requires_oar = requires_part(OAR_TESTBED)
oar = pytest.mark.oar


def cluster_row(name: str, **overrides: Any) -> dict[str, Any]:
    """Values of a `clusters` row for a testbed cluster (as `newcluster` would create it)."""
    return {"name": name, "api_url": testbed_api(name), "batch": "oar2_5", "api_auth_type": "none",
            "api_auth_header": "X_REMOTE_IDENT", "resource_unit": "core", "api_chunk_size": 100,
            "api_limit": 100, "properties": f"cluster='{name}'", "enabled": True} | overrides


def register_testbed_clusters(engine: Any, names: tuple[str, ...] | list[str] = DEFAULT_NAMES,
                              **overrides: Any) -> dict[str, int]:
    """Insert one `clusters` row per testbed cluster; returns {name: cluster id}."""
    from cigri.db.schema import clusters

    ids: dict[str, int] = {}
    with engine.begin() as c:
        for name in names:
            row = cluster_row(name, **overrides)
            ids[name] = int(c.execute(clusters.insert().values(**row).returning(clusters.c.id)).scalar_one())
    return ids


def stress_file(name: str) -> Path:
    return RIG_ETC / name / "stress"


def set_stress(name: str, value: float | str) -> None:
    """Make cluster `name` report GLOBAL_STRESS=value (0 = normal). Reset it after the test."""
    path = stress_file(name)
    tmp = path.with_name(f".stress.{os.getpid()}")
    tmp.write_text(f"{value}\n")
    os.chmod(tmp, 0o666)
    os.replace(tmp, path)


def _ns_prefix(name: str) -> list[str]:
    i = _cluster_index(name)
    return [] if i == 1 else ["nsenter", f"--mount={RIG_RUN}/ns/{name}", "--"]


def oar_cli(name: str, *args: str, user: str | None = None, check: bool = False,
            timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """Run an OAR command (oarstat, oarsub, oardel, oarnodes...) against cluster `name`,
    as `user` if given (needs root), e.g. oar_cli("c2", "oarstat", "-J", "-j", "12")."""
    cmd = _ns_prefix(name)
    if user:
        cmd += ["runuser", "-u", user, "--"]
    cmd += list(args)
    return subprocess.run(cmd, capture_output=True, text=True, check=check, timeout=timeout)


def _apache(name: str, action: str) -> subprocess.CompletedProcess[str]:
    conf = RIG_ETC / name / "apache.conf"
    return subprocess.run(_ns_prefix(name) + ["/usr/sbin/apache2", "-f", str(conf), "-k", action],
                          capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)


def api_stop(name: str, deadline: float = 60) -> None:
    """Stop only the API (Apache) of cluster `name`: connections are then refused. Needs root."""
    _apache(name, "stop")
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        if not api_answers(name, timeout=2):
            return
        time.sleep(0.2)
    raise RuntimeError(f"API of {name} still answers after stop")


def api_start(name: str, deadline: float = 120) -> None:
    """Start the API of cluster `name` again and wait until it answers. Needs root."""
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        if api_answers(name, timeout=5):
            return
        pid = RIG_RUN / f"{name}-apache.pid"
        if not pid.exists():
            _apache(name, "start")
        else:
            try:
                os.kill(int(pid.read_text().strip()), 0)
            except (OSError, ValueError):
                pid.unlink(missing_ok=True)
                _apache(name, "start")
        time.sleep(0.3)
    raise RuntimeError(f"API of {name} does not answer after start")


# these helpers are imported into test modules: keep pytest from collecting them as tests
testbed_api.__test__ = False  # type: ignore[attr-defined]
testbed_available.__test__ = False  # type: ignore[attr-defined]
