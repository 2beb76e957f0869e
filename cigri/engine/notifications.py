"""Notification messages and their delivery (spec §10.3 "Message delivery").

A message goes to a grid user and/or the administrator (`%%admin%%` subscriptions); each
subscription receives it if its severity is <= the message's (low < medium < high; a
NULL severity is medium, §15.2 #28). Delivery: `mail` through SMTP (NOTIFICATIONS_SMTP_*,
one connection per notification pass), `log` to CiGri's log, `xmpp` only if an XMPP
library is installed — none is, so XMPP subscriptions are logged as undeliverable."""

from __future__ import annotations

import importlib.util
import logging
import smtplib
from dataclasses import dataclass
from email.message import EmailMessage
from typing import Any

from sqlalchemy.engine import Connection

from cigri.config import Conf
from cigri.db.notifications import subscriptions_for

log = logging.getLogger("cigri.notifications")

SEVERITY_RANK = {"low": 0, "medium": 1, "high": 2}
ADMIN_LOGIN = "%%admin%%"


def subscriptions(conn: Connection, grid_user: str) -> list[dict[str, Any]]:
    return subscriptions_for(conn, grid_user)


def xmpp_available() -> bool:
    return any(importlib.util.find_spec(m) is not None for m in ("slixmpp", "xmpp", "sleekxmpp"))


@dataclass
class Message:
    subject: str
    body: str = ""
    severity: str = "high"
    user: str | None = None  # grid login of the recipient (campaign owner)
    admin: bool = False
    admin_severity: str | None = None  # admin copy severity (default: severity)


class Notifier:
    """Delivers messages; keep one per notification pass (it holds the SMTP connection)."""

    def __init__(self, conf: Conf):
        self.conf = conf
        self._smtp: smtplib.SMTP | None = None
        self._smtp_broken = False
        self._xmpp_warned = False
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

    def send(self, conn: Connection, msg: Message) -> None:
        for sub, admin in self.recipients(conn, msg):
            kind, identity = sub.get("type"), sub.get("identity") or ""
            sev = (msg.admin_severity or msg.severity) if admin else msg.severity
            line = f"{self.conf.get('NOTIFICATIONS_SMTP_SUBJECT_TAG')} ({sev}): {msg.subject}"
            if kind == "mail":
                self._mail(identity, line, msg.body or msg.subject)
            elif kind == "log":
                log.info("Notification for %s: %s %s", identity, line, msg.body)
                self.sent.append(("log", identity, line))
            elif kind == "xmpp":
                if not self._xmpp_warned:
                    log.warning("XMPP notifications are unavailable (no XMPP library installed): "
                                "messages to %s are not delivered", identity)
                    self._xmpp_warned = True
            else:
                log.error("Unknown notification type %r for %s", kind, identity)

    def _mail(self, to: str, subject: str, body: str) -> None:
        server = self.conf.get("NOTIFICATIONS_SMTP_SERVER")
        if not server or self._smtp_broken:
            return
        em = EmailMessage()
        em["From"] = self.conf.get("NOTIFICATIONS_SMTP_FROM")
        em["To"] = to
        em["Subject"] = subject
        em.set_content(body)
        try:
            if self._smtp is None:
                self._smtp = smtplib.SMTP(server, int(self.conf.get("NOTIFICATIONS_SMTP_PORT")), timeout=30)
            self._smtp.send_message(em)
            self.sent.append(("mail", to, subject))
        except (OSError, smtplib.SMTPException) as e:
            log.error("Could not send mail to %s through %s: %s", to, server, e)
            self.close()
            self._smtp_broken = True  # one failure per pass, not one per message

    def close(self) -> None:
        if self._smtp is not None:
            try:
                self._smtp.quit()
            except (OSError, smtplib.SMTPException):
                pass
            self._smtp = None
