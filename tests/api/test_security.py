"""Issue #10: users' inputs must never reach files or resources with the server's rights.
Each test failed on the API before its fix (the in-process application runs as root here,
the worst case; tests/api/test_server_cli.py runs the shipped way, as user cigri)."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from fastapi.testclient import TestClient
from sqlalchemy.engine import Engine

from cigri.db import schema
from tests.api.conftest import JDL, PeerIdentity, ensure_user


def _campaigns(pg_engine: Engine) -> int:
    with pg_engine.connect() as c:
        return int(c.execute(sa.select(sa.func.count()).select_from(schema.campaigns)).scalar_one())


# --------------------------------------------------------------------------- item 1
def test_param_file_is_never_opened_by_the_server(alice: TestClient, pg_engine: Engine,
                                                  clusters: dict[str, int]) -> None:
    """bob's world-readable file in his private (0700) home, and root's own files: the API
    refuses a param_file outright, says why, and leaks neither existence nor content."""
    pw = ensure_user("bob")
    home = Path(pw.pw_dir)
    private = home / "cigri-private-dir"
    private.mkdir(exist_ok=True)
    os.chown(private, pw.pw_uid, pw.pw_gid)
    os.chmod(private, 0o700)
    secret = private / "params.txt"
    secret.write_text("bob-secret-line 1\n")
    os.chmod(secret, 0o644)
    try:
        for path in (str(secret), "/etc/shadow", "/nonexistent/file", "/dev/zero"):
            r = alice.post("/campaigns", json={"name": "steal", "param_file": path,
                                               "clusters": {"dahu": {"exec_file": "e"}}})
            assert r.status_code == 400, (path, r.text)
            msg = r.json()["message"]
            assert "param_file" in msg and "never opens files" in msg and "gridsub" in msg
            assert "bob-secret" not in r.text and "root:" not in r.text and path not in msg
        assert _campaigns(pg_engine) == 0
        # the same lines sent as params (what gridsub does) are accepted
        r = alice.post("/campaigns", json={"name": "ok", "params": ["a 1"], "clusters": {"dahu": {"exec_file": "e"}}})
        assert r.status_code == 201
    finally:
        shutil.rmtree(private, ignore_errors=True)


# --------------------------------------------------------------------------- item 5
def test_body_size_limit_is_configurable(api_conf: Any, pg_engine: Engine, clusters: dict[str, int]) -> None:
    from cigri.api.app import create_app

    app = create_app(api_conf.with_values(API_MAX_BODY_SIZE="20000"))
    with TestClient(PeerIdentity(app, "alice"), raise_server_exceptions=False) as alice:
        big = JDL | {"params": [f"p{i} {'x' * 100}" for i in range(300)]}
        big.pop("nb_jobs")
        r = alice.post("/campaigns", json=big)
        assert r.status_code == 413 and "API_MAX_BODY_SIZE" in r.json()["message"]
        # streamed without Content-Length: cut off as well
        r = alice.post("/campaigns", content=iter([json.dumps(big).encode()[i:i + 4096]
                                                   for i in range(0, len(json.dumps(big)), 4096)]),
                       headers={"content-type": "application/json"})
        assert r.status_code == 413
        assert _campaigns(pg_engine) == 0
        cid = alice.post("/campaigns", json=JDL).json()["id"]
        r = alice.post(f"/campaigns/{cid}/jobs", json=[f"t{i} {'y' * 100}" for i in range(300)])
        assert r.status_code == 413
        # small bodies (events, tokens, subscriptions) have their own small cap
        r = alice.post("/notifications/mail", json={"identity": "a@x", "severity": "low", "pad": "z" * 100_000})
        assert r.status_code == 413


def test_deep_nesting_nan_and_infinity_are_refused(alice: TestClient, root: TestClient, pg_engine: Engine,
                                                   clusters: dict[str, int]) -> None:
    deep = b'{"name": "d", "nb_jobs": 1, "clusters": {"dahu": {"exec_file": "e"}}, "x": ' + b"[" * 100_000 \
        + b"]" * 100_000 + b"}"
    r = alice.post("/campaigns", content=deep, headers={"content-type": "application/json"})
    assert r.status_code == 400 and "nested deeper" in r.json()["message"]
    r = alice.post("/campaigns", content=b'{"name": "d", "nb_jobs": 1, "clusters": {"dahu": {"exec_file": "e"}}, '
                   b'"x": ' + b"[" * 40 + b"]" * 40 + b"}", headers={"content-type": "application/json"})
    assert r.status_code == 400 and "nested deeper than 32" in r.json()["message"]
    for const in (b"NaN", b"Infinity", b"-Infinity"):
        r = alice.post("/campaigns", content=b'{"name": "n", "nb_jobs": 1, "clusters": {"dahu": {"exec_file": "e"}}, '
                       b'"weight": ' + const + b"}", headers={"content-type": "application/json"})
        assert r.status_code == 400 and "not a JSON number" in r.json()["message"], r.text
        r = root.post("/events", content=b'{"class": "log", "code": "X", "message": "m", "job_id": ' + const + b"}",
                      headers={"content-type": "application/json"})
        assert r.status_code == 400 and "not a JSON number" in r.json()["message"]
    deep_event = b'{"class": "log", "code": "X", "message": ' + b"[" * 10_000 + b"]" * 10_000 + b"}"
    r = root.post("/events", content=deep_event, headers={"content-type": "application/json"})
    assert r.status_code == 400
    assert _campaigns(pg_engine) == 0


def test_unknown_jdl_fields_are_bounded(alice: TestClient, pg_engine: Engine, clusters: dict[str, int]) -> None:
    r = alice.post("/campaigns", json=JDL | {"comment": "c" * 70_000})
    assert r.status_code == 400 and "Field 'comment' is unknown to CiGri and larger than" in r.json()["message"]
    r = alice.post("/campaigns", json=JDL | {"clusters": {"dahu": {"exec_file": "e", "blob": ["b" * 1000] * 100}}})
    assert r.status_code == 400 and "Field 'blob' of cluster 'dahu'" in r.json()["message"]
    r = alice.post("/campaigns", json=JDL | {f"k{i}": "v" * 60_000 for i in range(20)})
    assert r.status_code == 400 and "without its params is larger" in r.json()["message"]
    assert _campaigns(pg_engine) == 0
    # small unknown fields are still accepted, as in CiGri3
    assert alice.post("/campaigns", json=JDL | {"comment": "short"}).status_code == 201





# --------------------------------------------------------------------------- item 7
def test_token_lifetime_is_capped_by_the_server(app: Any, alice: TestClient, anon: TestClient) -> None:
    import time

    import jwt

    r = alice.post("/auth/token", json={"lifetime": 10**30})
    assert r.status_code == 201
    lifetime = int(app.state.api.auth.lifetime)
    assert r.json()["expires"] <= int(time.time()) + lifetime + 1
    claims = jwt.decode(r.json()["token"], options={"verify_signature": False})
    assert claims["exp"] - claims["iat"] <= lifetime and claims["jti"]
    # a token signed with the server's key but a longer life (an old or hand-made one) is refused
    secret = app.state.api.auth.secret()
    now = int(time.time())
    long = jwt.encode({"sub": "alice", "iss": "cigri", "iat": now, "exp": now + lifetime + 3600, "jti": "x"},
                      secret, algorithm="HS256")
    r = anon.get("/notifications", headers={"Authorization": f"Bearer {long}"})
    assert r.status_code == 403 and "lifetime" in r.json()["message"]


def test_token_of_a_deleted_account_is_refused(app: Any, root: TestClient, anon: TestClient) -> None:
    import subprocess

    assert root.post("/auth/token", json={"user": "cigri-no-such-user"}).status_code == 403
    ensure_user("cigri-gone")
    try:
        tok = root.post("/auth/token", json={"user": "cigri-gone"}).json()["token"]
        h = {"Authorization": f"Bearer {tok}"}
        assert anon.get("/notifications", headers=h).status_code == 200
    finally:
        subprocess.run(["userdel", "-r", "cigri-gone"], check=True, capture_output=True)
    r = anon.get("/notifications", headers=h)
    assert r.status_code == 403 and "no longer exists" in r.json()["message"]


def test_tokens_are_revoked_by_jti(app: Any, alice: TestClient, bob: TestClient, root: TestClient,
                                   anon: TestClient) -> None:
    import jwt

    t1, t2 = (alice.post("/auth/token").json()["token"] for _ in range(2))
    h1, h2 = ({"Authorization": f"Bearer {t}"} for t in (t1, t2))
    assert anon.get("/notifications", headers=h1).status_code == 200
    # the holder revokes the token it presents; the other token of alice still works
    r = anon.delete("/auth/token", headers=h1)
    assert r.status_code == 202
    r = anon.get("/notifications", headers=h1)
    assert r.status_code == 403 and "revoked" in r.json()["message"]
    assert anon.get("/notifications", headers=h2).status_code == 200
    # only an admin revokes by jti
    jti2 = jwt.decode(t2, options={"verify_signature": False})["jti"]
    assert bob.delete(f"/auth/token?jti={jti2}").status_code == 403
    assert anon.get("/notifications", headers=h2).status_code == 200
    assert root.delete(f"/auth/token?jti={jti2}").status_code == 202
    assert anon.get("/notifications", headers=h2).status_code == 403


# --------------------------------------------------------------------------- #11 item 9
def test_both_identity_header_spellings_from_trusted_proxies(api_conf: Any, pg_engine: Engine,
                                                             clusters: dict[str, int]) -> None:
    """CiGri3's Apache set `X_CIGRI_USER`; both spellings count, from trusted proxies only."""
    from cigri.api.app import create_app

    app = create_app(api_conf.with_values(API_TRUSTED_PROXIES="testclient"))
    with TestClient(app) as proxy:
        r = proxy.post("/campaigns", json=JDL, headers={"X_CIGRI_USER": "carol"})
        assert r.status_code == 201 and r.json()["user"] == "carol"
        r = proxy.post("/campaigns", json=JDL, headers={"X-Cigri-User": "carol"})
        assert r.status_code == 201 and r.json()["user"] == "carol"
        # a proxy that sets one spelling and lets the client's other one through: refused
        r = proxy.post("/campaigns", json=JDL, headers={"X-Cigri-User": "carol", "X_CIGRI_USER": "root"})
        assert r.status_code == 403 and "conflicting" in r.json()["message"]
    app = create_app(api_conf)  # the test client is not a trusted proxy here
    with TestClient(app) as stranger:
        r = stranger.post("/campaigns", json=JDL, headers={"X_CIGRI_USER": "carol"})
        assert r.status_code == 403 and "not a trusted proxy" in r.json()["message"]
    assert _campaigns(pg_engine) == 2


