"""A real part that is missing must FAIL the run in CI and be a visible skip elsewhere
(issue #11 item 12: an OAR testbed that did not answer made 18 tests skip in a green CI run)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CLOSED = "http://127.0.0.1:9/oarapi/"  # nothing listens on the discard port


def run_cases(**env: str) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if k != "CI" and not k.startswith(("CIGRI_", "RIG_API_"))}
    base |= {"RIG_API_c1": CLOSED, "RIG_API_c2": CLOSED, "RIG_API_c3": CLOSED,
             "CIGRI_TEST_PG": "postgresql+psycopg://cigri:cigri@127.0.0.1:9", "CIGRI_PART_PATIENCE": "0"}
    return subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", "-rs",
                           "tests/meta/parts_cases.py"], cwd=ROOT, env=base | env, capture_output=True,
                          text=True, timeout=600)


@pytest.mark.parametrize("env", [{"CIGRI_OAR_TESTBED": "1", "CIGRI_POSTGRES": "1"}, {"CI": "true"}],
                         ids=["part-variables", "CI=true"])
def test_missing_parts_fail_the_run_in_ci(env: dict[str, str]) -> None:
    out = run_cases(**env)
    text = out.stdout + out.stderr
    assert out.returncode == 1, text
    assert "3 errors" in text and "1 passed" in text, text
    assert "required part OAR testbed is missing" in text and f"API of c1 ({CLOSED}) does not answer" in text
    assert "required part PostgreSQL is missing" in text and "127.0.0.1:9" in text
    assert "skipped" not in text


def test_missing_parts_skip_visibly_on_a_developer_machine(tmp_path: Path) -> None:
    out = run_cases(CIGRI_OAR_TESTBED="1")  # OAR wanted, PostgreSQL not: only PostgreSQL may be skipped
    assert out.returncode == 1 and "required part OAR testbed is missing" in out.stdout, out.stdout
    assert "SKIPPED" in out.stdout and "PostgreSQL missing: cannot connect" in out.stdout, out.stdout
    assert "MISSING PART PostgreSQL" in out.stdout
