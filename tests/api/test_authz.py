"""Authorization rules: a user sees and acts only on their own campaigns, jobs, events,
files, subscriptions and tokens; admins on all; identities cannot be spoofed."""

from __future__ import annotations

import getpass
import time
from typing import Any

import jwt
import sqlalchemy as sa
from fastapi.testclient import TestClient
from sqlalchemy.engine import Engine

from cigri.db import schema
from cigri.db.events import create_event
from tests.api.conftest import JDL


def _job(pg_engine: Engine, campaign: int, cluster: int) -> int:
    with pg_engine.begin() as c:
        return int(c.execute(schema.jobs.insert().values(campaign_id=campaign, param_id=1, state="running",
                                                         cluster_id=cluster, remote_id=5)
                             .returning(schema.jobs.c.id)).scalar_one())


def _state(pg_engine: Engine, campaign: int) -> str:
    with pg_engine.connect() as c:
        return str(c.execute(sa.select(schema.campaigns.c.state).where(schema.campaigns.c.id == campaign)).scalar())


def test_bob_cannot_touch_alices_campaign(alice: TestClient, bob: TestClient, campaign: int, pg_engine: Engine,
                                          clusters: dict[str, int]) -> None:
    jid = _job(pg_engine, campaign, clusters["dahu"])
    with pg_engine.begin() as c:
        eid = create_event(c, "job", "EXIT_ERROR", job_id=jid, campaign_id=campaign)
    reads = [f"/campaigns/{campaign}/jdl", f"/campaigns/{campaign}/jobs", f"/campaigns/{campaign}/jobs/1",
             f"/campaigns/{campaign}/jobs/finished", f"/campaigns/{campaign}/events", f"/events/{eid}",
             f"/jobs/{jid}", f"/jobs/{jid}/stdout", f"/jobs/{jid}/stderr", f"/jobs/{jid}/cinfos"]
    for path in reads:
        r = bob.get(path)
        assert r.status_code == 403, path
        assert "alice" not in r.text or path.startswith("/campaigns")
    writes = [("delete", f"/campaigns/{campaign}?hold=1"), ("delete", f"/campaigns/{campaign}"),
              ("put", f"/campaigns/{campaign}?state=paused"), ("delete", f"/campaigns/{campaign}/events"),
              ("delete", f"/events/{eid}"), ("delete", f"/jobs/{jid}")]
    for method, path in writes:
        assert getattr(bob, method)(path).status_code == 403, path
    assert bob.post(f"/campaigns/{campaign}/jobs", json=["x"]).status_code == 403
    # nothing changed
    assert _state(pg_engine, campaign) == "in_treatment"
    assert alice.get(f"/campaigns/{campaign}").json()["total_jobs"] == 10
    with pg_engine.connect() as c:
        ev = c.execute(sa.select(schema.events.c.state).where(schema.events.c.id == eid)).scalar()
        n = c.execute(sa.select(sa.func.count()).select_from(schema.events)).scalar()
    assert ev == "open" and n == 1
    # while alice can
    assert alice.get(f"/campaigns/{campaign}/jdl").status_code == 200
    assert alice.get(f"/events/{eid}").status_code == 200


def test_public_reads_stay_public(anon: TestClient, bob: TestClient, campaign: int) -> None:
    """Compat: the campaign list and summaries are public, as in CiGri3."""
    assert bob.get("/campaigns").json()["items"][0]["user"] == "alice"
    assert anon.get(f"/campaigns/{campaign}").status_code == 200
    assert anon.get(f"/campaigns/{campaign}/stats").status_code == 200
    assert anon.get(f"/campaigns/{campaign}/jdl").status_code == 403


def test_admin_acts_on_all(root: TestClient, alice: TestClient, campaign: int, pg_engine: Engine,
                           clusters: dict[str, int]) -> None:
    jid = _job(pg_engine, campaign, clusters["dahu"])
    assert root.get(f"/campaigns/{campaign}/jobs").status_code == 200
    assert root.get(f"/jobs/{jid}").status_code == 200
    assert root.delete(f"/campaigns/{campaign}?hold=1").status_code == 202
    assert _state(pg_engine, campaign) == "paused"


