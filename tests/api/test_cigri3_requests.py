"""#11 item 10: requests CiGri3 clients send. Sinatra answered paths with an optional
trailing slash itself (Ruby's Net::HTTP does not follow a 307), and took `_method` on a
POST as the real method."""

from __future__ import annotations

from fastapi.testclient import TestClient
from sqlalchemy.engine import Engine

from tests.api.conftest import JDL


def test_trailing_slashes_are_answered_directly(alice: TestClient, anon: TestClient, campaign: int) -> None:
    for path in ("/campaigns/", f"/campaigns/{campaign}/", f"/campaigns/{campaign}/jobs/", "/clusters/",
                 "/gridusage/", f"/campaigns/{campaign}/stats/", "/notifications/", "/tokens/"):
        r = alice.get(path, follow_redirects=False)
        assert r.status_code == 200, (path, r.status_code, r.headers.get("location"))
        assert r.json() == alice.get(path.rstrip("/")).json(), path
    r = alice.post("/campaigns/", json=JDL, follow_redirects=False)
    assert r.status_code == 201
    assert alice.delete(f"/campaigns/{r.json()['id']}/", follow_redirects=False).status_code == 202
    r = anon.get("/nothing-here/", follow_redirects=False)
    assert r.status_code == 404 and set(r.json()) == {"status", "title", "message"}


def test_method_override(alice: TestClient, bob: TestClient, campaign: int, pg_engine: Engine) -> None:
    # in the query string
    r = alice.post(f"/campaigns/{campaign}?_method=DELETE&hold=1")
    assert r.status_code == 202 and r.json()["message"] == f"Campaign {campaign} paused"
    # in a form body, the rest of the form still read by the route
    r = alice.post(f"/campaigns/{campaign}", data={"_method": "PUT", "state": "in_treatment", "name": "renamed"})
    assert r.status_code == 202 and r.json()["state"] == "in_treatment" and r.json()["name"] == "renamed"
    # the header some clients use
    r = alice.post(f"/campaigns/{campaign}/", headers={"X-HTTP-Method-Override": "delete"})
    assert r.status_code == 202 and r.json()["message"] == f"Campaign {campaign} cancelled"
    # the override does not bypass the access rules, and only turns a POST into DELETE/PUT/PATCH
    assert bob.post(f"/campaigns/{campaign}?_method=DELETE&purge=1").status_code == 403
    assert alice.get(f"/campaigns/{campaign}?_method=DELETE").json()["state"] == "cancelled"
    r = alice.post("/campaigns?_method=GET", json=JDL)
    assert r.status_code == 201  # still a submission
