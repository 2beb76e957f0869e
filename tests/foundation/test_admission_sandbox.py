"""The admission-rule sandbox holds what docs/admission-rules.md promises (issue #10 item 6):
rules never run as root, cannot import a user's module from the working directory, cannot
kill the API, leave nothing running behind them (setsid() included), cannot flood the API
with output, and a stray print() is harmless. Each failure has its own clear message."""

from __future__ import annotations

import json
import os
import pwd
import random
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from cigri import admission
from cigri.errors import AdmissionRuleError
from tests.foundation.test_admission import sleepers
from tests.parts import Part, requires_part

RULES_USER = "cigri-rules"


def _probe_rules_user() -> str | None:
    if os.geteuid() != 0:
        return "rules run under another user only when the API is root: run the tests as root (tools/test)"
    try:
        pwd.getpwnam(RULES_USER)
    except KeyError:
        return f"no system user {RULES_USER} (tools/test creates it)"
    return None


SANDBOX_USER = Part("admission rules user", "CIGRI_RULES_USER", _probe_rules_user, patience=0,
                    hint="sudo tools/test creates cigri-rules")

JDL = {"name": "n", "clusters": {"dahu": {}}}


def run(code: str, **kw: Any) -> dict[str, Any]:
    return admission.run_rules([(5, code)], dict(JDL), "alice", {"nb_jobs": 3}, rules_user=RULES_USER, **kw)


def reason(code: str, **kw: Any) -> str:
    with pytest.raises(AdmissionRuleError) as e:
        run(code, **kw)
    return str(e.value)


@requires_part(SANDBOX_USER)
def test_rules_run_unprivileged_isolated_from_the_working_directory(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """As root, the API runs rules as cigri-rules, in /, with no user module on the import path."""
    monkeypatch.chdir(tmp_path)  # a user-writable working directory of the API
    marker = tmp_path / "imported"
    (tmp_path / "json.py").write_text(f"open({str(marker)!r}, 'w').write('owned')\nfrom json import *\n")
    os.chmod(tmp_path, 0o777)
    probe = ("import os, sys, json\n"
             "reject(json.dumps([os.getuid(), os.getgid(), os.getgroups(), os.getcwd(), sys.path[0],\n"
             "                   sys.flags.isolated]))")
    msg = reason(probe)
    uid, gid, groups, cwd, path0, isolated = json.loads(msg.split("failed: ", 1)[1])
    pw = pwd.getpwnam(RULES_USER)
    assert (uid, gid, groups, cwd, isolated) == (pw.pw_uid, pw.pw_gid, [], "/", 1)
    assert path0 not in ("", str(tmp_path))
    assert not marker.exists()
    assert "PermissionError" in reason("open('/etc/shadow').read()")


def test_root_never_runs_rules_as_root() -> None:
    if os.geteuid() != 0:
        pytest.skip("about the API running as root")
    with pytest.raises(AdmissionRuleError, match="the system user nobody-here-xyz .* does not exist; create it with: "
                                                 "useradd --system"):
        admission.run_rules([(5, "pass")], dict(JDL), "alice", {"nb_jobs": 1}, rules_user="nobody-here-xyz")
    with pytest.raises(AdmissionRuleError, match="never run as root, and ADMISSION_RULES_USER is empty"):
        admission.run_rules([(5, "pass")], dict(JDL), "alice", {"nb_jobs": 1}, rules_user="")


HARNESS = """
import json, sys
from cigri import admission
from cigri.errors import AdmissionRuleError
try:
    out = admission.run_rules([(5, sys.argv[1])], {"name": "n"}, "alice", {"nb_jobs": 1}, rules_user=sys.argv[2])
    print(json.dumps({"accepted": out}))
except AdmissionRuleError as e:
    print(json.dumps({"rejected": str(e)}))
"""


def in_api_process(code: str) -> subprocess.CompletedProcess[str]:
    """Run rules from a separate process standing for the API (a rule that kills its
    parent must not take the test session down if the sandbox fails)."""
    return subprocess.run([sys.executable, "-c", HARNESS, code, RULES_USER], capture_output=True, text=True,
                          timeout=120)


@pytest.mark.parametrize("attack", ["os.kill(os.getppid(), signal.SIGKILL)", "os.killpg(os.getpgid(os.getppid()), 9)",
                                    "os.kill(-1, signal.SIGKILL)"])
def test_a_rule_cannot_kill_the_api(attack: str) -> None:
    if os.geteuid() == 0:
        SANDBOX_USER.require()
    out = in_api_process(f"import os, signal\ntry:\n    {attack}\nexcept OSError:\n    pass\njdl['alive'] = 1\n")
    assert out.returncode == 0, (out.returncode, out.stderr[-2000:])
    answer = json.loads(out.stdout)
    assert "accepted" in answer or "rejected" in answer


def test_processes_a_rule_leaves_behind_are_killed_setsid_included() -> None:
    """A child that calls setsid() survived CiGri3's clean-up and blocked the submission for its lifetime."""
    if os.geteuid() == 0:
        SANDBOX_USER.require()
    marker = f"{random.randint(10**6, 10**7)}.25"
    rule = ("import os, subprocess\n"
            f"subprocess.Popen(['setsid', 'sleep', {marker!r}], stdout=1, stderr=2)\n"
            "if os.fork() == 0:\n"
            "    os.setsid()\n"
            f"    os.execvp('sleep', ['sleep', {marker!r}])\n"
            "jdl['done'] = True\n")
    out = run(rule, timeout=60)
    assert out["done"] is True  # the answer came at the worker's exit, not at the survivors'
    assert sleepers(marker) == []


def test_output_is_read_with_a_bound() -> None:
    """1 GiB on a rule's stdout took the API worker to 3.1 GB."""
    if os.geteuid() == 0:
        SANDBOX_USER.require()
    flood = "import os\nfor _ in range(64):\n    os.write({fd}, b'x' * 1024 * 1024)\n"
    for fd in (1, 2):  # print() and the real stdout both land on a bounded pipe
        msg = reason(flood.format(fd=fd), output_limit=4 * 1024 * 1024, timeout=60)
        assert msg == "rule 5 failed: it wrote more than 4096 KiB of output"


def test_a_stray_print_is_harmless() -> None:
    """A single print() in a rule rejected every submission."""
    if os.geteuid() == 0:
        SANDBOX_USER.require()
    out = run("print('checking', user)\nprint(jdl)\njdl['checked'] = True\n")
    assert out == JDL | {"checked": True}


@pytest.mark.parametrize(("code", "expected"), [
    ("while True: pass\n", "rule 5 failed: timed out after 3 s"),
    ("import os\nos._exit(4)\n", "rule 5 failed: the rule worker died (exit status 4)"),
    ("import ctypes\nctypes.string_at(0)\n", "rule 5 failed: the rule worker died (killed by signal 11)"),
    ("jdl['f'] = {1, 2}\n", "rule 5 failed: jdl is not JSON-serialisable"),
    ("reject('no ' + user)\n", "rule 5 failed: no alice"),
])
def test_each_failure_has_a_clear_message(code: str, expected: str) -> None:
    if os.geteuid() == 0:
        SANDBOX_USER.require()
    assert reason(code, timeout=3).startswith(expected)
