"""The `slurm` batch type: a Slurm cluster through its REST API, slurmrestd (OpenAPI
v0.0.38, Slurm 22.05). How CiGri's notions land on Slurm (the user's view: docs/slurm.md):

- A submission is always a Slurm job array, one array task per parameter line (a single job
  is an array of one task): its batch script (`task_script`) picks the line of its task by
  `$SLURM_ARRAY_TASK_ID` and evaluates `<command> <parameter line>` with bash, as OAR runs
  its commands, so task i runs exactly line i. Pending array tasks have no job id of their
  own in Slurm, so CiGri's remote id of task i of array A is `A * 10**7 + i`
  (`remote_id`, `slurm_job_id` -> "A_i"); Slurm's MaxArraySize is below 10**7.
- The array's `comment` carries the CiGri job ids it runs ("cigri:<instance>:1001-1050", the
  instance naming CiGri's database: job ids are unique in one only): after a crash
  between a submission and its recording, `find_submitted` finds the array again.
- slurmrestd serves no files. A task that fails writes the tail of its stderr (and the path
  of the file) into its own job comment with `scontrol update` before it exits; `stderr_tail`
  reads it back from the job record. The task's stdout/stderr files are opened by the task
  script in its working directory (`<name>.<A>_<i>.stdout|.stderr`), where `$HOME` is the
  user's own: Slurm neither expands variables nor knows homes at submission.
- Best-effort tasks go to the cluster's best-effort partition and/or QOS, normal ones to its
  normal partition. A preempted task is resubmitted by CiGri once per preemption in either
  preemption mode: CANCEL ends the job PREEMPTED; with REQUEUE Slurm queues the same job id
  again (`restart_cnt` grows), so the adapter cancels that copy and reports the task
  PREEMPTED only once Slurm's copy has ended: it never runs next to CiGri's resubmission.
  A copy that Slurm managed to run to its end meanwhile is reported as the end of the task.
- Identity: every call carries X-SLURM-USER-NAME and X-SLURM-USER-TOKEN. With the cluster's
  `jwt_key_file` CiGri signs short-lived HS256 tokens itself (claim `sun` = the cluster
  login); otherwise users register the token Slurm gave them with `gridtoken`, whose `sun`
  names the login. Tokens never appear in logs or messages.

`SLURM_STATES` is the translation table from Slurm's job states to CiGri's outcomes."""

from __future__ import annotations

import hashlib
import json
import logging
import re
import shlex
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import jwt
import requests

from cigri.clusters.base import (
    ClusterAdapter,
    ClusterAPIBadRequest,
    ClusterAPIError,
    ClusterAPIForbidden,
    ClusterAPINotFound,
    ClusterAPIPermissionDenied,
    ClusterAPIServerError,
    ClusterConfigError,
    ClusterInfo,
    ExitStatus,
    JobRequest,
    Outcome,
    RemoteJob,
    TokenNotFound,
)
from cigri.clusters.http import RestSession, _conf_get

log = logging.getLogger("cigri.clusters.slurm")

#: OpenAPI plugin versions of slurmrestd this adapter speaks
API_VERSIONS = ("v0.0.38",)
INDEX_BASE = 10_000_000  # remote id = array job id * INDEX_BASE + array index
MAX_ARRAY = 1000  # tasks per array: Slurm's default MaxArraySize is 1001
COMMENT_MAX = 1024  # Slurm refuses longer job comments
KEY_MAX = 300  # bytes of the job ids in the "cigri:<instance>:<job ids>" key; more: the submission is split
TOKEN_LIFESPAN = 900  # seconds a token CiGri signs is valid
MAX_SERVER_THREADS = 256  # slurmctld's limit of RPC threads (the stress factor's scale)
DEFAULT_PATH = "/usr/local/bin:/usr/bin:/bin"
ERR_INVALID_JOB_ID = 2017  # ESLURM_INVALID_JOB_ID: Slurm does not know (or no longer knows) the job
ERR_ACCESS_DENIED = 2002  # ESLURM_ACCESS_DENIED: another user's job
_KEY = re.compile(r"^cigri:([0-9a-f]+):([0-9,\-]*)$")
_UNESCAPE = re.compile(r"\\([$`])")

# ----------------------------------------------------------------------------- translation

#: Slurm job state -> CiGri outcome. COMPLETING is still running (its exit is not final);
#: the outcome of some states also depends on the record (see `slurm_outcome`).
SLURM_STATES: dict[str, Outcome] = {
    "PENDING": Outcome.WAITING,
    "CONFIGURING": Outcome.RUNNING,
    "RUNNING": Outcome.RUNNING,
    "COMPLETING": Outcome.RUNNING,
    "STAGE_OUT": Outcome.RUNNING,
    "SIGNALING": Outcome.RUNNING,
    "RESIZING": Outcome.RUNNING,
    "SUSPENDED": Outcome.HELD,
    "REQUEUED": Outcome.HELD,
    "REQUEUE_HOLD": Outcome.HELD,
    "REQUEUE_FED": Outcome.HELD,
    "SPECIAL_EXIT": Outcome.HELD,
    "REVOKED": Outcome.HELD,
    "COMPLETED": Outcome.DONE,
    "FAILED": Outcome.DONE,
    "TIMEOUT": Outcome.WALLTIME,
    "PREEMPTED": Outcome.PREEMPTED,
    "CANCELLED": Outcome.KILLED,
    "NODE_FAIL": Outcome.LOST,
    "BOOT_FAIL": Outcome.LOST,
    "OUT_OF_MEMORY": Outcome.ERROR,
    "DEADLINE": Outcome.ERROR,
}
#: pending reasons of a job put on hold (it will not run until released)
HELD_REASONS = frozenset({"JobHeldUser", "JobHeldAdmin"})
#: what the task script writes in its comment when it could not enter its working directory
WORKDIR_MARK = "cigri-workdir-error"
PARAMS_END = "CIGRI_END_OF_PARAMETER_LINES"  # ends the here-document of a task script's parameter lines


