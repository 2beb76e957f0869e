"""Admission rules: Python snippets stored in `admission_rules.code`, run in
ascending id order at every campaign submission.

A rule sees `jdl` (the expanded JDL, a mutable dict: the final value is stored),
`user` (grid login), `params` (a read-only, lazy view of the parameter lines) and
`reject(msg)`. Rules run in a separate worker process, never as root, in their own PID
namespace, with a timeout, address-space, CPU and output limits and no database handle,
so a buggy or hostile rule can neither crash, hang nor signal the API, nor leave processes
behind, nor touch the submission transaction. See docs/admission-rules.md.

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


OUTPUT_LIMIT = 16 * 1024 * 1024  # bytes a worker may write (its answer is the JDL; prints go to stderr)
RULE_MARK = b"\x1eCIGRI RULE "  # the worker's stderr line announcing the rule it starts
TOKEN_VAR = "CIGRI_RULES_RUN"


def run_rules(rules: list[tuple[int, str]], jdl: dict[str, Any], user: str,
              params_source: dict[str, Any], timeout: float = RULE_TIMEOUT,
              memory: int = RULE_MEMORY, rules_user: str | None = None,
              output_limit: int = OUTPUT_LIMIT) -> dict[str, Any]:
    """Run the rules in a sandboxed worker process; returns the (possibly modified) JDL.

    `params_source` is {"params": [...]}, {"nb_jobs": n} or {"param_file": path} (opened
    here and handed over as an open file: the worker's user need not be able to read it).
    `rules_user` (default: ADMISSION_RULES_USER) is who the rules run as when the caller is
    root. Raises AdmissionRuleError on rejection, failure, timeout, crash or excess output,
    with a message naming the rule."""
    from cigri.errors import AdmissionRuleError

    if not rules:
        return jdl
    if rules_user is None:
        from cigri.config import get_conf

        rules_user = str(get_conf().get("ADMISSION_RULES_USER") or "")
    prefix = _sandbox_prefix(rules_user)
    token = os.urandom(8).hex()
    param_fd = None
    source = dict(params_source)
    if "param_file" in source:
        try:
            param_fd = os.open(source.pop("param_file"), os.O_RDONLY | os.O_CLOEXEC)
        except OSError as e:
            raise AdmissionRuleError(f"admission rules failed: cannot read the parameter file ({e.strerror})") from None
        source["param_fd"] = param_fd
    payload = json.dumps({"rules": rules, "jdl": jdl, "user": user, "params": source,
                          "memory": memory, "cpu": int(timeout) + 1}).encode()
    # `-I`: no PYTHON* variables, no user site-packages, and neither the working directory
    # nor the script's directory on the import path; cwd=/ anyway.
    env = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", TOKEN_VAR: token}
    try:
        proc = subprocess.Popen(prefix + [sys.executable, "-I", "-m", "cigri.admission"], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd="/", env=env,
                                start_new_session=True, pass_fds=(param_fd,) if param_fd is not None else ())
    except OSError as e:
        if param_fd is not None:
            os.close(param_fd)
        raise AdmissionRuleError(f"admission rules failed: cannot start the rule worker ({e})") from None
    try:
        stdout, running, trouble = _exchange(proc, payload, timeout, output_limit)
    finally:
        _kill_group(proc.pid)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            pass
        _kill_stragglers(token)
        if param_fd is not None:
            os.close(param_fd)
        for f in (proc.stdin, proc.stdout, proc.stderr):
            if f is not None:
                try:
                    f.close()
                except OSError:
                    pass
    who = f"rule {running}" if running else "admission rules"
    if trouble == "timeout":
        raise AdmissionRuleError(f"{who} failed: timed out after {timeout:g} s")
    if trouble == "output":
        raise AdmissionRuleError(f"{who} failed: it wrote more than {output_limit // 1024} KiB of output")
    try:
        answer = json.loads(stdout.decode(errors="replace") or "null")
    except ValueError:
        answer = None
    if not isinstance(answer, dict):
        rc = proc.returncode
        how = "still running" if rc is None else f"killed by signal {-rc}" if rc < 0 else f"exit status {rc}"
        raise AdmissionRuleError(f"{who} failed: the rule worker died ({how})")
    if "error" in answer:
        raise AdmissionRuleError(f"rule {answer['error']['rule']} failed: {answer['error']['message']}")
    new = answer.get("jdl")
    if not isinstance(new, dict):
        raise AdmissionRuleError("admission rules failed: jdl is no longer an object")
    return new


def _exchange(proc: subprocess.Popen[bytes], payload: bytes, timeout: float,
              limit: int) -> tuple[bytes, str | None, str | None]:
    """Feed the payload, read the answer with bounds: (stdout, id of the last rule started,
    None | 'timeout' | 'output'). Stops soon after the worker's exit, even if processes it
    left behind keep its pipes open."""
    import selectors
    import threading
    import time

    def feed() -> None:
        assert proc.stdin is not None
        try:
            proc.stdin.write(payload)
            proc.stdin.close()
        except OSError:
            pass  # the worker died: its exit status tells

    threading.Thread(target=feed, daemon=True).start()
    out = bytearray()
    err_total = 0
    partial = b""  # stderr is scanned line by line for the worker's "RULE <id>" marks, never kept
    last_rule: str | None = None
    assert proc.stdout is not None and proc.stderr is not None
    sel = selectors.DefaultSelector()
    for f in (proc.stdout, proc.stderr):
        os.set_blocking(f.fileno(), False)
        sel.register(f, selectors.EVENT_READ)
    deadline = time.monotonic() + timeout
    trouble: str | None = None
    exited_at: float | None = None
    try:
        while sel.get_map() and trouble is None:
            now = time.monotonic()
            if now > deadline:
                trouble = "timeout"
                break
            if exited_at is None and proc.poll() is not None:
                exited_at = now
            if exited_at is not None and now - exited_at > 1.0:
                break  # what is left is held by processes the worker left behind
            for key, _ in sel.select(min(0.2, max(deadline - now, 0.0))):
                try:
                    chunk = os.read(key.fd, 65536)
                except BlockingIOError:
                    continue
                if not chunk:
                    sel.unregister(key.fileobj)
                elif key.fileobj is proc.stdout:
                    out += chunk
                    if len(out) > limit:
                        trouble = "output"
                else:
                    err_total += len(chunk)
                    lines = (partial + chunk).split(b"\n")
                    partial = lines.pop()[-64:]
                    for line in lines:
                        if line.startswith(RULE_MARK):
                            last_rule = line[len(RULE_MARK):].decode(errors="replace").strip()
                    if err_total > limit:
                        trouble = "output"
    finally:
        sel.close()
    return bytes(out), last_rule, trouble


def _sandbox_prefix(rules_user: str) -> list[str]:
    """The command that puts the worker in its own PID namespace (it can neither see nor
    signal anything outside, and when it ends the kernel kills whatever it left behind)
    and, when we are root, under `rules_user`: rules never run as root."""
    from cigri.errors import AdmissionRuleError

    root = os.geteuid() == 0
    drop: list[str] = []
    if root:
        import pwd

        if not rules_user:
            raise AdmissionRuleError("admission rules cannot run: they never run as root, and ADMISSION_RULES_USER "
                                     "is empty (docs/admission-rules.md)")
        try:
            pw = pwd.getpwnam(rules_user)
        except KeyError:
            raise AdmissionRuleError(
                f"admission rules cannot run: the system user {rules_user} (ADMISSION_RULES_USER) does not exist; "
                f"create it with: useradd --system --no-create-home --shell /usr/sbin/nologin {rules_user}") from None
        if pw.pw_uid == 0:
            raise AdmissionRuleError(f"admission rules cannot run: ADMISSION_RULES_USER {rules_user} is root")
        drop = ["setpriv", f"--reuid={pw.pw_uid}", f"--regid={pw.pw_gid}", "--clear-groups", "--"]
    return _namespace_prefix(root) + drop


_ns_checked: dict[bool, list[str]] = {}


def _namespace_prefix(root: bool) -> list[str]:
    """`unshare` for a new PID namespace (with a user namespace when not root), if this
    machine allows it; checked once per process."""
    if root not in _ns_checked:
        import logging
        import shutil

        cmd = ["unshare"] + ([] if root else ["--user"]) + ["--pid", "--fork", "--kill-child", "--mount-proc", "--"]
        ok = False
        if shutil.which("unshare"):
            try:
                ok = subprocess.run(cmd + ["true"], capture_output=True, timeout=30, cwd="/").returncode == 0
            except (OSError, subprocess.SubprocessError):
                ok = False
        if not ok:
            logging.getLogger("cigri.admission").warning(
                "admission rules run without their own PID namespace (unshare%s failed): processes a rule "
                "leaves behind are found by their environment, and a rule running as the API's own user "
                "could signal it (docs/admission-rules.md)", "" if root else " --user")
        _ns_checked[root] = cmd if ok else []
    return _ns_checked[root]


def _kill_group(pid: int) -> None:
    import signal
    try:
        os.killpg(pid, signal.SIGKILL)
    except OSError:
        pass


def _kill_stragglers(token: str) -> None:
    """Without a PID namespace: kill what a rule left behind in another session (setsid),
    recognised by the run's token in its environment."""
    import signal

    needle = f"{TOKEN_VAR}={token}".encode()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/environ", "rb") as f:
                env = f.read().split(b"\0")
        except OSError:
            continue
        if needle in env:
            try:
                os.kill(int(entry), signal.SIGKILL)
            except OSError:
                pass


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
        elif "param_fd" in self._src:  # the parameter file, opened by the API for us
            fd = int(self._src["param_fd"])
            os.lseek(fd, 0, os.SEEK_SET)
            with open(os.dup(fd), encoding="utf-8", errors="replace") as f:
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

    # The answer goes to the original stdout; anything a rule prints goes to stderr, which
    # the API reads with a bound and otherwise ignores.
    answer_fd = os.dup(1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
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
        sys.stderr.write(f"{RULE_MARK.decode()}{rid}\n")
        sys.stderr.flush()
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
    data = out.encode()
    while data:
        data = data[os.write(answer_fd, data):]


if __name__ == "__main__":
    _worker()