# --------------------------------------------------------------------------- item 3
def test_no_path_traversal_to_the_cluster_api(alice: TestClient, campaign: int, pg_engine: Engine) -> None:
    """A fake OAR API logs what CiGri sends it: nothing may leave its media area, however
    the dots are written (plain, percent-encoded, double-encoded), neither through
    DELETE /clusters/:id/<path> nor through a job whose launching directory has `..`."""
    from tests.clusters.fakehttp import serve
    from tests.conftest import add_cluster

    def handler(method: str, path: str, query: Any, headers: Any, body: bytes) -> tuple[int, dict[str, str], bytes]:
        if path == "/oarapi/jobs/5":
            job = {"id": 5, "state": "Terminated", "exit_code": 0, "launching_directory": "/home/alice/../../../",
                   "stdout_file": "admin/secret", "stderr_file": "OAR.%jobid%.stderr"}
            return 200, {"Content-Type": "application/json"}, json.dumps(job).encode()
        return 200, {"Content-Type": "application/json"}, b"{}"

    with serve(handler) as srv:
        cl = add_cluster(pg_engine, "fake", api_url=srv.url)
        for path in ("%2e%2e/%2e%2e/admin/x", "%252e%252e/%252e%252e/admin/x", "tmp/%2e/x",
                     "tmp/%2E%2e/admin", "a/..%2fadmin"):
            r = alice.delete(f"/clusters/{cl}/{path}")
            assert r.status_code == 400 and "not allowed" in r.json()["message"], (path, r.text)
        with pg_engine.begin() as c:
            jid = c.execute(schema.jobs.insert().values(
                campaign_id=campaign, param_id=1, state="terminated", cluster_id=cl, remote_id=5
            ).returning(schema.jobs.c.id)).scalar()
        r = alice.get(f"/jobs/{jid}/stdout")
        assert r.status_code == 400 and "not allowed" in r.json()["message"]
        # an ordinary file is still deleted through the media API
        r = alice.delete(f"/clusters/{cl}/tmp/cigri-x")
        assert r.status_code == 202, r.text
        paths = [p for _, p, *_ in srv.requests]
    assert not [p for p in paths if not (p.startswith("/oarapi/media/") or p == "/oarapi/jobs/5")], paths
    assert "/oarapi/media/tmp/cigri-x" in paths


def test_http_client_refuses_urls_outside_the_cluster_api() -> None:
    import pytest

    from cigri.clusters.base import ClusterAPIError, ClusterInfo
    from cigri.clusters.http import RestSession

    http = RestSession(ClusterInfo(id=1, name="c", api_url="http://127.0.0.1:9/oarapi/", batch="oar2_5"))
    assert http.url("media/tmp/x") == "http://127.0.0.1:9/oarapi/media/tmp/x"
    for bad_path in ("media/../../admin", "media/%2e%2e/%2e%2e/admin", "media/%252e%252e/x", "../x"):
        with pytest.raises(ClusterAPIError, match="outside the API"):
            http.url(bad_path)
