"""The README's first commands, exactly as written, as an ordinary (non-root) user, in a
fresh clone and a fresh virtual environment, from the clone's root: the daemons must not
be shadowed by the source folder `./cigri` in the current directory."""

from __future__ import annotations

import os
import pwd
import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
USER = "cigri-readme"  # created by tools/test (an ordinary account with a home directory)

pytestmark = pytest.mark.slow


def quickstart_block() -> str:
    text = (ROOT / "README.md").read_text()
    m = re.search(r"<!-- quickstart:[^>]*-->\n```sh\n(.*?)```", text, re.S)
    assert m, "README.md has no quick-start block"
    return m.group(1)


def as_user(cmd: str, cwd: Path, timeout: float) -> subprocess.CompletedProcess[str]:
    """A login-like environment of USER: no variable of ours leaks in (no venv, no PYTHONPATH)."""
    pw = pwd.getpwnam(USER)
    env = {"HOME": pw.pw_dir, "USER": USER, "LOGNAME": USER, "PATH": "/usr/local/bin:/usr/bin:/bin",
           "LANG": "C.UTF-8", "SHELL": "/bin/bash"}
    runuser = shutil.which("runuser") or "/usr/sbin/runuser"
    return subprocess.run([runuser, "-u", USER, "--", "bash", "-euo", "pipefail", "-c", cmd], cwd=cwd,
                          env=env, capture_output=True, text=True, timeout=timeout, check=False)


def test_readme_quickstart_as_an_ordinary_user_from_the_clone_root(tmp_path: Path):
    if os.geteuid() != 0:
        pytest.skip("needs root to act as an ordinary user (tools/test runs it as root)")
    try:
        pw = pwd.getpwnam(USER)
    except KeyError:
        pytest.fail(f"user {USER} missing: tools/test creates it")
    home = Path(pw.pw_dir)
    clone = home / "cigri"
    shutil.rmtree(clone, ignore_errors=True)
    for leftover in ("cigri-venv", ".local/share/cigri"):  # a fresh environment, every time
        shutil.rmtree(home / leftover, ignore_errors=True)
    files = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout
    for rel in filter(None, files.decode().split("\0")):
        src = ROOT / rel
        if src.is_file():
            dst = clone / rel
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dst)
    subprocess.run(["chown", "-R", f"{pw.pw_uid}:{pw.pw_gid}", str(clone)], check=True)
    r = as_user(quickstart_block(), clone, timeout=900)
    out = r.stdout + r.stderr
    assert r.returncode == 0, out
    assert "Campaign 1 terminated: 20/20 tasks done." in out, out
    assert "Traceback" not in out and "stopped unexpectedly" not in out, out
