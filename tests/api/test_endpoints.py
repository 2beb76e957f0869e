"""The REST API against a real PostgreSQL: CiGri3's behaviour, and CiGri3's bugs fixed
(docs/compat.md, "REST API")."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from fastapi.testclient import TestClient
from sqlalchemy.engine import Engine

from cigri.db import schema
from cigri.db.events import create_event
from tests.api.conftest import JDL


def _links_ok(body: dict[str, Any]) -> None:
    assert body["links"]
    for lk in body["links"]:
        assert lk["rel"] and lk["href"].startswith("/")


def test_root_clusters_gridusage(anon: TestClient, clusters: dict[str, int]) -> None:
    for path in ("/", "/clusters", "/gridusage"):
        r = anon.get(path)
        assert r.status_code == 200, path
        assert r.headers["allow"] == "GET"
        assert r.headers["content-type"].startswith("application/json")
        assert r.text.endswith("\n")
        _links_ok(r.json())
    names = {c["name"] for c in anon.get("/clusters").json()["items"]}
    assert names == {"dahu", "bigfoot", "dahu-oar3"}


def test_campaigns(anon: TestClient, campaign: int) -> None:
    r = anon.get("/campaigns")
    assert r.status_code == 200 and r.headers["allow"] == "GET,POST"
    _links_ok(r.json())
    assert [c["id"] for c in r.json()["items"]] == [campaign]
    r = anon.get(f"/campaigns/{campaign}")
    assert r.status_code == 200
    assert set(r.headers["allow"].split(",")) == {"GET", "POST", "PUT", "DELETE"}
    body = r.json()
    for k in ("links", "total_jobs", "finished_jobs", "state", "user", "name", "submission_time", "id"):
        assert k in body
    assert body["user"] == "alice" and body["total_jobs"] == 10 and body["state"] == "in_treatment"
    assert list(body["clusters"].values())[0]["cluster_name"] == "dahu"


def test_jobs_listing_and_pagination(alice: TestClient, campaign: int) -> None:
    r = alice.get(f"/campaigns/{campaign}/jobs")
    assert r.status_code == 200 and r.headers["allow"] == "GET,POST"
    body = r.json()
    assert body["total"] == 10 and body["offset"] == 0 and len(body["items"]) == 10
    for it in body["items"]:
        assert {"href", "state", "name", "id", "parameters"} <= set(it)
        assert it["state"] == "pending"
    assert not [lk for lk in body["links"] if lk["rel"] == "next"]
    r = alice.get(f"/campaigns/{campaign}/jobs?limit=2&offset=2")
    assert len(r.json()["items"]) == 2
    # following next links visits every task exactly once (not in CiGri3)
    seen: list[str] = []
    url: str | None = f"/campaigns/{campaign}/jobs?limit=3"
    while url:
        b = alice.get(url).json()
        seen += [i["name"] for i in b["items"]]
        url = next((lk["href"] for lk in b["links"] if lk["rel"] == "next"), None)
    assert sorted(seen, key=int) == [str(i) for i in range(10)]


def test_jobs_state_filter_and_task_detail(alice: TestClient, campaign: int, pg_engine: Engine,
                                           clusters: dict[str, int]) -> None:
    with pg_engine.begin() as c:
        pids = [r[0] for r in c.execute(sa.select(schema.parameters.c.id).where(
            schema.parameters.c.campaign_id == campaign).order_by(schema.parameters.c.id))]
        c.execute(schema.jobs.insert(), [
            {"campaign_id": campaign, "param_id": pids[0], "state": "running", "cluster_id": clusters["dahu"],
             "remote_id": 77},
            {"campaign_id": campaign, "param_id": pids[1], "state": "event", "cluster_id": clusters["dahu"],
             "remote_id": None}])
    r = alice.get(f"/campaigns/{campaign}/jobs?state=running")
    body = r.json()
    assert body["total"] == 1 and body["items"][0]["id"] == pids[0]
    assert body["items"][0]["cluster"] == "dahu" and body["items"][0]["remote_id"] == 77
    assert alice.get(f"/campaigns/{campaign}/jobs?state=pending").json()["total"] == 8
    assert alice.get(f"/campaigns/{campaign}/jobs?state=bogus").status_code == 400
    # the task detail works (not in CiGri3)
    r = alice.get(f"/campaigns/{campaign}/jobs/{pids[0]}")
    assert r.status_code == 200
    t = r.json()
    assert t["state"] == "running" and t["execution"][0]["remote_id"] == 77
    assert t["execution"][0]["cluster_name"] == "dahu"
    assert alice.get(f"/campaigns/{campaign}/jobs/{pids[2]}").json()["state"] == "waiting"


def test_jdl(alice: TestClient, campaign: int) -> None:
    r = alice.get(f"/campaigns/{campaign}/jdl")
    assert r.status_code == 200 and r.headers["allow"] == "GET"
    assert {"name", "clusters", "jobs_type"} <= set(r.json())


def test_gridusage(anon: TestClient, pg_engine: Engine, clusters: dict[str, int]) -> None:
    with pg_engine.begin() as c:
        c.execute(schema.grid_usage.insert().values(date=schema.now(), cluster_id=clusters["dahu"], max_resources=10,
                                                    used_resources=4, used_by_cigri=2, unavailable_resources=1))
    body = anon.get("/gridusage").json()
    assert body["items"][0]["clusters"][0]["cluster_name"] == "dahu"
    assert anon.get("/gridusage?from=0&to=99999999999").json()["total"] == 1
    assert anon.get("/gridusage?from=abc").status_code == 400  # was an SQL injection point


def test_not_found(alice: TestClient, campaign: int) -> None:
    for path in ("/toto", "/campaigns/-1", "/campaigns/toto", f"/campaigns/{campaign}/jobs/123456789",
                 "/campaigns/-1/jdl", "/campaigns/99999999999999999999", "/campaigns/-1/stats", "/jobs/abc"):
        r = alice.get(path)
        assert r.status_code == 404, path
        assert set(r.json()) == {"status", "title", "message"}
    assert alice.get("/toto").json()["message"] == "GET /toto not found on this server"


def test_post_campaign_and_jobs(alice: TestClient) -> None:
    r = alice.post("/campaigns", json=JDL)
    assert r.status_code == 201
    cid = r.json()["id"]
    assert r.headers["location"] == f"/campaigns/{cid}"
    _links_ok(r.json())
    r = alice.post(f"/campaigns/{cid}/jobs", json=["a", "b", "c", "d"])
    assert r.status_code == 201 and r.headers["location"] == f"/campaigns/{cid}"
    assert r.json()["total_jobs"] == 14


def test_post_campaign_errors(alice: TestClient) -> None:
    r = alice.post("/campaigns", content=b"{not json")
    assert r.status_code == 400 and r.json()["message"].startswith("Error submitting campaign:")
    r = alice.post("/campaigns", json={"name": "x", "clusters": {"dahu": {"exec_file": "e"}}})
    assert r.status_code == 400 and "Error submitting campaign" in r.json()["message"]
    assert alice.get("/campaigns").json()["items"] == []


def test_auth_errors(client_for: Any, alice: TestClient, bob: TestClient, campaign: int) -> None:
    assert client_for("unknown").post("/campaigns", json=JDL).status_code == 403
    assert client_for(None).post("/campaigns", json=JDL).status_code == 403
    assert alice.post("/campaigns/-1/jobs", json=["x"]).status_code == 404
    assert bob.post(f"/campaigns/{campaign}/jobs", json=["x"]).status_code == 403


def test_put(alice: TestClient, bob: TestClient, campaign: int) -> None:
    r = alice.put(f"/campaigns/{campaign}?name=toto&state=paused")
    assert r.status_code == 202
    assert r.json()["name"] == "toto" and r.json()["state"] == "paused"
    r = alice.put(f"/campaigns/{campaign}", data={"state": "in_treatment"})
    assert r.status_code == 202 and r.json()["state"] == "in_treatment"
    assert alice.put("/campaigns/-1?name=x").status_code == 404
    assert bob.put(f"/campaigns/{campaign}?name=x").status_code == 403
    assert alice.put(f"/campaigns/{campaign}?state=terminated").status_code == 400


def test_put_state_machine(alice: TestClient, campaign: int) -> None:
    """A cancelled campaign cannot be resumed by PUT (CiGri3 revived it)."""
    assert alice.delete(f"/campaigns/{campaign}").status_code == 202
    r = alice.put(f"/campaigns/{campaign}?state=in_treatment")
    assert r.status_code == 400
    assert alice.get(f"/campaigns/{campaign}").json()["state"] == "cancelled"


def test_delete_and_hold_resume(alice: TestClient, bob: TestClient, campaign: int) -> None:
    r = alice.delete(f"/campaigns/{campaign}?hold=1")
    assert r.status_code == 202 and r.json() == {"status": 202, "title": "Accepted",
                                                 "message": f"Campaign {campaign} paused"}
    r = alice.delete(f"/campaigns/{campaign}?hold=1")
    assert r.status_code == 400 and r.json()["message"] == "Can't hold (pause) a paused campaign"
    assert alice.delete(f"/campaigns/{campaign}?resume=1").json()["message"] == f"Campaign {campaign} resumed"
    assert alice.delete(f"/campaigns/{campaign}?resume=0").json()["message"] == f"Campaign {campaign} cancelled"
    assert alice.get(f"/campaigns/{campaign}").json()["state"] == "cancelled"
    assert alice.delete(f"/campaigns/{campaign}").json()["message"] == "Campaign already cancelled."
    assert alice.delete("/campaigns/-1").status_code == 404
    assert bob.delete(f"/campaigns/{campaign}").status_code == 403
    r = alice.delete(f"/campaigns/{campaign}?purge=1")
    assert r.status_code == 202 and r.json()["message"] == f"Campaign {campaign} will be purged"


def test_tokens(alice: TestClient, client_for: Any, clusters: dict[str, int]) -> None:
    non_jwt, jwt_cl = clusters["bigfoot"], clusters["dahu-oar3"]
    assert alice.post("/tokens", json={"cluster_id": non_jwt, "token": "Blah"}).status_code == 403
    assert client_for(None).delete(f"/tokens/{non_jwt}").status_code == 403
    for _ in range(2):
        r = alice.post("/tokens", json={"cluster_id": jwt_cl, "token": "Blah"})
        assert r.status_code == 201 and r.json()["message"] == "New token registered"
    assert alice.get("/tokens").json()["items"][0]["cluster_login"] == "Bearer Blah"
    assert alice.delete(f"/tokens/{jwt_cl}").status_code == 202
    assert alice.get("/tokens").json()["items"] == []


def test_root_token_maps_to_oar(root: TestClient, clusters: dict[str, int]) -> None:
    """root can delete the admin (oar) token it registered (not in CiGri3)."""
    jwt_cl = clusters["dahu-oar3"]
    assert root.post("/tokens", json={"cluster_id": jwt_cl, "token": "T"}).status_code == 201
    assert root.get("/tokens").json()["items"] == [{"cluster_id": jwt_cl, "cluster_login": "Bearer T"}]
    assert root.delete(f"/tokens/{jwt_cl}").status_code == 202
    assert root.get("/tokens").json()["items"] == []


def test_stats(alice: TestClient, anon: TestClient, campaign: int) -> None:
    r = anon.get(f"/campaigns/{campaign}/stats")
    assert r.status_code == 200
    body = r.json()
    assert set(body) == {"average_jobs_duration", "stddev_jobs_duration", "jobs_throughput", "remaining_time",
                         "failures_rate", "resubmit_rate"}
    assert body["average_jobs_duration"] is None and body["jobs_throughput"] == 1e-16
    assert anon.get("/campaigns/424242/stats").status_code == 404  # (ids pasted into SQL in CiGri3)


def test_events_flow(alice: TestClient, root: TestClient, campaign: int, pg_engine: Engine,
                     clusters: dict[str, int]) -> None:
    with pg_engine.begin() as c:
        jid = c.execute(schema.jobs.insert().values(campaign_id=campaign, param_id=1, state="event",
                                                    cluster_id=clusters["dahu"]).returning(schema.jobs.c.id)).scalar()
        create_event(c, "job", "EXIT_ERROR", job_id=jid, campaign_id=campaign, cluster_id=clusters["dahu"],
                     message="exit 1")
        create_event(c, "job", "REMOTE_WAITING_FRAG", job_id=jid, campaign_id=campaign, state="closed")
    assert alice.get(f"/campaigns/{campaign}").json()["has_events"] is True
    body = alice.get(f"/campaigns/{campaign}/events").json()
    assert [e["code"] for e in body["items"]] == ["EXIT_ERROR"] and body["total"] == 1
    assert body["items"][0]["cluster_name"] == "dahu" and "T" in body["items"][0]["date_open"]
    # all=0 is not "all"; all=1 hides REMOTE_WAITING_FRAG
    assert len(alice.get(f"/campaigns/{campaign}/events?all=0").json()["items"]) == 1
    assert {e["code"] for e in alice.get(f"/campaigns/{campaign}/events?all=1").json()["items"]} == {"EXIT_ERROR"}
    r = alice.delete(f"/campaigns/{campaign}/events?resubmit=1")
    assert r.status_code == 202 and r.json()["message"] == f"Campaign {campaign} events closed"
    assert alice.get(f"/campaigns/{campaign}/events").status_code == 404
    with pg_engine.connect() as c:
        bag = c.execute(sa.select(sa.func.count()).select_from(schema.bag_of_tasks).where(
            schema.bag_of_tasks.c.priority == 20)).scalar()
    assert bag == 1


def test_global_events_and_post_event(alice: TestClient, root: TestClient, anon: TestClient,
                                      clusters: dict[str, int]) -> None:
    assert anon.get("/events").status_code == 404
    ev = {"class": "cluster", "cluster_id": clusters["dahu"], "code": "CLUSTER_MANUALLY_DISABLED", "message": "m"}
    r = alice.post("/events", json=ev)
    assert r.status_code == 403 and r.json()["message"] == "Only root can create an event"
    r = root.post("/events", json=ev)
    assert r.status_code == 201 and r.json()["message"] == "New event created"
    items = anon.get("/events").json()["items"]
    assert items[0]["code"] == "CLUSTER_MANUALLY_DISABLED" and items[0]["cluster_name"] == "dahu"
    eid = items[0]["id"]
    e = anon.get(f"/events/{eid}").json()
    assert e["cluster_name"] == "dahu" and e["state"] == "open"
    assert alice.delete(f"/events/{eid}").status_code == 403
    r = root.delete(f"/events/{eid}")
    assert r.status_code == 202 and r.json()["message"] == f"Event {eid} closed"
    assert anon.get(f"/events/{eid}").json()["state"] == "closed"
    assert root.post("/events", json={"class": "cluster", "code": "X", "bogus": 1}).status_code == 400


def test_jobs_endpoints(alice: TestClient, campaign: int, pg_engine: Engine, clusters: dict[str, int]) -> None:
    with pg_engine.begin() as c:
        jid = c.execute(schema.jobs.insert().values(campaign_id=campaign, param_id=1, state="running",
                                                    cluster_id=clusters["dahu"], remote_id=5,
                                                    runner_options='{"a": 1}').returning(schema.jobs.c.id)).scalar()
    r = alice.get(f"/jobs/{jid}")
    assert r.status_code == 200
    j = r.json()
    assert j["grid_user"] == "alice" and j["cluster_name"] == "dahu" and j["runner_options"] == {"a": 1}
    r = alice.delete(f"/jobs/{jid}")
    assert r.status_code == 202 and r.json()["message"] == f"Job {jid} cancel event created"
    with pg_engine.connect() as c:
        codes = [r[0] for r in c.execute(sa.select(schema.events.c.code).where(schema.events.c.job_id == jid))]
    assert codes == ["USER_FRAG"]
    assert alice.get("/jobs/999999").status_code == 404
    assert alice.get(f"/campaigns/{campaign}/jobs/finished").json()["items"] == []


def test_notifications(alice: TestClient, root: TestClient, pg_engine: Engine) -> None:
    r = alice.post("/notifications/mail", json={"identity": "a@x.org", "severity": "high"})
    assert r.status_code == 201 and r.json()["message"] == "New subscription created"
    assert alice.post("/notifications/mail", json={"identity": "a@x.org", "severity": "high"}).status_code == 400
    assert alice.post("/notifications/jabber", json={"identity": "a@j", "severity": "bad"}).status_code == 400
    assert alice.post("/notifications/irc", json={"identity": "a", "severity": "low"}).status_code == 404
    assert alice.post("/notifications/jabber", json={"identity": "a@j", "severity": "low"}).status_code == 201
    items = alice.get("/notifications").json()["items"]
    assert [(i["type"], i["identity"]) for i in items] == [("mail", "a@x.org"), ("xmpp", "a@j")]
    assert root.post("/notifications/mail", json={"identity": "adm@x", "severity": "low"}).status_code == 201
    assert root.get("/notifications").json()["items"][0]["grid_user"] == "%%admin%%"
    r = alice.delete("/notifications/mail?identity=a@x.org")
    assert r.status_code == 202 and r.json()["title"] == "Deleted"
    assert len(alice.get("/notifications").json()["items"]) == 1
    from cigri.db.notifications import subscriptions_for

    with pg_engine.connect() as c:
        assert subscriptions_for(c, "%%admin%%")[0]["identity"] == "adm@x"


def test_cluster_detail(anon: TestClient, clusters: dict[str, int], pg_engine: Engine) -> None:
    with pg_engine.begin() as c:
        c.execute(schema.clusters.update().where(schema.clusters.c.id == clusters["dahu"]).values(
            api_username="secretuser", api_password="secretpw", stress_factor=0.1))
    r = anon.get(f"/clusters/{clusters['dahu']}")
    body = r.json()
    assert "api_password" not in body and "api_username" not in body and "secretpw" not in r.text
    assert body["stress_factor"] == "0.1/0.8" and body["under_stress"] is False and body["blacklisted"] is False
    assert anon.get("/clusters/9999").status_code == 404


def test_pretty_prefix_and_errors(alice: TestClient, campaign: int) -> None:
    r = alice.get("/?pretty=true", headers={"X-Cigri-Api-Path-Prefix": "/cigri-api"})
    assert "\n  " in r.text
    assert r.json()["links"][0]["href"] == "/cigri-api/"
    assert "\n  " not in alice.get("/?pretty=false").text
    r = alice.get(f"/campaigns/{campaign}/jobs?limit=abc")
    assert r.status_code == 400 and set(r.json()) == {"status", "title", "message"}
    r = alice.patch("/campaigns")
    assert r.status_code == 405 and set(r.json()) == {"status", "title", "message"}


def test_openapi(anon: TestClient) -> None:
    doc = anon.get("/openapi.json").json()
    assert "/campaigns/{cid}/jobs" in doc["paths"] and "/auth/token" in doc["paths"]


def test_sqlite_local_mode(sqlite_conf: Any, sqlite_engine: Engine) -> None:
    """The API also serves the SQLite database of the user-level (local) mode."""
    from cigri.api.app import create_app
    from tests.api.conftest import PeerIdentity
    from tests.conftest import add_cluster

    add_cluster(sqlite_engine, "dahu")
    with TestClient(PeerIdentity(create_app(sqlite_conf), "alice")) as c:
        r = c.post("/campaigns", json=JDL)
        assert r.status_code == 201, r.text
        cid = r.json()["id"]
        with sqlite_engine.begin() as conn:
            conn.execute(schema.jobs.insert().values(campaign_id=cid, param_id=1, state="terminated", cluster_id=1,
                                                     start_time=1_700_000_000, stop_time=1_700_000_010))
        assert c.get("/campaigns").json()["items"][0]["finished_jobs"] == 1
        assert c.get(f"/campaigns/{cid}").json()["clusters"]["1"]["cluster_name"] == "dahu"
        stats = c.get(f"/campaigns/{cid}/stats").json()
        assert stats["average_jobs_duration"] == 10
        assert c.get(f"/campaigns/{cid}/jobs?state=terminated").json()["total"] == 1
        assert c.delete(f"/campaigns/{cid}?hold=1").status_code == 202


def test_stats_values(alice: TestClient, campaign: int, pg_engine: Engine, clusters: dict[str, int]) -> None:
    """GET /campaigns/:id/stats on known data: durations 10 s and 20 s, starts 100 s apart, one failure."""
    t0 = 1_700_000_000
    with pg_engine.begin() as c:
        ids = [c.execute(schema.jobs.insert().values(
            campaign_id=campaign, param_id=p, state="terminated", cluster_id=clusters["dahu"],
            start_time=t0 + 100 * i, stop_time=t0 + 100 * i + d).returning(schema.jobs.c.id)).scalar()
            for i, (p, d) in enumerate(((1, 10), (2, 20)))]
        create_event(c, "job", "EXIT_ERROR", job_id=ids[0], campaign_id=campaign, state="closed")
    s = alice.get(f"/campaigns/{campaign}/stats").json()
    assert s["average_jobs_duration"] == 15 and s["stddev_jobs_duration"] == 5
    assert abs(s["jobs_throughput"] - 0.02) < 1e-9 and abs(s["remaining_time"] - 400) < 1e-6
    assert abs(s["failures_rate"] - 1 / 3) < 1e-9 and s["resubmit_rate"] == 0
    assert alice.get(f"/campaigns/{campaign}").json()["finished_jobs"] == 2


def test_big_campaign_list_is_shared_but_fresh_after_writes(alice: TestClient, pg_engine: Engine) -> None:
    """Lists of 50+ campaigns are computed once for many pollers; a write through the API
    (here: a submission, then a pause) is visible in the very next listing."""
    with pg_engine.begin() as c:
        c.execute(schema.campaigns.insert(), [
            {"grid_user": "bob", "state": "in_treatment", "type": "best-effort", "name": f"c{i}", "nb_jobs": 0,
             "submission_time": schema.now()} for i in range(60)])
    assert len(alice.get("/campaigns").json()["items"]) == 60
    cid = alice.post("/campaigns", json=JDL).json()["id"]
    items = {c["id"]: c for c in alice.get("/campaigns").json()["items"]}
    assert len(items) == 61 and items[cid]["state"] == "in_treatment"
    assert alice.delete(f"/campaigns/{cid}?hold=1").status_code == 202
    assert {c["id"]: c for c in alice.get("/campaigns").json()["items"]}[cid]["state"] == "paused"
