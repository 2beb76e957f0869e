"""Admission rules (spec §5.1): Python snippets stored in `admission_rules.code`, run in
ascending id order at every campaign submission.

A rule sees `jdl` (the expanded JDL, a mutable dict: the final value is stored),
`user` (grid login), `params` (a read-only, lazy view of the parameter lines) and
`reject(msg)`. Rules run in a separate worker process with a timeout, an address-space
and a CPU limit and no database handle, so a buggy or hostile rule can neither crash
nor hang the API nor touch the submission transaction. See docs/admission-rules.md.

This module doubles as the worker (`python -m cigri.admission`): keep its imports light.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

RULE_TIMEOUT = 10.0  # seconds for all rules of one submission
RULE_MEMORY = 512 * 1024 * 1024  # bytes of address space of the worker
DISABLED_MARK = "# CIGRI-DISABLED"  # same as cigri.db.admission_rules (this module stays import-light)

SEED_RULE_1 = '''# Title : Filtering users for normal mode on clusters
# Description : rejects campaigns asking for non best-effort (normal) jobs on a
# cluster where the user is not listed in /etc/cigri/user_lists
# ("normal_authorized": {"<cluster>": ["user", ...]}).
import json, os
path = "/etc/cigri/user_lists"
lists = json.load(open(path)) if os.path.exists(path) else {"normal_authorized": {}}
for name, cluster in jdl["clusters"].items():
    if cluster.get("type") not in ("best-effort", "besteffort"):
        if user not in lists.get("normal_authorized", {}).get(name, []):
            reject("You are not authorized to launch non best-effort jobs on cluster %s!" % name)
'''


# ------------------------------------------------------------------ server side
def load_rules(conn: Any) -> list[tuple[int, str]]:
    """Active rules (id, code) in the order they run."""
    from cigri.db.admission_rules import active_rules

    return active_rules(conn)


def run_rules(rules: list[tuple[int, str]], jdl: dict[str, Any], user: str,
              params_source: dict[str, Any], timeout: float = RULE_TIMEOUT,
              memory: int = RULE_MEMORY) -> dict[str, Any]:
    """Run the rules in a worker process; returns the (possibly modified) JDL.

    `params_source` is {"params": [...]}, {"nb_jobs": n} or {"param_file": path}.
    Raises AdmissionRuleError on rejection, failure, timeout or crash."""
    from cigri.errors import AdmissionRuleError

    if not rules:
        return jdl
    payload = json.dumps({"rules": rules, "jdl": jdl, "user": user, "params": params_source,
                          "memory": memory, "cpu": int(timeout) + 1})
    env = {k: v for k, v in os.environ.items() if k in ("PATH", "LANG", "LC_ALL", "HOME", "PYTHONPATH")}
    # The worker gets exactly our import path (this module, and whatever a rule may import
    # from our site-packages) and skips site.py: it starts in half the time.
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = os.pathsep.join([here] + [p for p in sys.path if p and p != here])
    # Own session: a rule that forks cannot leave processes behind after a timeout.
    proc = subprocess.Popen([sys.executable, "-S", "-m", "cigri.admission"], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, start_new_session=True)
    try:
        stdout, stderr = proc.communicate(payload.encode(), timeout=timeout)
    except subprocess.TimeoutExpired:
        _kill_group(proc.pid)
        stdout, stderr = proc.communicate()
        running = _last_rule(stderr or b"")
        who = f"rule {running}" if running else "admission rules"
        raise AdmissionRuleError(f"{who} failed: timed out after {timeout:g} s") from None
    finally:
        _kill_group(proc.pid)
    try:
        answer = json.loads(stdout.decode(errors="replace") or "null")
    except ValueError:
        answer = None
    if not isinstance(answer, dict):
        running = _last_rule(stderr)
        who = f"rule {running}" if running else "admission rules"
        how = f"killed by signal {-proc.returncode}" if proc.returncode < 0 else f"exit status {proc.returncode}"
        raise AdmissionRuleError(f"{who} failed: the rule worker died ({how})")
    if "error" in answer:
        raise AdmissionRuleError(f"rule {answer['error']['rule']} failed: {answer['error']['message']}")
    new = answer.get("jdl")
    if not isinstance(new, dict):
        raise AdmissionRuleError("admission rules failed: jdl is no longer an object")
    return new


def _kill_group(pid: int) -> None:
    import signal
    try:
        os.killpg(pid, signal.SIGKILL)
    except OSError:
        pass


def _last_rule(stderr: bytes) -> str | None:
    for line in reversed(stderr.decode(errors="replace").splitlines()):
        if line.startswith("RULE "):
            return line.split()[1]
    return None


def translate_ruby_rule(code: str) -> tuple[str, bool]:
    """For `cigri-db upgrade`: (new code, translated?). The known CiGri3 seed rule becomes
    its Python version; any other non-Python rule is disabled (kept as comments)."""
    if code.startswith(DISABLED_MARK):
        return code, True
    if "user_lists" in code and "normal_authorized" in code and not _is_python(code):
        return SEED_RULE_1, True
    if _is_python(code):
        return code, True
    commented = "\n".join("# " + line for line in code.splitlines())
    return (f"{DISABLED_MARK}: CiGri3 Ruby rule disabled by cigri-db upgrade; rewrite it in Python "
            f"(docs/admission-rules.md)\n{commented}\n"), False


def is_seed_rule(code: str) -> bool:
    """CiGri3's seeded rule 1 (its Ruby form) or its Python translation."""
    return code == SEED_RULE_1 or ("user_lists" in code and "normal_authorized" in code and not _is_python(code))


