"""OAR 2.5 REST API adapter (spec §8.3 column oar2_5), checked against real OAR 2.5.9.

Facts of OAR 2.5.9 this module relies on (tools/oar-testbed, /work/shared/oar/oar2.5):
- the API runs `bash -c "cd dir && oarsub ... \\"<command>\\""`: `$`/backquotes in `command`
  are expanded at submission unless escaped (`\\$X`, CiGri's JDL convention) — commands are
  sent as CiGri built them;
- `param_file` reaches oarsub untouched (no shell), one sub-job per line, in order, except
  that oarsub erases everything after `#` and skips blank lines: such parameter lines are
  submitted as single jobs with the line folded into the command, escaped for both shell
  levels so OAR stores exactly `command + " " + line`;
- a one-line `param_file` works (no folding needed, so parameters are never evaluated at
  submission time);
- the POST answer lists every sub-job as `OAR_JOB_ID=<id>` lines in parameter order; the
  listing fallback (`jobs/details?array=`) is ordered by id and checked against the exact
  command tail (no substring matching, fixes §15.2 #16);
- `exit_code` is the raw wait status; JSON is UTF-8 even though OAR says ISO-8859-1.

`oar_outcome` is the translation table from OAR's states and job events to CiGri's
outcomes (shared by the OAR 3 adapter): nothing outside the OAR adapters reads OAR's words."""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Iterable, Sequence
from typing import Any
from urllib.parse import quote

from cigri.clusters.base import (
    ClusterAdapter,
    ClusterAPIBadRequest,
    ClusterAPIError,
    ClusterAPINotFound,
    ExitStatus,
    JobRequest,
    Outcome,
    RemoteJob,
)
from cigri.clusters.http import ADMIN, RestSession

log = logging.getLogger("cigri.clusters")

_JOB_ID_LINE = re.compile(r"^OAR_JOB_ID=(\d+)\s*$", re.M)
_PROPERTY_PAIR = re.compile(r"""([A-Za-z_][\w.]*)\s*=\s*(?:'([^']*)'|"([^"]*)"|([^\s'")]+))""")
_ALREADY_DONE = re.compile(r"already killed|already finished|is not running|not in a right state|"
                           r"been deleted|Terminated|Error state", re.I)


# ----------------------------------------------------------------------------- translation

#: OAR job states of a job that has not ended
OAR_LIVE_STATES: dict[str, Outcome] = {
    "Waiting": Outcome.WAITING,
    "Hold": Outcome.HELD, "toLaunch": Outcome.HELD, "toAckReservation": Outcome.HELD,
    "Suspended": Outcome.HELD, "Resuming": Outcome.HELD, "toError": Outcome.HELD,
    "Launching": Outcome.RUNNING, "Running": Outcome.RUNNING, "Finishing": Outcome.RUNNING,
}
OAR_ENDED_STATES = ("Terminated", "Error")
#: OAR job events that say the cluster killed the job; the first one listed explains the end,
#: whatever the order OAR lists the events in
OAR_KILL_EVENTS: dict[str, Outcome] = {
    "BESTEFFORT_KILL": Outcome.PREEMPTED,
    "WALLTIME": Outcome.WALLTIME,
    "EXTERMINATE": Outcome.LOST,
}
#: other events that explain an end; the first one listed wins
OAR_END_EVENTS: dict[str, Outcome] = {
    "FRAG_JOB_REQUEST": Outcome.KILLED,  # oardel (CiGri's kill, the user's or an admin's)
    "WORKING_DIRECTORY": Outcome.FAILED_TO_START,
    "RESUBMIT_JOB_AUTOMATICALLY": Outcome.REQUEUED,
}
_NEW_ID = re.compile(r"new id\s*=\s*(\d+)")
_ANY_ID = re.compile(r"(\d+)\)")


