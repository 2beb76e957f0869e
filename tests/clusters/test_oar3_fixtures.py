"""The oar3 adapter against a fake OAR 3 API (real HTTP on 127.0.0.1) that answers with the
shapes recorded on a real OAR3 server (tests/fixtures/oar3): JWT bearer, `details=1`,
repeated `job_ids=`, offset pagination without links, `resource`/`type` arrays, DELETE's
200 + `exit_status`, null fields dropped, `user`/`queue_name`, the WORKING_DIRECTOR typo."""

from __future__ import annotations

import copy
import json
import threading
from pathlib import Path
from typing import Any

import jwt
import pytest

from cigri.clusters import get_adapter
from cigri.clusters.base import (
    ClusterAPIBadRequest,
    ClusterAPIForbidden,
    ClusterAPINotFound,
    ClusterAPIPermissionDenied,
    ClusterAPIServerError,
    ClusterInfo,
    ExitStatus,
    JobRequest,
    Outcome,
    TokenNotFound,
)
from tests.clusters.fakehttp import serve

FIX = Path(__file__).resolve().parent.parent / "fixtures" / "oar3"
SECRET = "test-secret-of-the-fake-oar3-api-0123456789"
JSON = {"Content-Type": "application/json"}


def fixture(name: str) -> Any:
    return json.loads((FIX / name).read_text())


def token(user: str) -> str:
    return jwt.encode({"user": user, "exp": 4102444800, "date": "2026-01-01 00:00:00"}, SECRET, algorithm="HS256")


