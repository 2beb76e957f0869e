"""Real container engines: the busybox image of conf/examples/make-container-image, built
offline for user alice, and the engines found on this machine.

ch-run (charliecloud) and bwrap are real parts (tests/parts.py): missing on a developer's
machine, their tests are skipped with the reason; under CI=true or CIGRI_CONTAINERS=1 (tools/test
installs them) they fail. Podman runs rootless as alice where the machine allows it (with a
private configuration if its defaults do not work here), else its tests are skipped with
podman's own error as the reason."""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from cigri import containers
from tests.parts import Part

ROOT = Path(__file__).resolve().parent.parent.parent
MAKE_IMAGE = ROOT / "conf" / "examples" / "make-container-image"
USER = "alice"
REQUIRED = ("charliecloud", "bwrap")
PACKAGES = {"charliecloud": "charliecloud-runtime", "bwrap": "bubblewrap", "podman": "podman"}
#: what the tests' program inside the image records (run.sh: NAME X -> result_NAME.txt).
PROBE = """#!/bin/sh
# probe OUT STATUS ARGS...: write what the task sees to OUT, then exit with STATUS
out=$1; status=$2; shift 2
{ . /etc/os-release; echo "os=$ID"; echo "pwd=$(pwd)"; echo "uid=$(id -u)"; echo "greeting=$GREETING"
  echo "campaign=$CIGRI_CAMPAIGN_ID"; echo "oar=$OAR_JOB_ID"; echo "slurm=$SLURM_JOB_ID"; echo "job=$CIGRI_JOB_ID"
  echo "leaked=${LEAKED:-none}"; echo "data=$(cat /data/factor)"; echo "home=$HOME"; echo "user=$USER"; n=0
  for a in "$@"; do n=$((n+1)); echo "arg$n=<$a>"; done; } > "$out"
echo "probe stdout $status"
echo "probe stderr $status" >&2
exit "$status"
"""
#: used when podman's defaults do not work here: crun refuses hybrid cgroups (this machine),
#: no systemd as PID 1, no journald
PODMAN_ENGINE_CONF = '[engine]\nruntime = "runc"\ncgroup_manager = "cgroupfs"\nevents_logger = "file"\n'


def _installed(binary: str) -> Callable[[], str | None]:
    return lambda: None if shutil.which(binary) else f"{binary} is not installed"


#: the engines the tests need (CI fails without them)
PARTS = {e: Part(containers.BINARIES[e], "CIGRI_CONTAINERS", _installed(containers.BINARIES[e]),
                 hint=f"apt-get install {PACKAGES[e]}; tools/test installs it") for e in REQUIRED}


def require(engine: str) -> None:
    """Skip (or, for a required engine in CI, fail) when an engine's program is missing."""
    if engine in PARTS:
        PARTS[engine].require()
    elif not shutil.which(containers.BINARIES[engine]):
        pytest.skip(f"{containers.BINARIES[engine]} is not installed (apt-get install {PACKAGES[engine]})")


@dataclass
class Node:
    """A directory of `user`'s with the demo image, where tasks run as `user`."""

    root: Path
    user: str = USER
    env: dict[str, str] = field(default_factory=dict)

    @property
    def uid(self) -> int:
        return pwd.getpwnam(self.user).pw_uid

    @property
    def gid(self) -> int:
        return pwd.getpwnam(self.user).pw_gid

    @property
    def home(self) -> str:
        return pwd.getpwnam(self.user).pw_dir

    @property
    def image(self) -> Path:
        return self.root / "image"

    @property
    def runs(self) -> Path:
        return self.root / "runs"

    def run(self, command: str, env: dict[str, str] | None = None, cwd: Path | None = None,
            timeout: float = 120) -> subprocess.CompletedProcess[str]:
        """`command` through bash as the user, in a clean login-like environment (as a batch system)."""
        return self.exec(["bash", "-c", command], env, cwd, timeout)

    def exec(self, argv: list[str], env: dict[str, str] | None = None, cwd: Path | None = None,
             timeout: float = 120) -> subprocess.CompletedProcess[str]:
        pw = pwd.getpwnam(self.user)
        e = {"HOME": pw.pw_dir, "USER": self.user, "LOGNAME": self.user,
             "PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LANG": "C.UTF-8"} | self.env | (env or {})
        argv = ["setpriv", f"--reuid={pw.pw_uid}", f"--regid={pw.pw_gid}", "--init-groups", "--", *argv]
        return subprocess.run(argv, env=e, cwd=cwd or self.runs, capture_output=True, text=True, timeout=timeout)

    def chown(self, path: Path) -> None:
        shutil.chown(path, self.user, self.user)


