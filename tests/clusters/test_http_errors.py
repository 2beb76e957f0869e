"""Every HTTP/network failure of a cluster API becomes a typed error carrying the
event code (real HTTP on 127.0.0.1: refused port, slow server, unexpected bodies)."""

from __future__ import annotations

import base64
import json
import socket
import threading
import time

import pytest

from cigri.clusters import get_adapter
from cigri.clusters.base import (
    ClusterAPIBadRequest,
    ClusterAPIConnectionError,
    ClusterAPIError,
    ClusterAPIForbidden,
    ClusterAPINotFound,
    ClusterAPIPermissionDenied,
    ClusterAPIServerError,
    ClusterAPITimeout,
    ClusterAPITimeoutPOST,
    ClusterAPITooLarge,
    ClusterConfigError,
    ClusterInfo,
    JobRequest,
)
from cigri.config import Conf
from tests.clusters.fakehttp import serve

JSON = {"Content-Type": "application/json"}


def _cluster(url: str, **kw: object) -> ClusterInfo:
    return ClusterInfo.from_row({"id": 7, "name": "fake", "api_url": url, "batch": "oar2_5",
                                 "api_auth_type": "none", "resource_unit": "core"} | kw)


def _free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def test_api_down_is_connection_refused() -> None:
    a = get_adapter(_cluster(f"http://127.0.0.1:{_free_port()}/oarapi/"))
    assert a.check_api() is False
    with pytest.raises(ClusterAPIConnectionError) as e:
        a.get_jobs([1, 2])
    assert e.value.code == "CONNECTION_REFUSED" and e.value.event_open
    with pytest.raises(ClusterAPIConnectionError) as e:
        a.submit(JobRequest(command="true"), "alice")
    assert e.value.code == "CONNECTION_REFUSED"


def test_unknown_host_is_socket_error() -> None:
    a = get_adapter(_cluster("http://no-such-host.invalid:6668/oarapi/"))
    with pytest.raises(ClusterAPIConnectionError) as e:
        a.get_stress_factor()
    assert e.value.code == "SOCKET_ERROR"


def test_slow_api_times_out_get_and_post() -> None:
    release = threading.Event()

    def slow(method, path, query, headers, body):  # noqa: ANN001, ANN202
        release.wait(20)
        return 200, JSON, b"{}"

    with serve(slow) as srv:
        a = get_adapter(_cluster(srv.url), conf=Conf(values={"REST_QUERIES_TIMEOUT": "1"}))
        try:
            with pytest.raises(ClusterAPITimeout) as e:
                a.get_job(12)
            assert e.value.code == "TIMEOUT" and e.value.event_open
            assert not isinstance(e.value, ClusterAPITimeoutPOST)
            with pytest.raises(ClusterAPITimeoutPOST) as e2:
                a.submit(JobRequest(command="true"), "alice")
            assert e2.value.code == "POST_TIMEOUT"
            assert a.check_api() is False
        finally:
            release.set()


@pytest.mark.parametrize(("status", "method", "exc", "code", "is_open"), [
    (400, "GET", ClusterAPIBadRequest, "CLUSTER_API_BAD_REQUEST_ERROR", False),
    (401, "POST", ClusterAPIPermissionDenied, "PERMISSION_DENIED", False),
    (403, "DELETE", ClusterAPIForbidden, "FORBIDDEN", False),
    (404, "GET", ClusterAPINotFound, None, True),
    (404, "POST", ClusterAPIError, "SUBMIT_JOB", True),
    (413, "POST", ClusterAPITooLarge, "REQUEST_TOO_LARGE", False),
    (413, "GET", ClusterAPIError, "GET_JOB", True),
    (500, "GET", ClusterAPIServerError, "CLUSTER_API_SERVER_ERROR", False),
    (502, "DELETE", ClusterAPIServerError, "CLUSTER_API_SERVER_ERROR", False),
    (418, "GET", ClusterAPIError, "GET_JOB", True),
])
def test_http_status_mapping(status: int, method: str, exc: type, code: str | None, is_open: bool) -> None:
    body = b"<html><body>Internal <b>boom</b> from apache</body></html>"

    def h(m, path, query, headers, b):  # noqa: ANN001, ANN202
        return status, {"Content-Type": "text/html"}, body

    with serve(h) as srv:
        a = get_adapter(_cluster(srv.url))
        with pytest.raises(exc) as e:
            if method == "GET":
                a.get_job(5, "alice")
            elif method == "POST":
                a.submit(JobRequest(command="true"), "alice")
            else:
                a.delete_job(5, "alice")
        assert type(e.value) is exc
        assert e.value.code == code
        if code is not None:
            assert e.value.event_open is is_open
        assert e.value.status == status
        assert "boom" in str(e.value)  # the body is quoted in the message


def test_json_error_body_and_non_json_success() -> None:
    def h(m, path, query, headers, b):  # noqa: ANN001, ANN202
        if path.endswith("stress_factor"):
            return 200, {"Content-Type": "text/html"}, b"<html>not json</html>"
        if path.startswith("/oarapi/jobs/"):
            return 200, JSON, b'{"state": "Running"}'  # a job without id
        return 500, JSON, json.dumps({"code": 500, "title": "Oar server error",
                                      "message": "Oarsub command exited with status 1: Unknown option"}).encode()

    with serve(h) as srv:
        a = get_adapter(_cluster(srv.url))
        with pytest.raises(ClusterAPIServerError) as e:
            a.submit(JobRequest(command="true"), "alice")
        assert "Unknown option" in str(e.value)
        with pytest.raises(ClusterAPIError) as e2:
            a.get_stress_factor()
        assert e2.value.code == "GET_STRESS_FACTOR" and e2.value.event_open
        with pytest.raises(ClusterAPIError) as e3:
            a.get_job(3)
        assert e3.value.code == "GET_JOB"


