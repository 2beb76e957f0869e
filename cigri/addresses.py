"""Syntax of notification addresses: mail addresses and Jabber ids (JIDs).

Checked when a user subscribes, and again by judas before sending (a CiGri3 database may
hold rows written before these checks): an address can never carry a line break into a
mail header or an XMPP stanza, and one malformed address cannot break anyone else's
notifications. Deliberately strict: plain ASCII mail addresses (dot-atom local part),
and JIDs of the form local@domain[/resource] (RFC 7622 without internationalised parts)."""

from __future__ import annotations

import re

MAX_MAIL = 254
_ATOM = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
_LOCAL_MAIL = re.compile(rf"{_ATOM}(?:\.{_ATOM})*")
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_DOMAIN = re.compile(rf"{_LABEL}(?:\.{_LABEL})*\.?")
_JID_LOCAL_FORBIDDEN = set("\"&'/:<>@")


class BadAddress(ValueError):
    pass


def _printable(text: str, what: str, allow_space: bool = False) -> None:
    if not text:
        raise BadAddress(f"empty {what}")
    bad = next((ch for ch in text if (ord(ch) < 0x21 and not (allow_space and ch == " ")) or ord(ch) == 0x7F), None)
    if bad is not None:
        name = {"\r": "carriage return", "\n": "line feed", " ": "space", "\t": "tab"}.get(bad, f"U+{ord(bad):04X}")
        raise BadAddress(f"{what} {text!r} contains a {name}")


def check_mail(address: str) -> str:
    """The address if it is a plain mail address (local@domain), else BadAddress naming the problem."""
    _printable(address, "mail address")
    if len(address) > MAX_MAIL:
        raise BadAddress(f"mail address longer than {MAX_MAIL} characters")
    local, at, domain = address.rpartition("@")
    if not at or not local:
        raise BadAddress(f"mail address {address!r} is not of the form name@domain")
    if len(local) > 64 or not _LOCAL_MAIL.fullmatch(local):
        raise BadAddress(f"mail address {address!r} has an invalid name part {local!r}")
    if not _DOMAIN.fullmatch(domain):
        raise BadAddress(f"mail address {address!r} has an invalid domain {domain!r}")
    return address


def check_jid(jid: str) -> str:
    """The JID if it is local@domain[/resource] (a user's address), else BadAddress."""
    bare, _slash, resource = jid.partition("/")
    _printable(bare, "Jabber id")
    if _slash:
        _printable(resource, "Jabber resource", allow_space=True)
    local, at, domain = bare.partition("@")
    if not at or not local:
        raise BadAddress(f"Jabber id {jid!r} is not of the form name@server[/resource]")
    if len(local.encode()) > 1023 or set(local) & _JID_LOCAL_FORBIDDEN:
        raise BadAddress(f"Jabber id {jid!r} has an invalid name part {local!r}")
    if len(domain) > 1023 or not _DOMAIN.fullmatch(domain):
        raise BadAddress(f"Jabber id {jid!r} has an invalid server {domain!r}")
    if _slash and (not resource or len(resource.encode()) > 1023):
        raise BadAddress(f"Jabber id {jid!r} has an empty or too long resource")
    return jid


def check_identity(kind: str, identity: str) -> str:
    """Check an address of a notification type as stored ('mail', 'xmpp'; 'log' takes any printable text)."""
    if kind == "mail":
        return check_mail(identity)
    if kind == "xmpp":
        return check_jid(identity)
    _printable(identity, "identity", allow_space=True)
    return identity