class FakeOar3:
    """Just enough OAR 3 API, with the recorded answer shapes."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.jobs: dict[int, dict[str, Any]] = {}
        self.next_id = 100
        self.posted: list[dict[str, Any]] = []
        tpl = fixture("resources_detailed_limit2.json")["items"][0]
        self.resources = []
        for i in range(1, 9):
            node = f"node{(i - 1) // 4 + 1}"
            self.resources.append(tpl | {"id": i, "core": i, "network_address": node, "host": node})

    def user(self, headers: dict[str, str]) -> tuple[str | None, tuple[int, dict[str, str], bytes] | None]:
        auth = headers.get("Authorization")
        if not auth:
            return None, (403, JSON, b'{"detail":"Not authenticated"}')
        if not auth.startswith("Bearer "):
            return None, (403, JSON, b'{"detail":"Invalid authentication credentials"}')
        try:
            return jwt.decode(auth[7:], SECRET, algorithms=["HS256"])["user"], None
        except jwt.PyJWTError:
            return None, (401, JSON, b'{"detail":"Could not validate credentials !!! "}')

    def page(self, items: list[dict[str, Any]], q: dict[str, list[str]],
             default_limit: int) -> tuple[int, dict[str, str], bytes]:
        offset = int(q.get("offset", ["0"])[0])
        limit = int(q.get("limit", [str(default_limit)])[0])
        if offset and offset >= len(items):
            return 404, JSON, b'{"detail":"Empty request"}'
        return 200, JSON, json.dumps({"total": len(items), "offset": offset,
                                      "items": items[offset:offset + limit]}).encode()

    def kill(self, jid: int, cause: str) -> None:
        """End a job as OAR 3 does for a best-effort or walltime kill: `Error`, no exit_code,
        the events with ids out of the order of their dates, as the real OAR 3 does."""
        types = {"BESTEFFORT_KILL": ["BESTEFFORT_KILL", "FRAG_JOB_REQUEST", "SEND_KILL_JOB",
                                     "SWITCH_INTO_ERROR_STATE"],
                 "WALLTIME": ["FRAG_JOB_REQUEST", "WALLTIME", "SEND_KILL_JOB"]}[cause]
        ids = [31, 29, 30, 32]
        self.jobs[jid].update(state="Error", exit_code=None, events=[
            {"id": ids[i], "type": t, "job_id": jid, "description": t.lower(), "to_check": "NO", "date": 100 + i}
            for i, t in enumerate(types)])

    def view(self, job: dict[str, Any], details: bool) -> dict[str, Any]:
        j = {k: v for k, v in job.items() if v is not None}  # OAR 3 drops null fields
        if not details:
            for k in ("resources", "nodes", "events", "types", "walltime", "actual_resources"):
                j.pop(k, None)
        return j

    def __call__(self, method: str, path: str, query: list[tuple[str, str]], headers: dict[str, str],
                 body: bytes) -> tuple[int, dict[str, str], bytes]:
        q: dict[str, list[str]] = {}
        for k, v in query:
            q.setdefault(k, []).append(v)
        with self.lock:
            return self.handle(method, path, q, headers, body)

    def handle(self, method: str, path: str, q: dict[str, list[str]], headers: dict[str, str],
               body: bytes) -> tuple[int, dict[str, str], bytes]:
        if path == "/" and method == "GET":
            return 200, JSON, json.dumps(fixture("root.json")).encode()
        if path == "/stress_factor":
            return 200, JSON, json.dumps(fixture("stress_factor.json")).encode()
        if path == "/resources":
            items = self.resources if q.get("detailed") else [
                {k: r[k] for k in ("id", "network_address", "state", "available_upto")} for r in self.resources]
            return self.page(items, q, 25)
        if path == "/jobs" and method == "POST":
            user, err = self.user(headers)
            if err:
                return err
            req = json.loads(body)
            self.posted.append(req)
            if not isinstance(req.get("resource", []), list) or not isinstance(req.get("type", []), list):
                return 422, JSON, json.dumps(fixture("post_422.json")).encode()
            if any("=abc" in r for r in req.get("resource", [])):  # a malformed resource (OAR 3 answers 400)
                return 500, {"Content-Type": "text/plain; charset=utf-8"}, b"Internal Server Error"
            params = req["param_file"].split("\n") if "param_file" in req else [None]
            first = self.next_id
            for idx, p in enumerate(params, start=1):
                jid = self.next_id
                self.next_id += 1
                j = copy.deepcopy(fixture("job_14_details.json"))
                cmd = req["command"] + (f" {p}" if p is not None else "")
                j.update(id=jid, array_id=first, array_index=idx, user=user, command=cmd, state="Waiting",
                         exit_code=None, start_time=0, stop_time=0, events=[],
                         stderr_file=f"OAR.{jid}.stderr", types={t: True for t in req.get("type", [])})
                self.jobs[jid] = j
            # out of order on purpose: the adapter must order sub-jobs by array_index
            return 200, JSON, json.dumps({"id": first}).encode()
        if path == "/jobs" and method == "GET":
            jobs = list(self.jobs.values())
            if "job_ids" in q:
                wanted = {int(x) for x in q["job_ids"]}
                jobs = [j for j in jobs if j["id"] in wanted]
            elif "array" in q:
                jobs = [j for j in jobs if j["array_id"] == int(q["array"][0])]
                jobs.reverse()
            if "states" in q:
                jobs = [j for j in jobs if j["state"] in q["states"]]
            return self.page([self.view(j, bool(q.get("details"))) for j in jobs], q, 500)
        if path.startswith("/jobs/"):
            jid = int(path.split("/")[2])
            if method == "DELETE":
                user, err = self.user(headers)
                if err:
                    return err
                if jid not in self.jobs:  # an unknown job (OAR 3 answers 404)
                    return 200, JSON, json.dumps({"id": jid, "exit_status": 7, "cmd_output": (
                        f"Deleting the job = {jid} ...Cannot frag {jid} ; Job does not exist. -3\n")}).encode()
                if self.jobs[jid]["user"] != user:
                    return 200, JSON, json.dumps(fixture("delete_wrong_user.json") | {"id": jid}).encode()
                self.jobs[jid].update(state="Error")
                self.jobs[jid]["events"].append({"id": 1, "type": "FRAG_JOB_REQUEST", "job_id": jid,
                                                 "description": "frag", "to_check": "YES", "date": 1})
                return 200, JSON, json.dumps(fixture("delete_14.json") | {"id": jid}).encode()
            if len(path.split("/")) > 3:
                return 404, JSON, b'{"detail":"Not Found"}'
            if jid not in self.jobs:
                return 500, {"Content-Type": "text/plain; charset=utf-8"}, b"Internal Server Error"
            return 200, JSON, json.dumps(self.view(self.jobs[jid], bool(q.get("details")))).encode()
        if path == "/media":
            user, err = self.user(headers)
            if err:
                return err
            return 200, {"Content-Type": "application/octet-stream"}, b"line1\nline2\nerr\n"
        return 404, JSON, b'{"detail":"Not Found"}'


@pytest.fixture
def oar3() -> Any:
    fake = FakeOar3()
    with serve(fake, close_after_5xx=True) as srv:  # OAR 3's uvicorn drops the connection after a 500
        info = ClusterInfo.from_row({"id": 3, "name": "o3", "api_url": f"http://127.0.0.1:{srv.server_address[1]}/",
                                     "batch": "oar3", "api_auth_type": "jwt", "resource_unit": "core",
                                     "api_chunk_size": 2, "api_limit": 3})
        adapter = get_adapter(info, mapping={"alice": f"Bearer {token('alice')}", "bob": token("bob"),
                                             "oar": f"Bearer {token('oar')}"})
        yield adapter, fake, srv


def test_submit_array_with_jwt_and_arrays(oar3: Any) -> None:
    a, fake, srv = oar3
    params = ["1", "10", "1 0", "a#b", ""]
    ids = a.submit(JobRequest(command=r"echo \$HOME \$CIGRI_CAMPAIGN_ID; run", params=params,
                              resources="/core=1", walltime="00:10:00", types=["besteffort"],
                              name="cigri.1", property="", project=None), "alice")
    body = fake.posted[-1]
    assert body["resource"] == ["/core=1,walltime=00:10:00"]
    assert body["type"] == ["besteffort"]
    assert body["command"] == "echo $HOME $CIGRI_CAMPAIGN_ID; run"  # every \$ unescaped
    assert body["param_file"] == "1\n10\n1 0\na#b\n"  # 5 lines, the last one empty: split on \n only
    assert "property" not in body and "project" not in body  # empty values not sent
    post = next(r for r in srv.requests if r[0] == "POST")
    assert post[3]["Authorization"].startswith("Bearer ")
    jobs = a.get_jobs(ids)
    assert [jobs[i].command.split("; run")[1] for i in ids] == [" " + p for p in params]
    assert [jobs[i].array_index for i in ids] == [1, 2, 3, 4, 5]


def test_single_param_folded_and_bare_token_gets_bearer(oar3: Any) -> None:
    a, fake, srv = oar3
    [rid] = a.submit(JobRequest(command="task", params=["only one"]), "bob")
    assert "param_file" not in fake.posted[-1] and fake.posted[-1]["command"] == "task only one"
    assert fake.posted[-1]["type"] == []
    assert srv.requests[-1][3]["Authorization"] == f"Bearer {token('bob')}"
    j = a.get_job(rid, "bob")
    assert j.owner == "bob" and j.queue == "default" and j.exit is None and j.start_time is None
    assert (j.outcome, j.raw_state) == (Outcome.WAITING, "Waiting")


def test_bulk_status_details_job_ids_and_chunks(oar3: Any) -> None:
    a, fake, srv = oar3
    ids = a.submit(JobRequest(command="t", params=["a", "b", "c", "d", "e"]), "alice")
    fake.jobs[ids[0]].update(state="Terminated", exit_code=768, start_time=10, stop_time=20)
    fake.jobs[ids[1]].update(state="Error", events=[{"id": 9, "type": "WORKING_DIRECTOR", "job_id": ids[1],
                                                     "description": "Cannot go into the working directory"}])
    n = len(srv.requests)
    jobs = a.get_jobs(ids)
    gets = srv.requests[n:]
    assert len(gets) == 3  # api_chunk_size 2
    assert all(dict(r[2])["details"] == "1" for r in gets)
    assert [v for k, v in gets[0][2] if k == "job_ids"] == [str(ids[0]), str(ids[1])]
    assert (jobs[ids[0]].outcome, jobs[ids[0]].exit, jobs[ids[0]].start_time) == (Outcome.DONE, ExitStatus(code=3), 10)
    assert jobs[ids[1]].outcome is Outcome.FAILED_TO_START  # OAR 3 typo understood
    assert jobs[ids[1]].reason == "WORKING_DIRECTORY"
    assert jobs[ids[2]].exit is None  # field absent in OAR 3 answers


def test_resources_offset_pagination_and_filter(oar3: Any) -> None:
    a, fake, srv = oar3
    res = a.get_resources()  # api_limit 3 over 8 resources: offsets 0, 3, 6
    assert [r["id"] for r in res] == list(range(1, 9))
    offsets = [dict(r[2]).get("offset") for r in srv.requests if r[1] == "/resources"]
    assert offsets == [None, "3", "6"]
    a.cluster.properties = "host='node2'"
    assert [r["core"] for r in a.get_resources()] == [5, 6, 7, 8]


def test_delete_exit_status(oar3: Any) -> None:
    a, fake, srv = oar3
    [rid] = a.submit(JobRequest(command="sleep 100"), "alice")
    with pytest.raises(ClusterAPIBadRequest) as e:
        a.delete_job(rid, "bob")  # OAR 3 answers 200 with exit_status 1
    assert "not the right user" in str(e.value)
    a.delete_job(rid, "alice")
    assert a.get_job(rid).outcome is Outcome.KILLED


def test_media_stress_and_errors(oar3: Any) -> None:
    a, fake, srv = oar3
    [rid] = a.submit(JobRequest(command="true"), "alice")
    assert a.get_file("/home/alice/OAR.1.stderr", "alice", tail=5) == "line1\nline2\nerr\n"
    media = srv.requests[-1]
    assert media[1] == "/media" and dict(media[2]) == {"path_filename": "/home/alice/OAR.1.stderr", "tail": "5"}
    assert a.get_stress_factor() == pytest.approx(0.1)
    assert a.check_api()
    with pytest.raises(ClusterAPIServerError):
        a.get_job(999999)  # OAR 3 answers 500 for an unknown job
    with pytest.raises(TokenNotFound) as e:
        a.submit(JobRequest(command="true"), "carol")
    assert e.value.code == "SUBMIT_JOB"
    a.set_mapping({"alice": "Bearer not.a.jwt"})
    with pytest.raises(ClusterAPIPermissionDenied):
        a.submit(JobRequest(command="true"), "alice")
    a.set_mapping({"alice": token("alice")})
    a.cluster.api_auth_header = "X-Misconfigured"  # no Authorization header: OAR 3 answers 403
    with pytest.raises(ClusterAPIForbidden):
        a.submit(JobRequest(command="true"), "alice")
    # bulk and single status work without an `oar` token: OAR 3 GETs are anonymous
    a.set_mapping({})
    assert a.get_jobs([1]) == {}
    assert a.get_job(rid).id == rid


def test_a_500_is_the_answer_to_that_request_not_a_dead_network(oar3: Any) -> None:
    """#11.5: uvicorn answers 500 to one bad request and drops the connection: the adapter
    reports that request's server error (not CONNECTION_RESET, not ambiguous), and the next
    request goes on a new connection."""
    a, fake, srv = oar3
    n = len(srv.requests)
    with pytest.raises(ClusterAPIServerError) as e:
        a.submit(JobRequest(command="task", resources="/nodes=abc"), "alice")
    assert e.value.code == "CLUSTER_API_SERVER_ERROR" and not e.value.event_open and not e.value.ambiguous
    assert len(srv.requests) == n + 1  # not retried on the dead connection
    [rid] = a.submit(JobRequest(command="task"), "alice")  # a fresh connection
    assert a.get_job(rid, "alice").outcome is Outcome.WAITING


def test_delete_of_an_unknown_job_is_not_found(oar3: Any) -> None:
    a, fake, srv = oar3
    with pytest.raises(ClusterAPINotFound):
        a.delete_job(999999, "alice")  # exit_status 7


@pytest.mark.parametrize("cause,outcome", [("BESTEFFORT_KILL", Outcome.PREEMPTED), ("WALLTIME", Outcome.WALLTIME)])
def test_kill_events_out_of_id_order(oar3: Any, cause: str, outcome: Outcome) -> None:
    a, fake, srv = oar3
    [rid] = a.submit(JobRequest(command="sleep 100", types=["besteffort"]), "alice")
    fake.kill(rid, cause)
    j = a.get_job(rid, "alice")
    assert (j.outcome, j.exit, j.raw_state) == (outcome, None, "Error")