def test_headers_identity_password_auth_and_chunking() -> None:
    def h(m, path, query, headers, b):  # noqa: ANN001, ANN202
        if path.startswith("/oarapi/jobs/9"):
            return 200, JSON, b'{"id": 9, "state": "Waiting"}'
        ids = dict(query).get("ids", "")
        items = [{"id": int(i), "state": "Running"} for i in ids.split(":") if i]
        return 200, JSON, json.dumps({"items": items, "total": len(items), "offset": 0, "links": []}).encode()

    with serve(h) as srv:
        a = get_adapter(_cluster(srv.url, api_auth_type="password", api_username="cigri",
                                 api_password="s3cret", api_chunk_size=2),
                        mapping={"alice": "alice_on_cluster"})
        jobs = a.get_jobs([5, 1, 4, 2, 3])
        assert sorted(jobs) == [1, 2, 3, 4, 5]
        assert len(srv.requests) == 3  # chunks of api_chunk_size
        method, path, query, headers, _ = srv.requests[0]
        assert path == "/oarapi/jobs/details" and dict(query)["ids"] == "1:2"
        assert headers["X_REMOTE_IDENT"] == "oar"  # bulk status as the admin identity
        assert headers["Accept"] == "application/json"
        assert headers["Authorization"] == "Basic " + base64.b64encode(b"cigri:s3cret").decode()
        a.get_job(9, "alice")
        assert srv.requests[-1][3]["X_REMOTE_IDENT"] == "alice_on_cluster"  # users_mapping


def test_bad_auth_configuration_is_reported() -> None:
    a = get_adapter(_cluster("http://127.0.0.1:1/oarapi/", api_auth_type="cert"), conf=Conf(values={}))
    with pytest.raises(ClusterConfigError) as e:
        a.get_jobs([1])
    assert "certificate" in str(e.value) and e.value.code == "FILL_JOBS_CACHE"
    b = get_adapter(_cluster("http://127.0.0.1:1/oarapi/", api_auth_type="jwt"))
    with pytest.raises(ClusterConfigError) as e2:
        b.submit(JobRequest(command="true"), "alice")
    assert "oar3" in str(e2.value)


def test_connection_reset_is_typed() -> None:
    srv_sock = socket.socket()
    srv_sock.bind(("127.0.0.1", 0))
    srv_sock.listen(5)
    port = srv_sock.getsockname()[1]
    stop = threading.Event()

    def rst() -> None:
        srv_sock.settimeout(0.2)
        while not stop.is_set():
            try:
                c, _ = srv_sock.accept()
            except OSError:
                continue
            c.recv(1000)
            c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
            c.close()

    t = threading.Thread(target=rst, daemon=True)
    t.start()
    try:
        a = get_adapter(_cluster(f"http://127.0.0.1:{port}/oarapi/"))
        with pytest.raises(ClusterAPIConnectionError) as e:
            a.get_job(1)
        assert e.value.code == "CONNECTION_RESET"
    finally:
        stop.set()
        time.sleep(0.3)
        srv_sock.close()


def test_transient_web_server_500_is_retried_once_but_api_errors_are_not() -> None:
    answers = [(500, {"Content-Type": "text/html"}, b"<html>Internal Server Error</html>"),
               (201, JSON, b'{"id": 41, "cmd_output": "OAR_JOB_ID=41\\n"}')]

    def h(m, path, query, headers, b):  # noqa: ANN001, ANN202
        return answers.pop(0) if answers else (500, JSON, b'{"code":500,"title":"Oar server error"}')

    with serve(h) as srv:
        a = get_adapter(_cluster(srv.url))
        assert a.submit(JobRequest(command="true"), "alice") == [41]  # FastCGI hiccup retried
        n = len(srv.requests)
        with pytest.raises(ClusterAPIServerError):
            a.submit(JobRequest(command="true"), "alice")  # the API's own 500: never resubmitted
        assert len(srv.requests) == n + 1


def test_tls_to_a_plain_http_server_is_ssl_error_and_secrets_stay_out_of_messages() -> None:
    def h(m, path, query, headers, b):  # noqa: ANN001, ANN202
        return 401, JSON, b'{"code":401,"title":"Permission denied"}'

    with serve(h) as srv:
        https = srv.url.replace("http://", "https://")
        a = get_adapter(_cluster(https, api_auth_type="password", api_username="cigri", api_password="s3cret"))
        with pytest.raises(ClusterAPIConnectionError) as e:
            a.get_jobs([1])
        assert e.value.code == "SSL_ERROR" and e.value.event_open
        assert "s3cret" not in str(e.value)
        b = get_adapter(_cluster(srv.url, api_auth_type="password", api_username="cigri", api_password="s3cret"))
        with pytest.raises(ClusterAPIPermissionDenied) as e2:
            b.submit(JobRequest(command="true"), "alice")
        assert "s3cret" not in str(e2.value) and "Permission denied" in str(e2.value)