def oar_outcome(state: str, exit_code: int | None,
                events: Sequence[dict[str, Any]]) -> tuple[Outcome, ExitStatus | None, int | None]:
    """(outcome, exit status, new job id) of an OAR job. A job `Terminated` with exit 0 (or
    none) is done whatever its events; a job that failed is explained by its first kill
    event, else by its first event that names an end, else it is done with its exit code
    (`Terminated`) or an unexplained error (`Error`)."""
    exit_ = ExitStatus.from_wait_status(exit_code) if exit_code is not None else None
    if state not in OAR_ENDED_STATES:
        return OAR_LIVE_STATES.get(state, Outcome.HELD), exit_, None
    failed = state == "Error" or (exit_code or 0) > 0
    if not failed:
        return Outcome.DONE, exit_, None
    types = [str(e.get("type", "")) for e in events]
    kill = next((OAR_KILL_EVENTS[t] for t in types if t in OAR_KILL_EVENTS), None)
    if kill is not None:
        return kill, exit_, None
    for ev, t in zip(events, types, strict=True):
        end = OAR_END_EVENTS.get(t)
        if end is Outcome.REQUEUED:
            desc = str(ev.get("description", ""))
            m = _NEW_ID.search(desc) or _ANY_ID.search(desc)
            if m is None:
                break  # resubmitted, but OAR does not say as which job: unexplained
            return end, exit_, int(m.group(1))
        if end is not None:
            return end, exit_, None
    return (Outcome.DONE if state == "Terminated" else Outcome.ERROR), exit_, None


def oar_resource_available(res: dict[str, Any], at: float) -> bool:
    """`Alive`, or `Absent` until a wake-up date still to come (energy saving)."""
    state = str(res.get("state", ""))
    if state == "Alive":
        return True
    try:
        return state == "Absent" and res.get("available_upto") is not None and float(res["available_upto"]) > at
    except (TypeError, ValueError):
        return False


def _describe(events: Sequence[dict[str, Any]]) -> tuple[str, str]:
    """(reason, detail) of an OAR job: its event types, and each with its description."""
    reason = ",".join(str(e.get("type", "")) for e in events)
    detail = "; ".join(f"{e.get('type')}: {e.get('description', '')}" for e in events)
    return reason, detail


def _int_or_none(value: Any) -> int | None:
    if value is None or value == "":
        return None
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def _epoch(value: Any) -> int | None:
    """OAR reports 0 for 'not yet' times: None."""
    v = _int_or_none(value)
    return v if v else None


def parse_properties(properties: str | None) -> list[tuple[str, str]]:
    """The `k='v' AND k2='v2'` pairs of a cluster's `properties` (empty/None: no filter)."""
    if not properties or not properties.strip():
        return []
    return [(m.group(1), next(g for g in m.groups()[1:] if g is not None))
            for m in _PROPERTY_PAIR.finditer(properties)]


def filter_resources(resources: Iterable[dict[str, Any]], properties: str | None) -> list[dict[str, Any]]:
    """Resources whose fields equal every `k='v'` of the cluster's properties."""
    pairs = parse_properties(properties)
    return [r for r in resources
            if all(k in r and r[k] is not None and str(r[k]) == v for k, v in pairs)]


def escape_for_oar25_command(text: str) -> str:
    """Escape `text` so that, once inside the JSON `command` of an OAR 2.5 POST, OAR stores it
    verbatim. The API passes the command through two double-quoted shell levels and escapes
    `"` twice and `$`/backquote once itself (oarapi.pl); verified on OAR 2.5.9."""
    out: list[str] = []
    for m in re.finditer(r'(\\*)(["$`]|$|[^\\])', text, flags=re.S):
        bs, c = m.group(1), m.group(2)
        k = len(bs)
        if c == '"':
            out.append(bs + c)
        elif c in ("$", "`"):
            out.append("\\" * (2 * k) + "\\" + c)
        elif c == "":
            out.append("\\" * (2 * k))
        else:
            out.append("\\" * (4 * k) + c)
    return "".join(out)


