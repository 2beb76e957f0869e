"""user_notifications rows: who wants to hear about what, and where.

The grid administrator's subscriptions are stored under the login `%%admin%%`."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from cigri.addresses import BadAddress, check_identity
from cigri.db.schema import user_notifications
from cigri.errors import NotFound, ParseError

ADMIN_LOGIN = "%%admin%%"
SEVERITIES = ("low", "medium", "high")
#: API type -> stored type (CiGri3 stores jabber as xmpp)
API_TYPES = {"mail": "mail", "jabber": "xmpp"}


def _row(r: Any) -> dict[str, Any]:
    return {"id": int(r.id), "grid_user": r.grid_user, "type": r.type, "identity": r.identity,
            "severity": r.severity or "medium"}


def list_subscriptions(conn: Connection, grid_user: str) -> list[dict[str, Any]]:
    q = sa.select(user_notifications).where(user_notifications.c.grid_user == grid_user).order_by(
        user_notifications.c.id)
    return [_row(r) for r in conn.execute(q)]


def subscriptions_for(conn: Connection, grid_user: str) -> list[dict[str, Any]]:
    """Subscriptions of a login for judas; a NULL severity counts as `medium`."""
    return list_subscriptions(conn, grid_user)


def add_subscription(conn: Connection, grid_user: str, api_type: str, identity: str, severity: str) -> int:
    ntype = API_TYPES.get(api_type)
    if ntype is None:
        raise NotFound(f"Unknown notification type {api_type}")
    if not identity or not isinstance(identity, str):
        raise ParseError("identity is required")
    try:
        check_identity(ntype, identity)
    except BadAddress as e:
        raise ParseError(f"Invalid {api_type} address: {e}") from None
    if severity not in SEVERITIES:
        raise ParseError("Severity should be 'low', 'medium' or 'high'")
    dup = conn.execute(sa.select(user_notifications.c.id).where(
        user_notifications.c.grid_user == grid_user, user_notifications.c.type == ntype,
        user_notifications.c.identity == identity)).first()
    if dup is not None:
        raise ParseError(f"{identity} is already subscribed")
    return int(conn.execute(user_notifications.insert().values(
        grid_user=grid_user, type=ntype, identity=identity, severity=severity)
        .returning(user_notifications.c.id)).scalar_one())


def delete_subscription(conn: Connection, grid_user: str, api_type: str, identity: str) -> int:
    ntype = API_TYPES.get(api_type)
    if ntype is None:
        raise NotFound(f"Unknown notification type {api_type}")
    res = conn.execute(user_notifications.delete().where(
        user_notifications.c.grid_user == grid_user, user_notifications.c.type == ntype,
        user_notifications.c.identity == identity))
    if not res.rowcount:
        raise NotFound(f"No {api_type} subscription for {identity}")
    return int(res.rowcount)
