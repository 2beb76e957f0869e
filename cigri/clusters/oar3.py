"""OAR 3 REST API adapter, built from real OAR 3 answers (tests/fixtures/oar3: no OAR 3 can
run here, tests use a fake OAR 3 HTTP server serving them).

Differences from OAR 2.5 handled here: JWT bearer tokens (`jwt` auth), `resource` and
`type` as JSON arrays, one-line `param_file` folded into the command, every CiGri escape
`\\$X` un-escaped (OAR 3 does not evaluate the command at submission; CiGri3 undid only `\\$HOME`),
`jobs?details=1` with repeated `job_ids=`/`states=`, offset/total pagination, sub-job ids
ordered by `array_index`, `DELETE` answering 200 with `exit_status`, media through
`?path_filename=`, and job fields `user`/`queue_name`/types dict/`WORKING_DIRECTOR`
normalised by `to_remote_job`."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from cigri.clusters.base import (
    ClusterAPIBadRequest,
    ClusterAPIError,
    ClusterAPINotFound,
    JobRequest,
)
from cigri.clusters.oar2_5 import _ALREADY_DONE, Oar25Adapter, _int_or_none

_UNESCAPE = re.compile(r"\\([$`])")


class Oar3Adapter(Oar25Adapter):
    batch = "oar3"
    style = "oar3"
    jwt_allowed = True
    #: uvicorn answers 500 for the request that failed and closes the connection (without
    #: `Connection: close`): a 500 is that request's answer, never retried
    retry_web_server_errors = False

    def _job_path(self, remote_id: int) -> str:
        return f"jobs/{int(remote_id)}"

    def _job_params(self) -> list[tuple[str, Any]]:
        return [("details", 1)]  # without it OAR 3 gives no events (CiGri3 bug)

    def _bulk_query(self, ids: Sequence[int]) -> tuple[str, list[tuple[str, Any]]]:
        return "jobs", [("details", 1)] + [("job_ids", int(i)) for i in ids]

    def _states_query(self, ids: Sequence[int]) -> tuple[str, list[tuple[str, Any]]] | None:
        return None  # not measured on a real OAR 3: details every time, as before

    def _running_query(self) -> tuple[str, list[tuple[str, Any]]]:
        return "jobs", [("details", 1), ("states", "Running")]

    def _array_query(self, array_id: int) -> tuple[str, list[tuple[str, Any]]]:
        return "jobs", [("details", 1), ("array", int(array_id))]

    def _resources_query(self) -> tuple[str, list[tuple[str, Any]]]:
        return "resources", [("detailed", "true")]

    def _media(self, path: str, tail: int | None) -> tuple[str, list[tuple[str, Any]]]:
        params: list[tuple[str, Any]] = [("path_filename", path if path.startswith("/") else "/" + path)]
        if tail:
            params.append(("tail", int(tail)))
        return "media", params

    def _admin_required(self) -> bool:
        return False  # OAR 3 GETs are anonymous: the `oar` token is sent when registered

    def build_payloads(self, request: JobRequest) -> list[tuple[dict[str, Any], list[int]]]:
        params = list(request.params)
        body = self._common_payload(request)
        body["resource"] = [body["resource"]]
        body["type"] = list(body.get("type", []))
        command = _UNESCAPE.sub(r"\1", request.command)
        if len(params) == 1:
            return [(body | {"command": f"{command} {params[0]}"}, [0])]
        if not params:
            return [(body | {"command": command}, [])]
        # OAR 3 splits param_file on "\n" only (no comment/blank stripping): never add a trailing newline
        return [(body | {"command": command, "param_file": "\n".join(p.replace("\n", " ") for p in params)},
                 list(range(len(params))))]

    def _submitted_ids(self, answer: Any, body: dict[str, Any], request: JobRequest, positions: list[int],
                       user: str) -> list[int]:
        first = _int_or_none(answer.get("id")) if isinstance(answer, dict) else None
        if first is None:
            raise ClusterAPIError(f"Submission to {self.cluster.name} returned no job id: {str(answer)[:300]}",
                                  code="SUBMIT_JOB", event_open=True, ambiguous=True)
        if "param_file" not in body:
            return [first]
        path, params = self._array_query(first)
        jobs = self.http.get_collection(path, params=params, user=user, default_code="GET_JOBS",
                                        style=self.style, identity_required=False)
        jobs = sorted(jobs, key=lambda j: (_int_or_none(j.get("array_index")) or 0, int(j.get("id", 0))))
        if len(jobs) != len(positions):
            raise ClusterAPIError(f"Array job {first} on {self.cluster.name} has {len(jobs)} sub-jobs for "
                                  f"{len(positions)} parameters", code="SUBMIT_JOB", event_open=True, ambiguous=True)
        return [int(j["id"]) for j in jobs]

    def _check_delete_answer(self, remote_id: int, answer: Any) -> None:
        """OAR 3 answers 200 even when oardel failed: look at exit_status (1: not the job's
        owner, 6: already finished or killed, 7: no such job)."""
        if not isinstance(answer, dict):
            return
        status = _int_or_none(answer.get("exit_status"))
        if not status:
            return
        out = str(answer.get("cmd_output") or "")
        if _ALREADY_DONE.search(out):
            return
        msg = f"DELETE job {remote_id} on {self.cluster.name} failed (exit_status {status}): {' '.join(out.split())}"
        if status == 7 or "not exist" in out or "unknown" in out.lower():  # 7: no such job
            raise ClusterAPINotFound(msg, body=out)
        raise ClusterAPIBadRequest(msg, body=out)
