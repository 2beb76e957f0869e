"""Judas against a real SMTP server (aiosmtpd) started by the test."""

from __future__ import annotations

import email
import socket

import pytest
import sqlalchemy as sa
from aiosmtpd.controller import Controller

from cigri.db import events as eventsdb
from cigri.db.schema import events, user_notifications
from cigri.engine import judas
from tests.conftest import add_cluster
from tests.engine.test_metascheduler import make_campaign


class Inbox:
    def __init__(self):
        self.messages: list[email.message.Message] = []

    async def handle_DATA(self, server, session, envelope):  # noqa: N802 - aiosmtpd API
        msg = email.message_from_bytes(envelope.content)
        msg["X-Rcpt"] = ",".join(envelope.rcpt_tos)
        self.messages.append(msg)
        return "250 OK"

    def subjects(self, to=None):
        return sorted(m["Subject"] for m in self.messages if to is None or m["To"] == to)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def smtp():
    inbox = Inbox()
    ctl = Controller(inbox, hostname="127.0.0.1", port=_free_port())
    ctl.start()
    yield inbox, ctl.port
    ctl.stop()


@pytest.fixture
def jconf(pg_conf, smtp):
    return pg_conf.with_values(NOTIFICATIONS_SMTP_SERVER="127.0.0.1", NOTIFICATIONS_SMTP_PORT=smtp[1],
                               NOTIFICATIONS_SMTP_FROM="cigri@test", NOTIFICATIONS_MAX_LOG=3,
                               NOTIFICATIONS_MAX_EVENTS=2)


def _subscribe(engine, user, identity, severity=None, type_="mail"):
    with engine.begin() as c:
        c.execute(user_notifications.insert().values(grid_user=user, type=type_, identity=identity,
                                                     severity=severity))


def _unnotified(engine):
    with engine.connect() as c:
        return c.execute(sa.select(sa.func.count()).select_from(events).where(events.c.notified.is_(False))).scalar()


def test_aggregated_errors_and_blacklists_by_mail(pg_engine, jconf, smtp):
    inbox, _ = smtp
    cl = add_cluster(pg_engine, "dahu")
    c1 = make_campaign(pg_engine, "alice", [cl], n_tasks=0)
    c2 = make_campaign(pg_engine, "bob", [cl], n_tasks=0)
    _subscribe(pg_engine, "alice", "alice@example.org", "low")
    _subscribe(pg_engine, "bob", "bob@example.org", None)  # NULL severity = medium
    _subscribe(pg_engine, "%%admin%%", "admin@example.org", "medium")
    with pg_engine.begin() as c:
        e_bob = eventsdb.create_event(c, "job", "EXIT_ERROR", campaign_id=c2, cluster_id=cl, message="bob's stderr")
        eventsdb.create_event(c, "job", "EXIT_ERROR", campaign_id=c1, cluster_id=cl, message="alice first")
        eventsdb.create_event(c, "job", "EXIT_ERROR", campaign_id=c1, cluster_id=cl, message="alice second")
        eventsdb.create_event(c, "campaign", "BLACKLIST", campaign_id=c1, cluster_id=cl, parent=e_bob + 1)
        eventsdb.create_event(c, "job", "RESUBMIT", campaign_id=c1, cluster_id=cl, state="closed")
        eventsdb.create_event(c, "notify", "FINISHED_CAMPAIGN", campaign_id=c2, state="closed",
                              message=f"Campaign {c2} is finished")
    res = judas.notification_pass(pg_engine, jconf)
    alice = [m for m in inbox.messages if m["To"] == "alice@example.org"]
    assert sorted(m["Subject"] for m in alice) == [
        f"[CIGRI] (high): 2 EXIT_ERROR event(s) on campaign #{c1}",
        f"[CIGRI] (high): Cluster dahu blacklisted for campaign #{c1}"]
    agg = next(m for m in alice if "EXIT_ERROR" in m["Subject"])
    assert "alice first" in agg.get_payload() and "bob" not in agg.get_payload()  # that campaign's first event
    assert inbox.subjects("bob@example.org") == [
        f"[CIGRI] (high): 1 EXIT_ERROR event(s) on campaign #{c2}",
        f"[CIGRI] (high): New event #{e_bob + 5}: FINISHED_CAMPAIGN for campaign #{c2}"]
    assert inbox.subjects("admin@example.org") == [f"[CIGRI] (medium): Cluster dahu blacklisted for campaign #{c1}"]
    assert all(m["From"] == "cigri@test" for m in inbox.messages)
    assert _unnotified(pg_engine) == 0 and len(res.marked) == 6
    # nothing new: nothing sent
    n = len(inbox.messages)
    judas.notification_pass(pg_engine, jconf)
    assert len(inbox.messages) == n


def test_caps_send_exactly_the_cap_with_a_correct_overflow_message(pg_engine, jconf, smtp):
    """CiGri3 sent cap-1 messages and said "log events" for generic ones."""
    inbox, _ = smtp
    cl = add_cluster(pg_engine, "dahu")
    _subscribe(pg_engine, "%%admin%%", "admin@example.org", "low")
    with pg_engine.begin() as c:
        for i in range(5):
            eventsdb.create_event(c, "log", "RUNNER_FAILED", state="closed", message=f"runner {i}")
        for _ in range(4):
            eventsdb.create_event(c, "cluster", "TIMEOUT", cluster_id=cl, message="timeout")
    judas.notification_pass(pg_engine, jconf)
    subjects = inbox.subjects()
    assert sum("New log event" in s for s in subjects) == 3  # NOTIFICATIONS_MAX_LOG
    assert sum("New event" in s for s in subjects) == 2  # NOTIFICATIONS_MAX_EVENTS
    assert "[CIGRI] (high): Too many log events!" in subjects
    assert "[CIGRI] (high): Too many events!" in subjects
    assert all("(medium): New event" in s for s in subjects if "TIMEOUT" in s)
    assert _unnotified(pg_engine) == 0


