"""Revoked API bearer tokens (by `jti`): written when a user or an admin revokes a token,
read on every request that carries one; rows are dropped once the token has expired."""

from __future__ import annotations

from datetime import UTC, datetime

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from cigri.db.schema import api_revoked_tokens, now


def revoke(conn: Connection, jti: str, user: str | None, expires: int) -> None:
    conn.execute(api_revoked_tokens.delete().where(api_revoked_tokens.c.expires < now()))
    exists = conn.execute(sa.select(api_revoked_tokens.c.jti).where(api_revoked_tokens.c.jti == jti)).first()
    if not exists:
        conn.execute(api_revoked_tokens.insert().values(jti=jti, grid_user=user, revoked_at=now(),
                                                        expires=datetime.fromtimestamp(expires, UTC)))


def is_revoked(conn: Connection, jti: str) -> bool:
    q = sa.select(api_revoked_tokens.c.jti).where(api_revoked_tokens.c.jti == jti)
    return conn.execute(q).first() is not None
