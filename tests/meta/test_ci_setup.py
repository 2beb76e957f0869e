"""CI's own setup on a bare machine (issue #11 item 13): a failed `apt-get update` is
retried then fatal with apt's words, pip's failures are shown and fatal, and every
package cigri[test] installs is pinned in constraints.txt."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def fake_apt(tmp_path: Path, update_script: str) -> tuple[dict[str, str], Path]:
    """A PATH where dpkg-query finds nothing installed, `id -u` says root and apt-get logs its calls."""
    bin_ = tmp_path / "bin"
    bin_.mkdir()
    calls = tmp_path / "calls"
    scripts = {
        "dpkg-query": "exit 1",
        "id": 'echo 0',
        "apt-get": f'echo "$*" >> {calls}\nif [ "$1" = update ]; then\n{update_script}\nfi\nexit 0',
    }
    for name, body in scripts.items():
        (bin_ / name).write_text(f"#!/bin/bash\n{body}\n")
        (bin_ / name).chmod(0o755)
    env = os.environ | {"PATH": f"{bin_}:{os.environ['PATH']}", "APT_ENSURE_RETRY_DELAY": "0"}
    return env, calls


def apt_ensure(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(ROOT / "tools/apt-ensure"), "python3-venv", "prosody"], env=env,
                          capture_output=True, text=True, timeout=60)


def test_apt_update_error_is_retried_then_fatal(tmp_path: Path) -> None:
    env, calls = fake_apt(tmp_path, 'echo "E: Failed to fetch http://deb.example/InRelease  Temporary failure '
                                    'resolving deb.example" >&2; exit 100')
    out = apt_ensure(env)
    assert out.returncode == 1
    assert "apt-get update failed 3 times" in out.stderr and "Temporary failure resolving" in out.stderr
    assert calls.read_text().split("\n").count("update -q") == 3
    assert "install" not in calls.read_text()


def test_apt_update_warning_with_exit_0_is_not_swallowed(tmp_path: Path) -> None:
    """apt-get update exits 0 when index files could not be downloaded: installing from stale lists then fails
    obscurely (or installs old versions)."""
    env, calls = fake_apt(tmp_path, 'echo "W: Failed to fetch http://deb.example/Packages  404 Not Found"; '
                                    'echo "W: Some index files failed to download. They have been ignored, or old '
                                    'ones used instead."; exit 0')
    out = apt_ensure(env)
    assert out.returncode == 1 and "Some index files failed to download" in out.stderr
    assert "install" not in calls.read_text()


def test_apt_install_after_a_transient_update_failure(tmp_path: Path) -> None:
    flag = tmp_path / "failed-once"
    env, calls = fake_apt(tmp_path, f'if [ ! -e {flag} ]; then touch {flag}; echo "E: temporary" >&2; exit 100; fi')
    out = apt_ensure(env)
    assert out.returncode == 0, out.stderr
    assert calls.read_text().splitlines()[-1] == "install -y -q --no-install-recommends python3-venv prosody"


def test_pip_failure_is_shown_and_fatal(tmp_path: Path) -> None:
    """tools/test used to pipe pip through `grep ... || true`: a failed install went on to run the tests."""
    work = tmp_path / "repo"
    work.mkdir()
    for name in ("setup.cfg", "pyproject.toml", "README.md", "cigri", "modules", "sql", "conf", "tools"):
        src = ROOT / name
        (shutil.copytree if src.is_dir() else shutil.copy)(src, work / name)
    (work / "constraints.txt").write_text("pytest==0.0.1\n")  # a version that cannot be installed
    out = subprocess.run([str(work / "tools/venv-setup")], cwd=work, capture_output=True, text=True, timeout=600,
                         env=os.environ | {"PYTHON": sys.executable})
    assert out.returncode == 1
    assert "ERROR: Cannot install" in out.stderr  # pip's own words reach the log
    assert "venv-setup: pip install -c constraints.txt" in out.stderr


def test_check_pins_names_unpinned_and_differing_packages(tmp_path: Path) -> None:
    frozen = subprocess.run([sys.executable, "-m", "pip", "freeze", "--all", "--exclude-editable",
                             "--disable-pip-version-check"], capture_output=True, text=True, check=True).stdout
    pins = [line for line in frozen.splitlines() if "==" in line]
    exact = tmp_path / "exact.txt"
    exact.write_text("\n".join(pins) + "\n")
    check = [sys.executable, str(ROOT / "tools/check-pins")]
    assert subprocess.run(check + [str(exact)], capture_output=True, text=True).returncode == 0
    names = {line.split("==")[0].lower(): line for line in pins}
    broken = tmp_path / "broken.txt"
    kept = [p for p in pins if p != names["starlette"] and p != names["sqlalchemy"]]
    broken.write_text("\n".join(kept + ["SQLAlchemy==1.0.0"]) + "\n")
    out = subprocess.run(check + [str(broken)], capture_output=True, text=True)
    assert out.returncode == 1
    assert f"starlette=={names['starlette'].split('==')[1]} is installed but not pinned" in out.stderr
    assert "sqlalchemy" in out.stderr and "pins 1.0.0" in out.stderr
    assert "tools/refresh-constraints" in out.stderr