class Oar25Adapter(ClusterAdapter):
    """CiGri's conversation with an OAR 2.5 REST API (`batch = oar2_5`)."""

    batch = "oar2_5"
    style = "oar2_5"  # pagination style
    jwt_allowed = False
    #: Apache + mod_fcgid may hand a request to a FastCGI process that just exited: its
    #: non-JSON 5xx is retried once (the OAR script never ran)
    retry_web_server_errors = True

    def __init__(self, cluster: Any, conf: Any = None, mapping: Any = None) -> None:
        super().__init__(cluster, conf, mapping)
        self.http = RestSession(cluster, conf, self.mapping, jwt_allowed=self.jwt_allowed,
                                retry_web_server_errors=self.retry_web_server_errors)
        #: the last detailed view of each job get_jobs followed, reused while its state stays
        self._detailed: dict[int, RemoteJob] = {}

    def set_mapping(self, mapping: Any) -> None:
        super().set_mapping(mapping)
        self.http.mapping = self.mapping

    def close(self) -> None:
        self.http.close()

    # ------------------------------------------------------------------ flavour hooks (OAR 3 overrides)

    def _job_path(self, remote_id: int) -> str:
        return f"jobs/{int(remote_id)}"

    def _bulk_query(self, ids: Sequence[int]) -> tuple[str, list[tuple[str, Any]]]:
        return "jobs/details", [("ids", ":".join(str(int(i)) for i in ids))]

    def _states_query(self, ids: Sequence[int]) -> tuple[str, list[tuple[str, Any]]] | None:
        """The plain job list (id and state, one SQL query in OAR) of these jobs; None: the
        flavour has none known to be cheap, details are asked for every time."""
        return "jobs", [("ids", ":".join(str(int(i)) for i in ids))]

    def _running_query(self) -> tuple[str, list[tuple[str, Any]]]:
        return "jobs/details", [("state", "Running")]

    def _array_query(self, array_id: int) -> tuple[str, list[tuple[str, Any]]]:
        return "jobs/details", [("array", int(array_id))]

    def _resources_query(self) -> tuple[str, list[tuple[str, Any]]]:
        return "resources/full", []

    def _media(self, path: str, tail: int | None) -> tuple[str, list[tuple[str, Any]]]:
        abs_path = path if path.startswith("/") else "/" + path
        params: list[tuple[str, Any]] = [("tail", int(tail))] if tail else []
        return "media" + quote(abs_path, safe="/~@+,=:-._"), params

    # ------------------------------------------------------------------ interface

    def check_api(self) -> bool:
        try:
            self.http.get("", default_code="GET_JOBS", timeout=min(self.http.timeout, 30))
            return True
        except ClusterAPIError as exc:
            log.info("API of cluster %s does not answer: %s", self.cluster.name, exc)
            return False

    def build_payloads(self, request: JobRequest) -> list[tuple[dict[str, Any], list[int]]]:
        """POST bodies for a request, each with the parameter positions it covers."""
        params = list(request.params)
        common = self._common_payload(request)
        if not params:
            return [(common | {"command": request.command}, [])]
        payloads: list[tuple[dict[str, Any], list[int]]] = []
        clean = [i for i, p in enumerate(params) if "#" not in p and p.strip() and "\n" not in p]
        if clean:
            payloads.append((common | {"command": request.command,
                                       "param_file": "\n".join(params[i] for i in clean)}, clean))
        for i, p in enumerate(params):
            if i not in set(clean):
                line = p.replace("\r", " ").replace("\n", " ")
                payloads.append((common | {"command": f"{request.command} {escape_for_oar25_command(line)}"},
                                 [i]))
        return payloads

    def _common_payload(self, request: JobRequest) -> dict[str, Any]:
        resources = request.resources or "/resource_id=1"
        if request.walltime and "walltime=" not in resources:
            resources = f"{resources},walltime={request.walltime}"
        body: dict[str, Any] = {"resource": resources}
        types = [t.strip() for entry in request.types for t in str(entry).split(",") if t.strip()]
        if types:
            body["type"] = types
        # empty strings are not sent (CiGri3 sent "" for an undefined property/project)
        for key in ("name", "directory", "property", "project", "stdout", "stderr"):
            value = getattr(request, key)
            if value is not None and str(value).strip() != "":
                body[key] = value
        return body

    def submit(self, request: JobRequest, user: str) -> list[int]:
        ids: list[int | None] = [None] * max(1, len(request.params))
        for body, positions in self.build_payloads(request):
            answer = self.http.request("POST", "jobs", default_code="SUBMIT_JOB", user=user, body=body)
            got = self._submitted_ids(answer, body, request, positions, user)
            for pos, rid in zip(positions or [0], got, strict=True):
                ids[pos] = rid
        return [int(i) for i in ids if i is not None]

    def _submitted_ids(self, answer: Any, body: dict[str, Any], request: JobRequest, positions: list[int],
                       user: str) -> list[int]:
        first = _int_or_none(answer.get("id")) if isinstance(answer, dict) else None
        if first is None:
            raise ClusterAPIError(f"Submission to {self.cluster.name} returned no job id: {str(answer)[:300]}",
                                  code="SUBMIT_JOB", event_open=True, ambiguous=True)
        wanted = len(positions) or 1
        if "param_file" not in body:
            return [first]
        listed = [int(x) for x in _JOB_ID_LINE.findall(str(answer.get("cmd_output") or ""))]
        if len(listed) == wanted and listed[0] == first:
            return listed
        # fallback: the array's jobs, in id order, checked against the exact parameter tail
        path, params = self._array_query(first)
        jobs = sorted(self.http.get_collection(path, params=params, user=user, default_code="GET_JOBS",
                                               style=self.style), key=lambda j: int(j.get("id", 0)))
        if len(jobs) != wanted:
            raise ClusterAPIError(f"Array job {first} on {self.cluster.name} has {len(jobs)} sub-jobs for "
                                  f"{wanted} parameters", code="SUBMIT_JOB", event_open=True, ambiguous=True)
        lines = [request.params[i] for i in positions]
        for job, line in zip(jobs, lines, strict=True):
            if not str(job.get("command") or "").endswith(" " + line):
                log.warning("Array job %s on %s: sub-job %s command %r does not end with parameter %r",
                            first, self.cluster.name, job.get("id"), job.get("command"), line)
        return [int(j["id"]) for j in jobs]

    def get_job(self, remote_id: int, user: str | None = None) -> RemoteJob:
        data = self.http.get(self._job_path(remote_id), default_code="GET_JOB", user=user or ADMIN,
                             params=self._job_params(), identity_required=self._admin_required())
        return self.to_remote_job(data)

    def _job_params(self) -> list[tuple[str, Any]]:
        return []

    def get_jobs(self, remote_ids: Sequence[int]) -> dict[int, RemoteJob]:
        """Jobs in chunks of api_chunk_size. OAR's detailed listing costs the API several SQL
        queries per job (about 50 ms each on the testbed, seconds for a runner's in-flight
        jobs), and a runner asks every cycle: the plain listing says which jobs changed state
        since they were last detailed, and only those are detailed again (bench/harvest.py:
        the API's CPU is the cluster's, not CiGri's)."""
        ids = sorted({int(i) for i in remote_ids})
        out: dict[int, RemoteJob] = {}
        if not ids:
            return out
        chunk = int(self.cluster.api_chunk_size or 0)
        if chunk <= 0:  # bulk status disabled for this cluster: one call per job
            for rid in ids:
                try:
                    out[rid] = self.get_job(rid)
                except ClusterAPINotFound:
                    continue
            return out
        for start in range(0, len(ids), chunk):
            part = ids[start:start + chunk]
            need = part
            states_query = self._states_query(part) if any(i in self._detailed for i in part) else None
            if states_query is not None:
                path, params = states_query
                listed = self.http.get_collection(path, params=params, user=ADMIN, default_code="FILL_JOBS_CACHE",
                                                  limit=max(len(part), int(self.cluster.api_limit or 100)),
                                                  style=self.style, identity_required=self._admin_required())
                states = {_int_or_none(item.get("id")): str(item.get("state") or "") for item in listed
                          if isinstance(item, dict)}
                need = []
                for rid in part:
                    known = self._detailed.get(rid)
                    if known is not None and states.get(rid) == known.raw_state:
                        out[rid] = known
                    else:
                        need.append(rid)
            if not need:
                continue
            path, params = self._bulk_query(need)
            items = self.http.get_collection(path, params=params, user=ADMIN, default_code="FILL_JOBS_CACHE",
                                             limit=max(len(need), int(self.cluster.api_limit or 100)),
                                             style=self.style, identity_required=self._admin_required())
            for item in items:
                job = self.to_remote_job(item)
                out[job.id] = job
        self._detailed = out  # what the caller stopped asking about is forgotten
        return out

    def _admin_required(self) -> bool:
        return True

    def delete_job(self, remote_id: int, user: str) -> None:
        try:
            answer = self.http.request("DELETE", self._job_path(remote_id), default_code="DELETE_JOB", user=user)
        except ClusterAPIBadRequest as exc:
            if _ALREADY_DONE.search(str(exc)):
                log.info("Job %s on %s already finished: %s", remote_id, self.cluster.name, exc.body)
                return
            raise
        self._check_delete_answer(remote_id, answer)

    def _check_delete_answer(self, remote_id: int, answer: Any) -> None:
        return None

    def get_file(self, path: str, user: str, tail: int = 0) -> str:
        url, params = self._media(path, tail)
        return str(self.http.get(url, params=params, default_code="GET_MEDIA", user=user, raw=True))

    def delete_file(self, path: str, user: str) -> None:
        url, params = self._media(path, None)
        self.http.request("DELETE", url, params=params, default_code="DELETE_MEDIA", user=user)

    def get_resources(self) -> list[dict[str, Any]]:
        path, params = self._resources_query()
        items = self.http.get_collection(path, params=params, default_code="GET_JOBS", style=self.style)
        return filter_resources((self._normalise_resource(r) for r in items), self.cluster.properties)

    def _normalise_resource(self, r: dict[str, Any]) -> dict[str, Any]:
        r = dict(r)
        r.pop("links", None)
        if "id" not in r and "resource_id" in r:
            r["id"] = r["resource_id"]
        r["available"] = oar_resource_available(r, time.time())
        return r

    def get_running_jobs(self) -> list[RemoteJob]:
        path, params = self._running_query()
        items = self.http.get_collection(path, params=params, user=ADMIN, default_code="GET_JOBS",
                                         style=self.style, identity_required=self._admin_required())
        return [j for j in (self.to_remote_job(i) for i in items) if j.raw_state == "Running"]

    def get_stress_factor(self) -> float:
        """GLOBAL_STRESS as a float. Raises ClusterAPIError with code GET_STRESS_FACTOR (or the
        network/HTTP code) when it cannot be read: the updator records the event and treats
        the stress as 0 (spec §8.3 'failure -> 0.0')."""
        try:
            data = self.http.get("stress_factor", default_code="GET_STRESS_FACTOR")
            return float(str(data["GLOBAL_STRESS"]).strip())
        except ClusterAPIError:
            raise
        except (KeyError, TypeError, ValueError) as exc:
            raise ClusterAPIError(f"Cluster {self.cluster.name} returned no usable GLOBAL_STRESS: {exc}",
                                  code="GET_STRESS_FACTOR", event_open=True) from exc

    # ------------------------------------------------------------------ conversion

    def to_remote_job(self, data: Any) -> RemoteJob:
        if not isinstance(data, dict) or _int_or_none(data.get("id")) is None:
            raise ClusterAPIError(f"Unexpected job description from {self.cluster.name}: {str(data)[:300]}",
                                  code="GET_JOB", event_open=True)
        types = data.get("types") or []
        if isinstance(types, dict):
            types = [k for k, v in types.items() if v]
        elif isinstance(types, str):
            types = [t for t in types.split(",") if t]
        events = [dict(e) for e in data.get("events") or [] if isinstance(e, dict)]
        for e in events:
            if e.get("type") == "WORKING_DIRECTOR":  # OAR 3 typo (job_handling.py)
                e["type"] = "WORKING_DIRECTORY"
        resources = [r for r in data.get("resources") or [] if isinstance(r, dict)]
        state = str(data.get("state") or "")
        outcome, exit_, new_id = oar_outcome(state, _int_or_none(data.get("exit_code")), events)
        reason, detail = _describe(events)
        return RemoteJob(
            id=int(data["id"]), outcome=outcome, raw_state=state, exit=exit_, new_id=new_id,
            reason=reason or state, detail=detail,
            start_time=_epoch(data.get("start_time")), stop_time=_epoch(data.get("stop_time")),
            submission_time=_epoch(data.get("submission_time")),
            launching_directory=data.get("launching_directory"),
            stdout_file=data.get("stdout_file"), stderr_file=data.get("stderr_file"),
            command=data.get("command"), owner=data.get("owner", data.get("user")),
            array_id=_int_or_none(data.get("array_id")), array_index=_int_or_none(data.get("array_index")),
            queue=data.get("queue", data.get("queue_name")), types=[str(t) for t in types],
            resources=resources, raw=data)