def remote_id(array_job_id: int, index: int) -> int:
    return int(array_job_id) * INDEX_BASE + int(index)


def split_remote_id(rid: int) -> tuple[int, int]:
    """(array job id, array index) of a remote id."""
    return divmod(int(rid), INDEX_BASE)


def slurm_job_id(rid: int) -> str:
    """How Slurm names the task: "A_i" (squeue, scancel)."""
    a, i = split_remote_id(rid)
    return f"{a}_{i}"


def slurm_outcome(rec: Mapping[str, Any], besteffort: bool = True) -> tuple[Outcome, ExitStatus | None, str]:
    """(outcome, exit status, reason words) of one job record. `besteffort`: the job ran in
    the cluster's best-effort partition/QOS (a requeue there is a preemption, else a loss)."""
    state = str(rec.get("job_state") or "")
    reason = str(rec.get("state_reason") or "")
    outcome = SLURM_STATES.get(state)
    restarts = int(rec.get("restart_cnt") or 0)
    exit_ = None
    if outcome is None:
        return Outcome.HELD, None, f"unknown Slurm state {state}"
    if outcome is Outcome.WAITING and reason in HELD_REASONS:
        return Outcome.HELD, None, reason
    if outcome.live:
        return outcome, None, reason
    code = rec.get("exit_code")
    if isinstance(code, int):
        exit_ = ExitStatus.from_wait_status(code)
    if state == "CANCELLED" and restarts > 0:
        # the copy Slurm had requeued, cancelled by CiGri (or anybody) before it ran again
        return (Outcome.PREEMPTED if besteffort else Outcome.LOST), exit_, f"requeued {restarts}x then cancelled"
    if state == "FAILED" and WORKDIR_MARK in str(rec.get("comment") or ""):
        return Outcome.FAILED_TO_START, exit_, "working directory"
    if state == "FAILED" and reason == "JobLaunchFailure" and (exit_ is None or (exit_.signal or 0) > 31):
        return Outcome.FAILED_TO_START, exit_, reason  # slurmstepd could not start the script
    return outcome, exit_, reason if reason != "None" else state


def parse_array_spec(spec: str) -> set[int]:
    """Indices of an `array_task_string` ("0-9%3", "3-9,12", "0-15:4")."""
    out: set[int] = set()
    spec = spec.split("%", 1)[0].strip()
    for part in filter(None, (p.strip() for p in spec.split(","))):
        rng, _, step = part.partition(":")
        lo, _, hi = rng.partition("-")
        try:
            a, b, s = int(lo), int(hi or lo), int(step or 1)
        except ValueError:
            continue
        out.update(range(a, b + 1, max(s, 1)))
    return out


def format_ids(ids: Sequence[int]) -> str:
    """"1001-1050,1060": consecutive runs of the (ordered) ids, order kept."""
    if ids and list(ids) == list(range(ids[0], ids[0] + len(ids))):
        return _run_text(ids[0], ids[-1])
    runs: list[list[int]] = []
    for i in ids:
        if runs and i == runs[-1][1] + 1:
            runs[-1][1] = i
        else:
            runs.append([i, i])
    return ",".join(_run_text(a, b) for a, b in runs)


def _run_text(a: int, b: int) -> str:
    return f"{a}-{b}" if b > a else str(a)


def parse_ids(text: str) -> list[int]:
    out: list[int] = []
    for part in filter(None, text.split(",")):
        a, _, b = part.partition("-")
        out.extend(range(int(a), int(b or a) + 1))
    return out


def key_of(comment: str, instance: str | None = None) -> list[int] | None:
    """The CiGri job ids of a job comment's first line ("cigri:<instance>:1001-1050"), or None
    (also when it was written by another CiGri instance than `instance`)."""
    m = _KEY.match((comment or "").split("\n", 1)[0].strip())
    if not m or (instance is not None and m.group(1) != instance):
        return None
    return parse_ids(m.group(2))


def instance_tag(conf: Any) -> str:
    """Which CiGri database the job ids of a key belong to (job ids are only unique in one
    database; several CiGri servers, or test databases, may submit as the same user)."""
    where = "|".join(str(_conf_get(conf, k, "")) for k in ("DATABASE_TYPE", "DATABASE_HOST", "DATABASE_PORT",
                                                               "DATABASE_NAME", "DATABASE_PATH"))
    return hashlib.sha1(where.encode()).hexdigest()[:8]


