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



