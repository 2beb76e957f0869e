"""Notification messages and their delivery (spec §10.3 "Message delivery").

A message goes to a grid user and/or the administrator (`%%admin%%` subscriptions); each
subscription receives it if its severity is <= the message's (low < medium < high; a
NULL severity is medium, §15.2 #28). Delivery: `mail` through SMTP (NOTIFICATIONS_SMTP_*),
`xmpp` as a Jabber chat message (NOTIFICATIONS_XMPP_*, cigri.engine.xmpp), one connection
of each per notification pass, and `log` to CiGri's log."""

from __future__ import annotations

import logging
import smtplib
from dataclasses import dataclass, field
from email.message import EmailMessage
from typing import Any

from sqlalchemy.engine import Connection

from cigri.addresses import BadAddress, check_identity
from cigri.config import Conf
from cigri.db.notifications import subscriptions_for
from cigri.engine.xmpp import XmppError, XmppSession

log = logging.getLogger("cigri.notifications")

SEVERITY_RANK = {"low": 0, "medium": 1, "high": 2}
ADMIN_LOGIN = "%%admin%%"


def subscriptions(conn: Connection, grid_user: str) -> list[dict[str, Any]]:
    return subscriptions_for(conn, grid_user)


@dataclass
class Message:
    subject: str
    body: str = ""
    severity: str = "high"
    user: str | None = None  # grid login of the recipient (campaign owner)
    admin: bool = False
    admin_severity: str | None = None  # admin copy severity (default: severity)
    events: list[int] = field(default_factory=list)  # the events this message tells about


@dataclass
class Outcome:
    """What became of one message: deliveries made, refused or impossible (not retried), and
    deliveries whose server could not be reached (worth another try)."""

    delivered: int = 0
    failed: int = 0
    unreachable: int = 0


OK, FAILED, UNREACHABLE = "ok", "failed", "unreachable"