def test_unauthenticated_writes_refused(anon: TestClient, campaign: int, clusters: dict[str, int]) -> None:
    for method, path in [("delete", f"/campaigns/{campaign}"), ("get", "/jobs/1/stdout"),
                         ("delete", f"/clusters/{clusters['dahu']}/tmp/cigri-nothing"), ("get", "/notifications"),
                         ("get", "/tokens"), ("post", "/events")]:
        r = getattr(anon, method)(path)
        assert r.status_code == 403, path
    assert anon.delete(f"/campaigns/{campaign}").json()["message"] == "Access denied: not authenticated"


def test_spoofed_header_refused(client_for: Any, anon: TestClient, campaign: int, pg_engine: Engine) -> None:
    """A header claiming an identity from a non-proxy address is refused, not ignored."""
    for c in (anon, client_for("bob")):
        r = c.delete(f"/campaigns/{campaign}", headers={"X-Cigri-User": "alice"})
        assert r.status_code == 403 and "not a trusted proxy" in r.json()["message"]
        assert c.get(f"/campaigns/{campaign}/jdl", headers={"X-Cigri-User": "alice"}).status_code == 403
    assert _state(pg_engine, campaign) == "in_treatment"


def test_header_from_trusted_proxy(api_conf: Any, pg_engine: Engine, clusters: dict[str, int]) -> None:
    from cigri.api.app import create_app

    app = create_app(api_conf.with_values(API_TRUSTED_PROXIES="testclient"))
    with TestClient(app) as c:
        r = c.post("/campaigns", json=JDL, headers={"X-Cigri-User": "carol"})
        assert r.status_code == 201 and r.json()["user"] == "carol"
        assert c.post("/campaigns", json=JDL, headers={"X-Cigri-User": "unknown"}).status_code == 403
        assert c.post("/campaigns", json=JDL).status_code == 403


def test_bearer_tokens(app: Any, alice: TestClient, anon: TestClient, campaign: int, client_for: Any) -> None:
    r = alice.post("/auth/token")
    assert r.status_code == 201
    token = r.json()["token"]
    h = {"Authorization": f"Bearer {token}"}
    assert anon.get(f"/campaigns/{campaign}/jdl", headers=h).status_code == 200
    # a token cannot mint tokens, nor can a user get one for someone else
    assert anon.post("/auth/token", headers=h).status_code == 403
    assert alice.post("/auth/token", json={"user": "bob"}).status_code == 403
    bob_token = client_for("root").post("/auth/token", json={"user": "bob"}).json()["token"]
    assert anon.get(f"/campaigns/{campaign}/jdl", headers={"Authorization": f"Bearer {bob_token}"}).status_code == 403
    # forged and expired tokens
    forged = jwt.encode({"sub": "alice", "iss": "cigri", "exp": int(time.time()) + 60}, "guess", algorithm="HS256")
    r = anon.get(f"/campaigns/{campaign}/jdl", headers={"Authorization": f"Bearer {forged}"})
    assert r.status_code == 403 and "invalid token" in r.json()["message"]
    secret = app.state.api.auth.secret()
    old = jwt.encode({"sub": "alice", "iss": "cigri", "exp": int(time.time()) - 10}, secret, algorithm="HS256")
    r = anon.get(f"/campaigns/{campaign}/jdl", headers={"Authorization": f"Bearer {old}"})
    assert r.status_code == 403 and "expired" in r.json()["message"]
    none_alg = jwt.encode({"sub": "root", "iss": "cigri", "exp": int(time.time()) + 60}, None, algorithm="none")
    assert anon.delete(f"/campaigns/{campaign}", headers={"Authorization": f"Bearer {none_alg}"}).status_code == 403


def test_notifications_and_tokens_are_per_user(alice: TestClient, bob: TestClient, clusters: dict[str, int]) -> None:
    assert alice.post("/notifications/mail", json={"identity": "a@x", "severity": "low"}).status_code == 201
    assert bob.get("/notifications").json()["items"] == []
    assert bob.delete("/notifications/mail?identity=a@x").status_code == 404
    assert len(alice.get("/notifications").json()["items"]) == 1
    assert alice.post("/tokens", json={"cluster_id": clusters["dahu-oar3"], "token": "A"}).status_code == 201
    assert bob.get("/tokens").json()["items"] == []
    assert bob.delete(f"/tokens/{clusters['dahu-oar3']}").status_code == 404
    assert alice.get("/tokens").json()["items"][0]["cluster_login"] == "Bearer A"