def _minutes(walltime: str | None) -> int | None:
    """OAR walltime "[[H:]M:]S" -> whole minutes (rounded up, at least 1)."""
    if not walltime:
        return None
    parts = [p.strip() for p in str(walltime).split(":")]
    try:
        nums = [int(p) for p in parts]
    except ValueError:
        raise ClusterAPIBadRequest(f"Walltime {walltime!r} is not [[hours:]minutes:]seconds") from None
    secs = 0
    for n in nums:
        secs = secs * 60 + n
    return max(1, -(-secs // 60))


_NODE_LEVELS = ("nodes", "node", "host", "network_address", "switch")
_CPU_LEVELS = ("core", "cpu", "resource_id", "thread", "cpuset")


def slurm_resources(resources: str | None) -> tuple[dict[str, Any], int | None]:
    """JDL `resources` (OAR's hierarchy, e.g. "/nodes=2/core=4,walltime=1:0:0") -> the
    Slurm job fields asking for the same (one task with the cores of a node on each node),
    and the walltime in minutes it may carry."""
    text = (resources or "").strip()
    wall = None
    if "walltime=" in text:
        text, _, w = text.partition("walltime=")
        text = text.rstrip(",")
        wall = _minutes(w.split(",")[0])
    nodes: int | None = None
    cpus = 1
    for level in filter(None, text.replace(",", "/").split("/")):
        name, _, value = level.partition("=")
        name, value = name.strip().lower(), value.strip()
        if not value.isdigit() or int(value) < 1:
            raise ClusterAPIBadRequest(f"Resource request {resources!r}: '{level}' is not <level>=<count>")
        if name in _NODE_LEVELS:
            nodes = (nodes or 1) * int(value)
        elif name in _CPU_LEVELS:
            cpus *= int(value)
        else:
            raise ClusterAPIBadRequest(f"Resource request {resources!r}: level '{name}' has no Slurm equivalent "
                                       f"(use nodes=, cpu=, core=)")
    if nodes is None:
        return {"tasks": 1, "cpus_per_task": cpus}, wall
    return {"nodes": [nodes, nodes], "tasks": nodes, "tasks_per_node": 1, "cpus_per_task": cpus}, wall


# ----------------------------------------------------------------------------- task script


def _shell_text(text: str) -> str:
    """CiGri's `\\$` escapes (written for OAR's submission shell) undone, lines joined."""
    if "\\" in text:
        text = _UNESCAPE.sub(r"\1", text)
    return text.replace("\r", " ").replace("\n", " ") if ("\n" in text or "\r" in text) else text


def task_line(command: str, param: str | None) -> str:
    """The shell line a task runs, evaluated by bash when it runs: the command (exec_file,
    already wrapped for its container by the runner), then its parameter line after a space.
    The one definition of a Slurm task's command: `task_script` builds exactly this line for
    array task i from line i (tests/clusters/test_slurm_payloads.py checks it)."""
    return _shell_text(command) if param is None else f"{_shell_text(command)} {_shell_text(param)}"


def _directory_shell(directory: str | None) -> str:
    """A bash word for the working directory: a leading $HOME, ${HOME} or ~ becomes the
    user's home when the task runs; the rest is taken literally."""
    d = _UNESCAPE.sub(r"\1", (directory or "").strip()) or "$HOME"
    for prefix in ("${HOME}", "$HOME", "~"):
        if d == prefix or d.startswith(prefix + "/"):
            rest = d[len(prefix):]
            return '"$HOME"' + (shlex.quote(rest) if rest else "")
    return shlex.quote(d)


def task_script(request: JobRequest, key: str, stderr_lines: int) -> str:
    """The batch script of one array: task i evaluates line i, in the working directory,
    with its outputs in `<name>.<array>_<i>.stdout|stderr` (or the request's files); when it
    fails, the tail of its stderr goes into its job comment (slurmrestd serves no files)."""
    name = request.name or "cigri"
    lines = [_shell_text(p) for p in request.params]
    if not lines:
        select = f"cigri_line={shlex.quote(task_line(request.command, None))}"
    elif PARAMS_END not in lines:
        # line i of the here-document is task i's parameter line, read as is (no quoting to undo)
        block = "\n".join(lines)
        select = (f"mapfile -t cigri_params <<'{PARAMS_END}'\n{block}\n{PARAMS_END}\n"
                  f"cigri_i=${{SLURM_ARRAY_TASK_ID:-0}}\n"
                  f'[ "$cigri_i" -lt "${{#cigri_params[@]}}" ] || {{ echo "CiGri: no parameter line for array task '
                  f'$cigri_i" >&2; exit 1; }}\n'
                  f'cigri_line={shlex.quote(_shell_text(request.command))}" ${{cigri_params[$cigri_i]}}"')
    else:  # a parameter line that ends the here-document: one quoted line per task instead
        cases = "\n".join(f"{i}) cigri_line={shlex.quote(task_line(request.command, p))} ;;"
                          for i, p in enumerate(request.params))
        select = (f'case "${{SLURM_ARRAY_TASK_ID:-0}}" in\n{cases}\n'
                  f'*) echo "CiGri: no parameter line for array task $SLURM_ARRAY_TASK_ID" >&2; exit 1 ;;\nesac')
    out = shlex.quote(request.stdout) if request.stdout else f'{shlex.quote(name)}".$cigri_task.stdout"'
    err = shlex.quote(request.stderr) if request.stderr else f'{shlex.quote(name)}".$cigri_task.stderr"'
    wd_msg = f"{WORKDIR_MARK}: cannot enter the working directory {request.directory or '$HOME'}"
    return f"""#!/bin/bash
# Written by CiGri: array task i of this job runs parameter line i.
cigri_key={shlex.quote(key)}
cigri_task="${{SLURM_ARRAY_JOB_ID:-$SLURM_JOB_ID}}_${{SLURM_ARRAY_TASK_ID:-0}}"
export USER="$(id -un)" LOGNAME="$(id -un)"
export HOME="$(getent passwd "$(id -u)" | cut -d: -f6)"
cigri_utf8() {{ iconv -c -f UTF-8 -t UTF-8 2>/dev/null || tr -cd '\11\12\40-\176'; }}
cigri_note() {{  # the job comment (Slurm keeps {COMMENT_MAX} bytes): the key, then $1, then the end of $2
  local head budget
  head=$(printf '%s\n%s' "$cigri_key" "$1" | head -c {COMMENT_MAX - 64} | cigri_utf8)
  budget=$(( {COMMENT_MAX - 24} - $(printf '%s' "$head" | wc -c) ))
  [ "$budget" -gt 0 ] || budget=0
  scontrol update JobId="$SLURM_JOB_ID" Comment="$head
$(printf '%s' "$2" | tail -c "$budget" | cigri_utf8)" >/dev/null 2>&1
}}
if ! cd -- {_directory_shell(request.directory)} 2>/dev/null; then
  cigri_note {shlex.quote(wd_msg)} ""
  exit 1
fi
{select}
cigri_err={err}
exec >{out} 2>"$cigri_err" </dev/null
( eval "$cigri_line" )
cigri_rc=$?
if [ "$cigri_rc" -ne 0 ]; then
  case "$cigri_err" in /*) ;; *) cigri_err="$PWD/$cigri_err" ;; esac
  cigri_note "err=$cigri_err" "$(tail -n {int(stderr_lines)} -- "$cigri_err" 2>/dev/null)"
fi
exit "$cigri_rc"
"""


# ----------------------------------------------------------------------------- HTTP


def _errors(body: Any) -> list[dict[str, Any]]:
    errs = body.get("errors") if isinstance(body, dict) else None
    return [e for e in errs if isinstance(e, dict)] if isinstance(errs, list) else []


def _error_text(errs: list[dict[str, Any]]) -> str:
    return "; ".join(f"{e.get('error') or 'error'}"
                     + (f" ({e['description']})" if e.get("description") else "")
                     + (f" [{e.get('error_number', e.get('error_code'))}]"
                        if e.get("error_number", e.get("error_code")) not in (None, -1) else "")
                     for e in errs) or "no error given"


def _error_numbers(errs: list[dict[str, Any]]) -> set[int]:
    out = set()
    for e in errs:
        for k in ("error_number", "error_code"):
            if isinstance(e.get(k), int):
                out.add(int(e[k]))
    return out


class SlurmSession(RestSession):
    """slurmrestd over HTTP: Slurm's two identity headers, Slurm's error lists turned into
    typed errors. `user` arguments are cluster logins here (the adapter maps grid logins)."""

    def __init__(self, cluster: ClusterInfo, conf: Any, identity: Any) -> None:
        super().__init__(cluster, conf, jwt_allowed=True)
        self.identity = identity  # callable(login, default_code) -> headers

    def identity_headers(self, user: str | None, default_code: str, required: bool = True) -> dict[str, str]:
        return dict(self.identity(user, default_code)) if user is not None else {}

    def _response(self, resp: requests.Response, method: str, url: str, default_code: str, raw: bool) -> Any:
        status = resp.status_code
        if 200 <= status < 300 and not raw and resp.content.strip():
            try:  # job names and comments are the users' bytes: never let one spoil a whole answer
                return json.loads(resp.content.decode("utf-8", errors="replace"))
            except ValueError:
                pass  # the base class reports it
        if status < 400 or status in (401, 403, 413):
            return super()._response(resp, method, url, default_code, raw)
        if status == 404:  # slurmrestd's answer to a path it does not serve
            raise ClusterAPINotFound(f"{method} {url}: no such path (is this slurmrestd, and does it offer "
                                     f"OpenAPI {API_VERSIONS[0]}?)", status=status, body=resp.text[:600])
        try:
            body = resp.json()
        except ValueError:
            return super()._response(resp, method, url, default_code, raw)
        errs = _errors(body)
        nums = _error_numbers(errs)
        msg = f"{method} {url}: Slurm answered {status}: {_error_text(errs)}"
        if ERR_INVALID_JOB_ID in nums:
            raise ClusterAPINotFound(msg, status=status, body=resp.text[:600])
        if ERR_ACCESS_DENIED in nums:
            raise ClusterAPIForbidden(msg, status=status, body=resp.text[:600])
        if status == 400:
            raise ClusterAPIBadRequest(msg, status=status, body=resp.text[:600])
        raise SlurmVagueError(msg, status=status, body=resp.text[:600])


class SlurmVagueError(ClusterAPIServerError):
    """A 5xx whose errors do not say what went wrong: slurmrestd answers so when it refuses
    the token, and when slurmctld is in trouble (the adapter tells which by pinging)."""


# ----------------------------------------------------------------------------- adapter


class SlurmAdapter(ClusterAdapter):
    batch = "slurm"
    reads_files = False  # slurmrestd serves no files

    def __init__(self, cluster: ClusterInfo, conf: Any = None, mapping: Mapping[str, str] | None = None):
        super().__init__(cluster, conf, mapping)
        url = (cluster.api_url or "").rstrip("/")
        m = re.search(r"/slurm/(v\d+\.\d+\.\d+)$", url)
        self.version = m.group(1) if m else API_VERSIONS[0]
        base = url[: m.start()] if m else url
        self.http = SlurmSession(ClusterInfo(**{**cluster.__dict__, "api_url": base + "/"}), conf, self._headers)
        self._key: bytes | None = None
        self._tokens: dict[str, tuple[str, float]] = {}
        self._owners: dict[str, str] = {}  # cluster login -> the grid user whose token names it
        self._lock = threading.Lock()
        self.stderr_lines = int(_conf_get(conf, "STDERR_TAIL", 5))
        self.instance = instance_tag(conf)

    # ------------------------------------------------------------------ identity

    def _login(self, user: str) -> str:
        """The cluster login of a grid user. Signing tokens: the login an admin mapped it to in
        users_mapping (never a value registered with gridtoken, which users control), else the
        grid login. Registered tokens: the `sun` of the user's own token, else the grid login."""
        mapped = (self.mapping.get(user) or "").strip()
        registered = mapped.lower().startswith("bearer ") or _looks_like_token(mapped)
        if self.cluster.jwt_key_file:
            return mapped if mapped and not registered else user
        if mapped:
            sun = _token_claims(mapped).get("sun")
            if isinstance(sun, str) and sun:
                self._owners[sun] = user
                return sun
        return user

    @property
    def admin_login(self) -> str:
        """The Slurm account CiGri reads the cluster's jobs, nodes and statistics as."""
        return self.cluster.api_username or ("slurm" if self.cluster.jwt_key_file else "")

    def _signing_key(self, default_code: str) -> bytes:
        if self._key is None:
            path = self.cluster.jwt_key_file or ""
            try:
                with open(path, "rb") as f:
                    self._key = f.read()
            except OSError as e:
                raise ClusterConfigError(f"Cluster {self.cluster.name}: cannot read its JWT key file {path} "
                                         f"({e.strerror})", code=default_code, event_open=True) from None
            if len(self._key) < 16:
                raise ClusterConfigError(f"Cluster {self.cluster.name}: JWT key file {path} is too short to be "
                                         f"Slurm's HS256 key", code=default_code, event_open=True)
        return self._key

    def _token(self, login: str, default_code: str) -> str:
        """A token for a cluster login: signed here (jwt_key_file) or the one a user registered."""
        now = time.time()
        with self._lock:
            cached = self._tokens.get(login)
            if cached and cached[1] - now > 60:
                return cached[0]
        if self.cluster.jwt_key_file:
            token = jwt.encode({"iat": int(now), "exp": int(now) + TOKEN_LIFESPAN, "sun": login},
                               self._signing_key(default_code), algorithm="HS256")
            with self._lock:
                self._tokens[login] = (token, now + TOKEN_LIFESPAN)
            return token
        owner = self._owners.get(login, login)  # the user's own token first
        for grid_login, value in sorted(self.mapping.items(), key=lambda kv: kv[0] != owner):
            token = _bare_token(value)
            if token and _token_claims(value).get("sun", grid_login) == login:
                exp = _token_claims(value).get("exp")
                if isinstance(exp, (int, float)) and exp < now:
                    when = time.strftime("%Y-%m-%d %H:%M", time.localtime(exp))
                    raise TokenNotFound(f"The Slurm token registered for {grid_login} on cluster {self.cluster.id} "
                                        f"({self.cluster.name}) expired at {when}: register a new one with "
                                        f"'gridtoken'", code=default_code, event_open=True)
                return token
        raise TokenNotFound(f"Missing token for user {login} on cluster {self.cluster.id} ({self.cluster.name}): "
                            f"use the 'gridtoken' command", code=default_code, event_open=True)

    def _headers(self, login: str, default_code: str) -> dict[str, str]:
        auth = (self.cluster.api_auth_type or "none").lower()
        if auth == "none":
            return {"X-SLURM-USER-NAME": login}
        if auth != "jwt":
            raise ClusterConfigError(f"Cluster {self.cluster.name}: a Slurm cluster authenticates with 'jwt' (or "
                                     f"'none' behind a proxy that does it), not '{auth}'", code=default_code,
                                     event_open=True)
        return {"X-SLURM-USER-NAME": login, "X-SLURM-USER-TOKEN": self._token(login, default_code)}

    def _admin(self, default_code: str) -> str:
        if self.admin_login:
            return self.admin_login
        for grid_login, value in self.mapping.items():  # any registered token can read
            if _bare_token(value):
                return str(_token_claims(value).get("sun", grid_login))
        raise TokenNotFound(f"Cluster {self.cluster.name}: no Slurm identity to read the cluster with (set "
                            f"api_username, or register a token with 'gridtoken')", code=default_code,
                            event_open=True)

    # ------------------------------------------------------------------ calls

    def _path(self, tail: str) -> str:
        return f"slurm/{self.version}/{tail}"

    def _call(self, method: str, tail: str, *, login: str, default_code: str, body: Any = None,
              params: Any = None) -> Any:
        try:
            return self.http.request(method, self._path(tail), default_code=default_code, user=login, body=body,
                                     params=params)
        except SlurmVagueError as e:
            raise self._explain(e, login, default_code) from None
        except ClusterAPINotFound as e:
            if e.status == 404 and "no such path" in e.message:
                raise self._version_error(e, default_code) from None
            raise

    def _explain(self, e: SlurmVagueError, login: str, default_code: str) -> ClusterAPIError:
        """Tell a refused token from a controller in trouble: ping with the same identity."""
        try:
            self.http.request("GET", self._path("ping"), default_code=default_code, user=login)
        except SlurmVagueError:
            return ClusterAPIPermissionDenied(
                f"slurmrestd of cluster {self.cluster.name} refused the token of Slurm user {login} (expired, "
                f"signed with another key, or for another user): {e.message}", status=e.status, body=e.body)
        except ClusterAPIError:
            pass
        return ClusterAPIServerError(e.message, status=e.status, body=e.body)

    def _version_error(self, e: ClusterAPIError, default_code: str) -> ClusterAPIError:
        offered: list[str] = []
        try:
            spec = self.http.request("GET", "openapi/v3", default_code=default_code, user=self._admin(default_code))
            offered = sorted({m.group(1) for p in (spec.get("paths") or {})
                              if (m := re.match(r"/slurm/(v[\d.]+)/", p))})
        except ClusterAPIError:
            pass
        have = ", ".join(offered) if offered else "none that CiGri could read"
        return ClusterConfigError(f"Cluster {self.cluster.name}: slurmrestd does not offer OpenAPI {self.version} "
                                  f"(it offers: {have}); CiGri's Slurm adapter speaks "
                                  f"{', '.join(API_VERSIONS)}", code=default_code, event_open=True,
                                  status=e.status)

    def check_api(self) -> bool:
        try:
            return bool(self.ping())
        except ClusterAPIError:
            return False

    def ping(self) -> dict[str, Any]:
        """The ping answer (the server's Slurm release and OpenAPI plugin are in its `meta`);
        refuses a server whose plugin version CiGri does not speak."""
        data = self._call("GET", "ping", login=self._admin("GET_JOBS"), default_code="GET_JOBS")
        plugin = str(((data.get("meta") or {}).get("plugin") or {}).get("type") or "")
        if plugin and plugin.rsplit("/", 1)[-1] not in API_VERSIONS:
            raise ClusterConfigError(f"Cluster {self.cluster.name}: slurmrestd answered with plugin {plugin}; "
                                     f"CiGri speaks {', '.join(API_VERSIONS)}", code="GET_JOBS", event_open=True)
        return dict(data)

    # ------------------------------------------------------------------ submission

    def _placement(self, request: JobRequest) -> dict[str, Any]:
        c = self.cluster
        besteffort = any(str(t).strip() == "besteffort" for entry in request.types for t in str(entry).split(","))
        out: dict[str, Any] = {}
        if besteffort:
            if c.besteffort_partition:
                out["partition"] = c.besteffort_partition
            elif c.normal_partition:
                out["partition"] = c.normal_partition
            if c.besteffort_qos:
                out["qos"] = c.besteffort_qos
        elif c.normal_partition:
            out["partition"] = c.normal_partition
        return out

    def build_submissions(self, request: JobRequest) -> list[tuple[dict[str, Any], list[int]]]:
        """POST bodies for a request, each with the parameter positions (array indices) it runs:
        arrays of at most MAX_ARRAY tasks whose job-id key fits in KEY_MAX."""
        n = max(1, len(request.params))
        ids = list(request.job_ids) if request.params else []
        chunks: list[list[int]] = []
        cur: list[int] = []
        runs: list[list[int]] = []  # the key's runs of consecutive ids, and its length, kept as ids are added
        key_len = 0
        if n <= MAX_ARRAY and (not ids or (len(ids) == n and ids == list(range(ids[0], ids[0] + n)))):
            n = 0  # the usual case, one array of consecutive job ids: nothing to split
            cur = list(range(max(1, len(request.params))))
        for pos in range(n):
            if pos < len(ids):
                i = ids[pos]
                extend = bool(runs) and i == runs[-1][1] + 1
                if extend:  # "a" -> "a-i" or "a-b" -> "a-i"
                    a, b = runs[-1]
                    grown = len(str(i)) + 1 if a == b else len(str(i)) - len(str(b))
                else:
                    grown = len(str(i)) + 1
                if cur and (len(cur) >= MAX_ARRAY or key_len + grown > KEY_MAX):
                    chunks.append(cur)
                    cur, runs, key_len = [], [], 0
                    extend, grown = False, len(str(i)) + 1
                if extend:
                    runs[-1][1] = i
                else:
                    runs.append([i, i])
                key_len += grown
            elif cur and len(cur) >= MAX_ARRAY:
                chunks.append(cur)
                cur = []
            cur.append(pos)
        chunks.append(cur)
        resources, wall = slurm_resources(request.resources)
        minutes = _minutes(request.walltime) or wall
        bodies = []
        for positions in chunks:
            params = [request.params[p] for p in positions] if request.params else []
            chunk_ids = [ids[p] for p in positions if p < len(ids)] if request.params else list(request.job_ids)
            key = f"cigri:{self.instance}:{format_ids(chunk_ids)}"
            sub = JobRequest(**{**request.__dict__, "params": params, "job_ids": chunk_ids})
            job: dict[str, Any] = {
                "name": request.name or "cigri",
                "comment": key,
                "array": f"0-{len(params) - 1}" if params else "0",
                "current_working_directory": "/tmp",  # the script enters the real one ($HOME is not known here)
                "standard_output": "/dev/null",
                "standard_error": "/dev/null",
                "environment": {"PATH": DEFAULT_PATH, "LANG": "C.UTF-8"},
                **resources,
                **self._placement(request),
            }
            if minutes:
                job["time_limit"] = minutes
            if request.property and request.property.strip():
                job["constraints"] = request.property.strip()
            if request.project and request.project.strip():
                job["account"] = request.project.strip()
            bodies.append(({"script": task_script(sub, key, self.stderr_lines), "job": job},
                           positions if request.params else []))
        return bodies

    def submit(self, request: JobRequest, user: str) -> list[int]:
        login = self._login(user)
        ids: list[int] = []
        for body, positions in self.build_submissions(request):
            answer = self._call("POST", "job/submit", login=login, default_code="SUBMIT_JOB", body=body)
            job_id = answer.get("job_id") if isinstance(answer, dict) else None
            if not isinstance(job_id, int):
                raise ClusterAPIError(f"Submission to {self.cluster.name} returned no job id: {str(answer)[:300]}",
                                      code="SUBMIT_JOB", event_open=True)
            ids.extend(remote_id(job_id, i) for i in range(len(positions) or 1))
        return ids

    # ------------------------------------------------------------------ polling

    def _array_records(self, array_id: int, login: str, default_code: str) -> list[dict[str, Any]] | None:
        """Every record of an array (None: Slurm does not know it)."""
        try:
            data = self._call("GET", f"job/{int(array_id)}", login=login, default_code=default_code)
        except ClusterAPINotFound:
            return None
        return [j for j in (data.get("jobs") or []) if isinstance(j, dict)]

    def _resolve(self, rids: Iterable[int], login: str, default_code: str,
                 strict: bool = False) -> dict[int, RemoteJob]:
        """The jobs of these remote ids, one GET per array. A task Slurm no longer shows is
        reported lost, or refused (ClusterAPINotFound) when `strict`."""
        by_array: dict[int, list[int]] = {}
        for rid in sorted({int(r) for r in rids}):
            by_array.setdefault(split_remote_id(rid)[0], []).append(rid)
        out: dict[int, RemoteJob] = {}
        for array_id, wanted in by_array.items():
            records = self._array_records(array_id, login, default_code)
            for rid in wanted:
                rec = _record_of(records or [], split_remote_id(rid)[1])
                if rec is None and strict:
                    raise ClusterAPINotFound(f"Cluster {self.cluster.name}: {_vanished(rid, records).detail}")
                out[rid] = self._requeue_guard(self.to_remote_job(rid, rec)) if rec else _vanished(rid, records)
        return out

    def get_job(self, remote_id: int, user: str | None = None) -> RemoteJob:
        login = self._login(user) if user else self._admin("GET_JOB")
        return self._resolve([remote_id], login, "GET_JOB", strict=True)[int(remote_id)]

    def get_jobs(self, remote_ids: Sequence[int]) -> dict[int, RemoteJob]:
        if not remote_ids:
            return {}
        return self._resolve(remote_ids, self._admin("FILL_JOBS_CACHE"), "FILL_JOBS_CACHE")

    def _is_besteffort(self, rec: Mapping[str, Any]) -> bool:
        c = self.cluster
        return bool((c.besteffort_partition and rec.get("partition") == c.besteffort_partition)
                    or (c.besteffort_qos and rec.get("qos") == c.besteffort_qos))

    def to_remote_job(self, rid: int, rec: Mapping[str, Any]) -> RemoteJob:
        outcome, exit_, reason = slurm_outcome(rec, self._is_besteffort(rec))
        comment = str(rec.get("comment") or "")
        err_file = None
        for line in comment.split("\n")[1:2]:
            if line.startswith("err="):
                err_file = line[4:]
        started = outcome is not Outcome.WAITING and int(rec.get("start_time") or 0) > 0
        ended = outcome.ended
        return RemoteJob(
            id=int(rid), outcome=outcome, raw_state=str(rec.get("job_state") or ""), exit=exit_,
            requeues=int(rec.get("restart_cnt") or 0), reason=reason,
            detail=f"{rec.get('job_state')} ({rec.get('state_reason')}); Slurm job {slurm_job_id(rid)}"
                   + (f" = {rec.get('job_id')}" if rec.get("array_task_id") is not None else ""),
            start_time=int(rec["start_time"]) if started else None,
            stop_time=int(rec["end_time"]) if ended and rec.get("end_time") else None,
            submission_time=int(rec["submit_time"]) if rec.get("submit_time") else None,
            launching_directory=None, stderr_file=err_file, command=None,
            owner=str(rec.get("user_name") or "") or None, array_id=split_remote_id(rid)[0],
            array_index=split_remote_id(rid)[1], queue=str(rec.get("partition") or "") or None,
            resources=_allocated(rec), raw=dict(rec))

    def _requeue_guard(self, r: RemoteJob) -> RemoteJob:
        """A live job Slurm requeued itself (REQUEUE preemption, node failure): cancel that copy
        so that CiGri's resubmission never runs next to it. It is shown held until Slurm has
        ended it; the next poll then reports it preempted (or lost)."""
        if r.requeues <= 0 or not r.outcome.live:
            return r
        owner = r.owner or ""
        try:
            self._call("DELETE", f"job/{slurm_job_id(r.id)}", login=owner, default_code="DELETE_JOB")
            log.info("Cluster %s: Slurm requeued job %s itself (restart %s): its copy is cancelled, CiGri "
                     "resubmits the task", self.cluster.name, slurm_job_id(r.id), r.requeues)
        except ClusterAPINotFound:
            pass
        except ClusterAPIError as e:
            log.warning("Cluster %s: could not cancel job %s, which Slurm requeued: %s", self.cluster.name,
                        slurm_job_id(r.id), e)
        r.outcome = Outcome.HELD
        r.reason = f"requeued by Slurm (restart {r.requeues}): being cancelled"
        return r

    def stderr_tail(self, remote: RemoteJob, user: str, lines: int) -> str:
        """What the task script wrote in its comment when it failed (its stderr's last lines)."""
        rest = str(remote.raw.get("comment") or "").split("\n")[1:]
        if rest and rest[0].startswith("err="):
            rest = rest[1:]
        return "\n".join(rest[-lines:] if lines > 0 else rest)

    def find_submitted(self, job_ids: Sequence[int], user: str) -> dict[int, int] | None:
        wanted = set(int(i) for i in job_ids)
        login = self._admin("GET_JOBS")
        data = self._call("GET", "jobs", login=login, default_code="GET_JOBS")
        mine = self._login(user)
        found: dict[int, int] = {}
        for rec in data.get("jobs") or []:
            if not isinstance(rec, dict) or str(rec.get("user_name") or "") != mine:
                continue
            ids = key_of(str(rec.get("comment") or ""), self.instance)
            if not ids:
                continue
            array_id = int(rec.get("array_job_id") or 0) or int(rec.get("job_id") or 0)
            for i, jid in enumerate(ids):
                if jid in wanted:
                    found[jid] = remote_id(array_id, i)
        return found

    # ------------------------------------------------------------------ cancellation

    def delete_job(self, remote_id: int, user: str) -> None:
        try:
            self._call("DELETE", f"job/{slurm_job_id(remote_id)}", login=self._login(user), default_code="DELETE_JOB")
        except ClusterAPINotFound:
            log.info("Job %s on %s already ended (Slurm no longer knows it)", slurm_job_id(remote_id),
                     self.cluster.name)

    # ------------------------------------------------------------------ files

    def get_file(self, path: str, user: str, tail: int = 0) -> str:
        raise ClusterAPINotFound(f"Cluster {self.cluster.name} is a Slurm cluster: slurmrestd serves no files "
                                 f"({path} is on the cluster; a failed task's stderr tail is in its event)")

    def delete_file(self, path: str, user: str) -> None:
        raise ClusterAPIBadRequest(f"Cluster {self.cluster.name} is a Slurm cluster: slurmrestd cannot delete "
                                   f"files ({path})")

    # ------------------------------------------------------------------ usage and stress

    def _partitions(self) -> set[str]:
        c = self.cluster
        return {p for p in (c.normal_partition, c.besteffort_partition) if p}

    def get_resources(self) -> list[dict[str, Any]]:
        """One resource per core of the nodes of the cluster's partitions (all nodes when none
        is named): id "node/socket.core", state Alive when the node can run jobs."""
        data = self._call("GET", "nodes", login=self._admin("GET_JOBS"), default_code="GET_JOBS")
        parts = self._partitions()
        out: list[dict[str, Any]] = []
        for n in data.get("nodes") or []:
            if not isinstance(n, dict) or (parts and not parts & set(n.get("partitions") or [])):
                continue
            state = str(n.get("state") or "").lower()
            flags = {str(f).upper() for f in n.get("state_flags") or []}
            alive = state in ("idle", "mixed", "allocated", "completing") and not flags & {
                "DRAIN", "DRAINING", "DRAINED", "NOT_RESPONDING", "MAINTENANCE", "POWERED_DOWN", "FAIL"}
            sockets = int(n.get("sockets") or 1) * int(n.get("boards") or 1)
            cores = int(n.get("cores") or 1)
            for s in range(sockets):
                for k in range(cores):
                    rid = f"{n.get('name')}/{s}.{k}"
                    out.append({"id": rid, "resource_id": rid, "core": rid, "network_address": n.get("name"),
                                "host": n.get("name"), "state": "Alive" if alive else "Dead",
                                "available": alive})
        return out

    def get_running_jobs(self) -> list[RemoteJob]:
        data = self._call("GET", "jobs", login=self._admin("GET_JOBS"), default_code="GET_JOBS")
        out = []
        for rec in data.get("jobs") or []:
            if not isinstance(rec, dict) or SLURM_STATES.get(str(rec.get("job_state"))) is not Outcome.RUNNING:
                continue
            array_id, index = int(rec.get("array_job_id") or 0), rec.get("array_task_id")
            rid = remote_id(array_id, int(index)) if array_id and index is not None else remote_id(
                int(rec.get("job_id") or 0), 0)
            out.append(self.to_remote_job(rid, rec))
        return out

    def get_stress_factor(self) -> float:
        """slurmctld's load: the share of its RPC threads in use (what makes a Slurm controller
        slow to answer everybody), from /diag."""
        data = self._call("GET", "diag", login=self._admin("GET_STRESS_FACTOR"), default_code="GET_STRESS_FACTOR")
        try:
            threads = float((data.get("statistics") or {})["server_thread_count"])
        except (KeyError, TypeError, ValueError) as exc:
            raise ClusterAPIError(f"Cluster {self.cluster.name}: /diag gave no server_thread_count",
                                  code="GET_STRESS_FACTOR", event_open=True) from exc
        return round(min(1.0, threads / MAX_SERVER_THREADS), 3)

    def close(self) -> None:
        self.http.close()


# ----------------------------------------------------------------------------- helpers


def _record_of(records: list[dict[str, Any]], index: int) -> dict[str, Any] | None:
    """The record of array task `index`: its own, or the array's record of pending (or, when
    the whole array was cancelled, ended) tasks whose `array_task_string` covers it."""
    for r in records:
        if r.get("array_task_id") == index:
            return r
    for r in records:
        if r.get("array_task_id") is None and index in parse_array_spec(str(r.get("array_task_string") or "")):
            return r
    return None


def _vanished(rid: int, records: list[dict[str, Any]] | None) -> RemoteJob:
    """A task Slurm no longer shows: cancelled while pending (Slurm drops those), or ended
    longer ago than its MinJobAge. What happened to it is unknown: lost."""
    why = ("Slurm no longer knows the job" if records is None
           else "its array no longer lists it (cancelled while pending, or ended long ago)")
    return RemoteJob(id=int(rid), outcome=Outcome.LOST, raw_state="UNKNOWN", reason="vanished",
                     detail=f"Slurm job {slurm_job_id(rid)}: {why}", array_id=split_remote_id(rid)[0],
                     array_index=split_remote_id(rid)[1])


def _allocated(rec: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The cores a running job holds, as resource ids of `get_resources`."""
    out = []
    for node in ((rec.get("job_resources") or {}).get("allocated_nodes") or []):
        if not isinstance(node, dict):
            continue
        for s, sock in (node.get("sockets") or {}).items():
            for k in (sock or {}).get("cores") or {}:
                rid = f"{node.get('nodename')}/{s}.{k}"
                out.append({"id": rid, "resource_id": rid})
    return out


def _looks_like_token(value: str) -> bool:
    v = _bare_token(value)
    return v.count(".") == 2 and len(v) > 40


def _bare_token(value: str) -> str:
    """The JWT of a registered value ("Bearer <jwt>", or scontrol's "SLURM_JWT=<jwt>" pasted whole)."""
    v = (value or "").strip()
    v = v[7:].strip() if v.lower().startswith("bearer ") else v
    return v[10:].strip() if v.startswith("SLURM_JWT=") else v


def _token_claims(value: str) -> dict[str, Any]:
    """The claims of a registered token, unverified (slurmrestd verifies it; CiGri only needs
    the login it names and when it expires)."""
    try:
        claims = jwt.decode(_bare_token(value), options={"verify_signature": False})
    except jwt.PyJWTError:
        return {}
    return claims if isinstance(claims, dict) else {}