def make_node(root: Path, user: str) -> Node:
    """The demo image, built (offline, as `user`) by make-container-image, plus the probe."""
    n = Node(root, user)
    n.chown(root)
    r = n.run(f"sh {MAKE_IMAGE} {root}", cwd=root)
    assert r.returncode == 0, r.stderr
    probe = n.image / "opt" / "test" / "probe.sh"
    probe.parent.mkdir(parents=True)
    probe.write_text(PROBE)
    probe.chmod(0o755)
    return n


@pytest.fixture(scope="session")
def node() -> Iterator[Node]:
    """alice's node: tasks run unprivileged (rootless engines, user namespaces)."""
    home = Path(pwd.getpwnam(USER).pw_dir)
    root = Path(tempfile.mkdtemp(prefix="cigri-ctr-", dir=home))
    n = make_node(root, USER)
    yield n
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def root_node() -> Iterator[Node]:
    """root's node: `cigri local run` as the test runs it (tasks run as the user running CiGri)."""
    n = make_node(Path(tempfile.mkdtemp(prefix="cigri-ctr-root-")), "root")
    yield n
    shutil.rmtree(n.root, ignore_errors=True)


@pytest.fixture(scope="session")
def podman_env(node: Node) -> Iterator[dict[str, str]]:
    """The environment in which rootless podman works here, or a skip saying why it does not.
    Its configuration, storage and runtime files are the session's (XDG directories: nothing
    is left in alice's home); the pause process podman leaves behind is stopped at the end."""
    require("podman")
    xdg = {v: node.root / "xdg" / v.lower() for v in ("XDG_CONFIG_HOME", "XDG_DATA_HOME")}
    for d in xdg.values():
        d.mkdir(parents=True, mode=0o700)
        node.chown(d)
        node.chown(d.parent)
    # a short path: conmon's sockets live there (a path over 108 bytes costs 20 s per container)
    xdg["XDG_RUNTIME_DIR"] = Path(tempfile.mkdtemp(prefix="cigri-pd-"))
    node.chown(xdg["XDG_RUNTIME_DIR"])
    env = {k: str(v) for k, v in xdg.items()}
    conf = xdg["XDG_CONFIG_HOME"] / "containers"
    conf.mkdir()
    node.chown(conf)
    # rootless podman would default to vfs (a copy of the image per container)
    (conf / "storage.conf").write_text('[storage]\ndriver = "overlay"\n')
    probe = f"podman --log-level=error run --rm --init --network=none --rootfs {node.image}:O /bin/true"
    try:
        r = node.run(probe, env)
        if r.returncode or r.stderr:  # its defaults do not work here: the private engine configuration
            (conf / "containers.conf").write_text(PODMAN_ENGINE_CONF)
            r2 = node.run(probe, env)
            if r2.returncode or r2.stderr:
                pytest.skip("rootless podman does not work on this machine: "
                            + (r2.stderr or r.stderr).strip()[-300:])
        yield env
    finally:
        pause = xdg["XDG_RUNTIME_DIR"] / "libpod" / "tmp" / "pause.pid"
        if pause.exists():
            with contextlib.suppress(ValueError, ProcessLookupError):
                os.kill(int(pause.read_text().strip()), signal.SIGKILL)
        shutil.rmtree(xdg["XDG_RUNTIME_DIR"], ignore_errors=True)
