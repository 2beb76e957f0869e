"""Notification addresses are checked at subscription (issue #10 item 4): no line break can
reach a mail header or an XMPP stanza, and each type's syntax is enforced, with one
message naming the problem; nothing is stored."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

BAD = [
    ("mail", "bob@example.org\r\nBcc: victim@example.org", "contains a carriage return"),
    ("mail", "bob@example.org\nBcc: victim@example.org", "contains a line feed"),
    ("mail", "bob example.org", "contains a space"),
    ("mail", "bob", "is not of the form name@domain"),
    ("mail", "bob@@example.org", "invalid name part"),
    ("mail", "bob@exa_mple.org", "invalid domain"),
    ("mail", "b" * 65 + "@example.org", "invalid name part"),
    ("jabber", "alice@jabber.org\n<message to='x'/>", "contains a line feed"),
    ("jabber", "jabber.org", "is not of the form name@server"),
    ("jabber", "al<ce@jabber.org", "invalid name part"),
    ("jabber", "alice@jab ber.org", "contains a space"),
]


@pytest.mark.parametrize(("kind", "identity", "why"), BAD, ids=[f"{k}-{i}" for i, (k, *_r) in enumerate(BAD)])
def test_bad_address_is_refused_with_the_reason(alice: TestClient, kind: str, identity: str, why: str) -> None:
    r = alice.post(f"/notifications/{kind}", json={"identity": identity, "severity": "low"})
    assert r.status_code == 400, r.text
    assert why in r.json()["message"] and f"Invalid {kind} address" in r.json()["message"]
    assert alice.get("/notifications").json()["items"] == []


@pytest.mark.parametrize(("kind", "identity"), [("mail", "first.last+cigri@sub.example.org"), ("mail", "a@localhost"),
                                                ("jabber", "alice@jabber.example.org"),
                                                ("jabber", "alice@jabber.example.org/Office Desk")])
def test_good_addresses_are_accepted(alice: TestClient, kind: str, identity: str) -> None:
    r = alice.post(f"/notifications/{kind}", json={"identity": identity, "severity": "low"})
    assert r.status_code == 201, r.text
    assert [i["identity"] for i in alice.get("/notifications").json()["items"]] == [identity]