class Notifier:
    """Delivers messages; keep one per notification pass (it holds the SMTP connection).
    Every delivery is independent: none can raise, each is logged when it fails."""

    def __init__(self, conf: Conf):
        self.conf = conf
        self._smtp: smtplib.SMTP | None = None
        self._smtp_down = False
        self._xmpp: XmppSession | None = None
        self._xmpp_down: str | None = None  # FAILED or UNREACHABLE once the session could not be had
        self._xmpp_off_warned = False
        self.sent: list[tuple[str, str, str]] = []  # (type, identity, subject line) for the log/tests

    def _rank(self, s: str | None) -> int:
        return SEVERITY_RANK.get((s or "medium").lower(), 1)

    def recipients(self, conn: Connection, msg: Message) -> list[tuple[dict[str, Any], bool]]:
        out: list[tuple[dict[str, Any], bool]] = []
        if msg.user:
            out += [(s, False) for s in subscriptions(conn, msg.user)
                    if self._rank(s.get("severity")) <= self._rank(msg.severity)]
        if msg.admin:
            level = self._rank(msg.admin_severity or msg.severity)
            out += [(s, True) for s in subscriptions(conn, ADMIN_LOGIN) if self._rank(s.get("severity")) <= level]
        return out

    def send(self, conn: Connection, msg: Message) -> Outcome:
        outcome = Outcome()
        for sub, admin in self.recipients(conn, msg):
            try:
                result = self._deliver(sub, admin, msg)
            except Exception:  # noqa: BLE001 - one delivery never stops the others
                log.exception("Notification to %r (%s) failed", sub.get("identity"), sub.get("type"))
                result = FAILED
            if result == OK:
                outcome.delivered += 1
            elif result == UNREACHABLE:
                outcome.unreachable += 1
            else:
                outcome.failed += 1
        return outcome

    def _deliver(self, sub: dict[str, Any], admin: bool, msg: Message) -> str:
        kind, identity = sub.get("type"), sub.get("identity") or ""
        try:
            check_identity(str(kind), identity)
        except BadAddress as e:
            log.error("Notification for %s not sent: %s (subscription %s of %s)", kind, e, sub.get("id"),
                      sub.get("grid_user"))
            return FAILED
        sev = (msg.admin_severity or msg.severity) if admin else msg.severity
        line = f"{self.conf.get('NOTIFICATIONS_SMTP_SUBJECT_TAG')} ({sev}): {msg.subject}"
        if kind == "mail":
            return self._mail(identity, line, msg.body or msg.subject)
        if kind == "log":
            log.info("Notification for %s: %s %s", identity, line, msg.body)
            self.sent.append(("log", identity, line))
            return OK
        if kind == "xmpp":
            text = f"{line}\n{msg.body}" if msg.body else line
            return self._jabber(identity, f"*{text}*" if admin else text, line)
        log.error("Unknown notification type %r for %s", kind, identity)
        return FAILED

    def _mail(self, to: str, subject: str, body: str) -> str:
        server = self.conf.get("NOTIFICATIONS_SMTP_SERVER")
        if not server:
            return FAILED  # mail notifications are off
        if self._smtp_down:
            return UNREACHABLE  # one failed connection per pass, not one per message
        em = EmailMessage()
        em["From"] = self.conf.get("NOTIFICATIONS_SMTP_FROM")
        em["To"] = to
        em["Subject"] = subject.replace("\r", " ").replace("\n", " ")
        em.set_content(body)
        try:
            if self._smtp is None:
                self._smtp = smtplib.SMTP(server, int(self.conf.get("NOTIFICATIONS_SMTP_PORT")), timeout=30)
            self._smtp.send_message(em)
        except (smtplib.SMTPRecipientsRefused, smtplib.SMTPSenderRefused, smtplib.SMTPDataError) as e:
            log.error("The mail server %s refused the mail to %s: %s", server, to, e)
            return FAILED
        except (OSError, smtplib.SMTPException) as e:
            log.error("Could not send mail to %s through %s: %s", to, server, e)
            self.close()
            self._smtp_down = True
            return UNREACHABLE
        self.sent.append(("mail", to, subject))
        return OK

    def _jabber(self, to: str, text: str, line: str) -> str:
        server = self.conf.get("NOTIFICATIONS_XMPP_SERVER")
        if not server:
            if not self._xmpp_off_warned:
                log.warning("XMPP notifications are off (NOTIFICATIONS_XMPP_SERVER is empty): messages to %s and "
                            "other Jabber subscribers are not delivered", to)
                self._xmpp_off_warned = True
            return FAILED
        if self._xmpp_down:
            return self._xmpp_down
        if self._xmpp is None:
            try:
                self._xmpp = XmppSession(self.conf.get("NOTIFICATIONS_XMPP_IDENTITY"),
                                         self.conf.get("NOTIFICATIONS_XMPP_PASSWORD"), server,
                                         int(self.conf.get("NOTIFICATIONS_XMPP_PORT")))
            except XmppError as e:
                log.error("No XMPP notifications in this pass: %s", e)
                self._xmpp_down = UNREACHABLE if e.transient else FAILED
                return self._xmpp_down
        try:
            self._xmpp.send(to, text)
        except XmppError as e:
            log.error("Could not send the XMPP message to %s: %s", to, e)
            self._close_xmpp()
            self._xmpp_down = UNREACHABLE
            return UNREACHABLE
        self.sent.append(("xmpp", to, line))
        return OK

    def _close_xmpp(self) -> None:
        if self._xmpp is not None:
            session, self._xmpp = self._xmpp, None
            try:
                session.close()
            except Exception:  # noqa: BLE001 - leaving a server must not fail a pass
                log.exception("Closing the XMPP session failed")

    def close(self) -> None:
        self._close_xmpp()
        if self._smtp is not None:
            try:
                self._smtp.quit()
            except (OSError, smtplib.SMTPException):
                pass
            self._smtp = None
