"""Jabber notifications (issue #11 item 14, CiGri3's `xmpp` type, `gridnotify -j`) through a
real XMPP server: Debian's prosody, started on loopback by the test session
(tests/xmpp_server.py), with a real client receiving."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest
from sqlalchemy.engine import Engine

from cigri.config import Conf
from cigri.db import events as eventsdb
from cigri.db import notifications as N
from cigri.db.engine import transaction
from cigri.engine import judas
from tests.conftest import add_cluster
from tests.engine.test_metascheduler import make_campaign
from tests.parts import requires_part
from tests.xmpp_server import PASSWORD, PROSODY, Receiver, XmppServer, new_user, xmpp_server  # noqa: F401

pytestmark = requires_part(PROSODY)


@pytest.fixture
def cigri_jid(xmpp_server: XmppServer) -> str:  # noqa: F811 - the fixture imported above
    return new_user(xmpp_server, "cigri")


def xconf(conf: Conf, server: XmppServer, jid: str, port: int | None = None, password: str = PASSWORD) -> Conf:
    return conf.with_values(NOTIFICATIONS_XMPP_SERVER="127.0.0.1", NOTIFICATIONS_XMPP_PORT=port or server.port,
                            NOTIFICATIONS_XMPP_IDENTITY=jid, NOTIFICATIONS_XMPP_PASSWORD=password)


@pytest.fixture
def receiver(xmpp_server: XmppServer) -> Iterator[Receiver]:  # noqa: F811
    r = Receiver(new_user(xmpp_server, "alice"), xmpp_server.port)
    yield r
    r.stop()


def subscribe(engine: Engine, user: str, jid: str) -> None:
    with transaction(engine) as c:  # the API's path: the address is checked
        N.add_subscription(c, user, "jabber", jid, "low")


def test_jabber_messages_reach_the_users(pg_engine: Engine, pg_conf: Conf, xmpp_server: XmppServer,  # noqa: F811
                                         cigri_jid: str, receiver: Receiver) -> None:
    admin = Receiver(new_user(xmpp_server, "admin"), xmpp_server.port)
    try:
        cl = add_cluster(pg_engine, "dahu")
        cid = make_campaign(pg_engine, "alice", [cl], n_tasks=0)
        subscribe(pg_engine, "alice", receiver.jid)
        subscribe(pg_engine, N.ADMIN_LOGIN, admin.jid)
        with pg_engine.begin() as c:
            ev = eventsdb.create_event(c, "campaign", "USER_FIX", campaign_id=cid, message="stderr: a\x1b[2Jb <&>")
            log_ev = eventsdb.create_event(c, "log", "ALMIGHTY_STARTING", state="closed", message="hello")
        conf = xconf(pg_conf, xmpp_server, cigri_jid)
        res = judas.notification_pass(pg_engine, conf)
        assert sorted(res.marked) == [ev, log_ev] and res.retried == []
        got = receiver.wait_for(1)
        assert got == [(cigri_jid, f"[CIGRI] (high): New event #{ev}: USER_FIX for campaign #{cid}\n"
                                   "stderr: a\ufffd[2Jb <&>")]
        assert admin.wait_for(1) == [(cigri_jid, f"*[CIGRI] (high): New log event #{log_ev}: ALMIGHTY_STARTING\n"
                                                 "hello*")]
        assert judas.notification_pass(pg_engine, conf).messages == []
        assert len(receiver.messages) == 1 and len(admin.messages) == 1
    finally:
        admin.stop()


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_unreachable_xmpp_server_keeps_the_events_for_later(pg_engine: Engine, pg_conf: Conf,
                                                            xmpp_server: XmppServer,  # noqa: F811
                                                            cigri_jid: str, receiver: Receiver) -> None:
    subscribe(pg_engine, N.ADMIN_LOGIN, receiver.jid)
    with pg_engine.begin() as c:
        ev = eventsdb.create_event(c, "log", "RUNNER_FAILED", state="closed", message="runner c1 died")
    down = judas.notification_pass(pg_engine, xconf(pg_conf, xmpp_server, cigri_jid, port=_closed_port()))
    assert down.marked == [] and down.retried == [ev]
    up = judas.notification_pass(pg_engine, xconf(pg_conf, xmpp_server, cigri_jid))
    assert up.marked == [ev]
    assert [body for _f, body in receiver.wait_for(1)] == [f"*[CIGRI] (high): New log event #{ev}: RUNNER_FAILED\n"
                                                           "runner c1 died*"]


def test_refused_login_is_reported_and_not_retried(pg_engine: Engine, pg_conf: Conf, xmpp_server: XmppServer,  # noqa: F811
                                                   cigri_jid: str, receiver: Receiver,
                                                   caplog: pytest.LogCaptureFixture) -> None:
    subscribe(pg_engine, N.ADMIN_LOGIN, receiver.jid)
    with pg_engine.begin() as c:
        ev = eventsdb.create_event(c, "log", "RUNNER_FAILED", state="closed", message="x")
    res = judas.notification_pass(pg_engine, xconf(pg_conf, xmpp_server, cigri_jid, password="wrong"))
    assert res.marked == [ev] and res.retried == []
    assert any(f"refused the login of {cigri_jid}" in r.getMessage() for r in caplog.records)
    assert receiver.messages == []