def test_severity_filter_and_log_type(pg_engine, jconf, smtp, caplog):
    inbox, _ = smtp
    cl = add_cluster(pg_engine, "dahu")
    _subscribe(pg_engine, "%%admin%%", "boss@example.org", "high")
    _subscribe(pg_engine, "%%admin%%", "ops", "low", type_="log")
    _subscribe(pg_engine, "%%admin%%", "ops@jabber", "low", type_="xmpp")
    with pg_engine.begin() as c:
        eventsdb.create_event(c, "cluster", "UNDER_STRESS", cluster_id=cl, message="stress")  # medium
    with caplog.at_level("INFO"):
        judas.notification_pass(pg_engine, jconf)
    assert inbox.messages == []  # high-only subscriber
    assert any("UNDER_STRESS" in r.getMessage() and "ops" in r.getMessage() for r in caplog.records)
    assert any("XMPP notifications are off (NOTIFICATIONS_XMPP_SERVER is empty)" in r.getMessage()
               for r in caplog.records)


def test_smtp_down_is_logged_and_retried_later(pg_engine, pg_conf, caplog):
    """An unreachable mail server loses nothing: the events wait for the next pass, which
    delivers each message once when the server is back."""
    port = _free_port()
    conf = pg_conf.with_values(NOTIFICATIONS_SMTP_SERVER="127.0.0.1", NOTIFICATIONS_SMTP_PORT=port)
    _subscribe(pg_engine, "%%admin%%", "admin@example.org", "low")
    with pg_engine.begin() as c:
        for i in range(3):
            eventsdb.create_event(c, "log", "ALMIGHTY_STARTING", state="closed", message=f"start {i}")
    res = judas.notification_pass(pg_engine, conf)
    assert res.marked == [] and len(res.retried) == 3
    # one failed connection per pass, not one per message
    assert sum("Could not send mail" in r.getMessage() for r in caplog.records) == 1
    inbox = Inbox()
    ctl = Controller(inbox, hostname="127.0.0.1", port=port)
    ctl.start()
    try:
        assert len(judas.notification_pass(pg_engine, conf).marked) == 3
        assert judas.notification_pass(pg_engine, conf).messages == []
    finally:
        ctl.stop()
    assert inbox.subjects() == [f"[CIGRI] (high): New log event #{i}: ALMIGHTY_STARTING" for i in (1, 2, 3)]


class RefusingInbox(Inbox):
    """A mail server that has no mailbox for some addresses (550 at RCPT TO)."""

    def __init__(self, refused):
        super().__init__()
        self.refused = set(refused)

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):  # noqa: N802 - aiosmtpd API
        if address in self.refused:
            return "550 5.1.1 no such mailbox"
        envelope.rcpt_tos.append(address)
        return "250 OK"


def test_one_bad_address_never_blocks_the_others(pg_engine, pg_conf, caplog):
    """Issue #10 item 4: a header-injection address stored before validation existed (or by
    CiGri3), and an address the server refuses, cost only their own deliveries; every event
    is marked in the first pass and nobody gets a message twice."""
    inbox = RefusingInbox({"gone@example.org"})
    ctl = Controller(inbox, hostname="127.0.0.1", port=_free_port())
    ctl.start()
    try:
        conf = pg_conf.with_values(NOTIFICATIONS_SMTP_SERVER="127.0.0.1", NOTIFICATIONS_SMTP_PORT=ctl.port)
        cl = add_cluster(pg_engine, "dahu")
        c_bob = make_campaign(pg_engine, "bob", [cl], n_tasks=0)
        c_ann = make_campaign(pg_engine, "ann", [cl], n_tasks=0)
        _subscribe(pg_engine, "bob", "bob@example.org\r\nBcc: victim@example.org", "low")
        _subscribe(pg_engine, "bob", "gone@example.org", "low")
        _subscribe(pg_engine, "bob", "bob@example.org", "low")
        _subscribe(pg_engine, "ann", "ann@example.org", "low")
        with pg_engine.begin() as c:
            for cid in (c_bob, c_ann, c_bob):
                eventsdb.create_event(c, "campaign", "USER_FIX", campaign_id=cid, message="m")
        first = judas.notification_pass(pg_engine, conf)
        assert len(first.marked) == 3 and first.retried == []
        assert judas.notification_pass(pg_engine, conf).messages == []
    finally:
        ctl.stop()
    to = sorted(m["X-Rcpt"] for m in inbox.messages)
    assert to == ["ann@example.org", "bob@example.org", "bob@example.org"]
    assert not any("victim" in str(m) for m in inbox.messages)
    logged = [r.getMessage() for r in caplog.records]
    assert sum("contains a carriage return" in m for m in logged) == 2
    assert sum("refused the mail to gone@example.org" in m for m in logged) == 2