def test_ids_are_bound_parameters(alice: TestClient, campaign: int, pg_engine: Engine) -> None:
    """Ids were pasted into SQL in CiGri3; here they are just not found."""
    for path in ("/jobs/1;DROP TABLE jobs", "/campaigns/1 OR 1=1/jobs", "/events/1'--",
                 "/gridusage?from=1;DELETE FROM campaigns&to=2"):
        assert alice.get(path).status_code in (400, 404), path
    assert _state(pg_engine, campaign) == "in_treatment"


def test_job_outputs_on_a_local_cluster(alice: TestClient, bob: TestClient, campaign: int, pg_engine: Engine,
                                        tmp_path: Any) -> None:
    """stdout/stderr/cinfos through a real (local) cluster adapter: owner only; missing file -> 404."""
    from cigri.clusters import get_adapter
    from cigri.clusters.base import ClusterInfo, JobRequest
    from tests.conftest import add_cluster

    url = f"local://{tmp_path}/state"
    cl = add_cluster(pg_engine, "loc", batch="local", api_url=url)
    info = ClusterInfo(id=cl, name="loc", api_url=url, batch="local")
    # A local cluster runs tasks as the engine's user only: alice is that account here.
    me = getpass.getuser()
    with pg_engine.begin() as c:
        c.execute(schema.users_mapping.insert().values(cluster_id=cl, grid_login="alice", cluster_login=me))
    adapter = get_adapter(info, None, {"alice": me})
    rid = adapter.submit(JobRequest(command="echo hello-from-job", directory=str(tmp_path),
                                    stdout="out.%jobid%", stderr="err.%jobid%"), "alice")[0]
    deadline = time.monotonic() + 120
    while adapter.get_job(rid).outcome.live:
        assert time.monotonic() < deadline, "local job did not finish"
        time.sleep(0.2)
    with pg_engine.begin() as c:
        jid = c.execute(schema.jobs.insert().values(campaign_id=campaign, param_id=1, state="terminated",
                                                    cluster_id=cl, remote_id=rid).returning(schema.jobs.c.id)).scalar()
    r = alice.get(f"/jobs/{jid}/stdout")
    assert r.status_code == 200 and "hello-from-job" in r.json()["output"]
    assert bob.get(f"/jobs/{jid}/stdout").status_code == 403
    assert alice.get(f"/jobs/{jid}/cinfos").json()["id"] == rid
    (tmp_path / f"err.{rid}").unlink(missing_ok=True)
    r = alice.get(f"/jobs/{jid}/stderr")
    assert r.status_code == 404 and set(r.json()) == {"status", "title", "message"}
    # deleting files on a local cluster (server identity) is for admins only
    assert alice.delete(f"/clusters/{cl}/{tmp_path}/out.{rid}").status_code == 403
    assert (tmp_path / f"out.{rid}").exists()


def test_header_from_trusted_proxy_on_the_socket(api_conf: Any, pg_engine: Engine, clusters: dict[str, int]) -> None:
    """A front web server running as www-data on the Unix socket may assert identities
    (API_TRUSTED_PROXIES = unix:www-data); any other local user may not."""
    from cigri.api.app import create_app
    from tests.api.conftest import PeerIdentity

    app = create_app(api_conf.with_values(API_TRUSTED_PROXIES="unix:www-data"))
    with TestClient(PeerIdentity(app, "www-data")) as proxy, TestClient(PeerIdentity(app, "bob")) as bob:
        r = proxy.post("/campaigns", json=JDL, headers={"X-Cigri-User": "alice"})
        assert r.status_code == 201 and r.json()["user"] == "alice"
        assert bob.post("/campaigns", json=JDL, headers={"X-Cigri-User": "alice"}).status_code == 403