def _is_python(code: str) -> bool:
    try:
        compile(code, "<rule>", "exec")
    except (SyntaxError, ValueError):
        return False
    return True


# ------------------------------------------------------------------ worker side
class RuleRejected(Exception):
    pass


class ParamsView:
    """Read-only lazy view of a campaign's parameter lines (never materialised)."""

    def __init__(self, source: dict[str, Any]) -> None:
        self._src = source
        self._len: int | None = None

    def __iter__(self) -> Iterator[str]:
        if "params" in self._src:
            yield from (str(p).strip() for p in self._src["params"])
        elif "nb_jobs" in self._src:
            yield from map(str, range(int(self._src["nb_jobs"])))
        elif "param_file" in self._src:
            with open(self._src["param_file"], encoding="utf-8", errors="replace") as f:
                for line in f:
                    yield line.strip()

    def __len__(self) -> int:
        if self._len is None:
            if "params" in self._src:
                self._len = len(self._src["params"])
            elif "nb_jobs" in self._src:
                self._len = int(self._src["nb_jobs"])
            else:
                self._len = sum(1 for _ in self)
        return self._len

    def head(self, n: int = 10) -> list[str]:
        out: list[str] = []
        for p in self:
            if len(out) >= n:
                break
            out.append(p)
        return out

    def __getitem__(self, i: int) -> str:
        if i < 0:
            i += len(self)
        for k, p in enumerate(self):
            if k == i:
                return p
        raise IndexError(i)

    def __repr__(self) -> str:
        return f"<params: {len(self)} lines>"


def _worker() -> None:
    import resource

    req = json.loads(sys.stdin.read())
    try:
        resource.setrlimit(resource.RLIMIT_AS, (req["memory"], req["memory"]))
        resource.setrlimit(resource.RLIMIT_CPU, (req["cpu"], req["cpu"] + 1))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    except (ValueError, OSError):
        pass
    jdl = req["jdl"]
    params = ParamsView(req["params"])

    def reject(msg: str = "rejected") -> None:
        raise RuleRejected(str(msg))

    answer: dict[str, Any]
    for rid, code in req["rules"]:
        print(f"RULE {rid}", file=sys.stderr, flush=True)
        scope = {"jdl": jdl, "user": req["user"], "params": params, "reject": reject,
                 "__name__": f"admission_rule_{rid}"}
        try:
            exec(compile(code, f"<admission rule {rid}>", "exec"), scope)  # noqa: S102 - admin-written rule
            jdl = scope.get("jdl", jdl)
        except RuleRejected as e:
            answer = {"error": {"rule": rid, "message": str(e)}}
            break
        except MemoryError:
            answer = {"error": {"rule": rid, "message": "out of memory (MemoryError)"}}
            break
        except BaseException as e:  # noqa: BLE001 - any failure of a rule is a rejection, reported
            answer = {"error": {"rule": rid, "message": f"{type(e).__name__}: {e}"}}
            break
    else:
        answer = {"jdl": jdl}
    try:
        out = json.dumps(answer)
    except (TypeError, ValueError) as e:
        out = json.dumps({"error": {"rule": rid, "message": f"jdl is not JSON-serialisable ({e})"}})
    sys.stdout.write(out)
    sys.stdout.flush()


if __name__ == "__main__":
    _worker()
