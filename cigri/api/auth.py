"""Who is calling: identities a user on a shared login node cannot forge.

Three sources, in this order:
1. the CiGri3 identity header (`X-Cigri-User`, named by API_HEADER_USERNAME), honoured
   ONLY when the TCP peer address (or `unix:<login>` for a proxy on the Unix socket) is
   listed in API_TRUSTED_PROXIES; from anybody else it is refused (403), never ignored,
   so a misconfigured proxy is noticed;
2. a signed bearer token (HS256 JWT, secret in API_JWT_SECRET_FILE);
3. the kernel's peer credentials of a Unix-socket connection (SO_PEERCRED), put in the
   ASGI scope as `cigri.peer` by cigri.api.server.
"""

from __future__ import annotations

import os
import pwd
import secrets
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt

from cigri.config import Conf

PEER_SCOPE_KEY = "cigri.peer"
ISSUER = "cigri"


class AuthError(Exception):
    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


@dataclass(frozen=True)
class Identity:
    user: str | None
    via: str  # "peercred", "header", "jwt" or "none"

    @property
    def authenticated(self) -> bool:
        return self.user is not None and bool(self.user) and self.user.lower() not in ("unknown", "null")


def header_name(conf: Conf) -> str:
    """HTTP_X_CIGRI_USER (Rack/CGI variable) -> x-cigri-user (HTTP header)."""
    name = str(conf.get("API_HEADER_USERNAME") or "HTTP_X_CIGRI_USER")
    if name.upper().startswith("HTTP_"):
        name = name[5:]
    return name.replace("_", "-").lower()


def split_list(value: str | None) -> list[str]:
    return [v.strip() for v in (value or "").split(",") if v.strip()]


class Authenticator:
    def __init__(self, conf: Conf, engine: Any = None) -> None:
        self.conf = conf
        self.engine = engine
        self.header = header_name(conf)
        #: the HTTP spelling and the CGI/Apache one (underscores), both seen by CiGri3 sites
        self.header_names = (self.header, self.header.replace("-", "_"))
        self.proxies = set(split_list(conf.get("API_TRUSTED_PROXIES")))
        self.admins = set(split_list(conf.get("API_ADMINS"))) or {"root"}
        self.secret_file = str(conf.get("API_JWT_SECRET_FILE") or "")
        self.lifetime = int(conf.get("API_JWT_LIFETIME"))
        self._secret: bytes | None = None

    # ---------------------------------------------------------------- tokens
    def secret(self, create: bool = False) -> bytes | None:
        if self._secret is None and self.secret_file:
            self._secret = load_secret(self.secret_file, create=create)
        return self._secret

    def issue(self, user: str, lifetime: int | None = None) -> tuple[str, int]:
        """A token for `user` (an existing account), valid at most API_JWT_LIFETIME seconds
        whatever is asked, with a `jti` by which it can be revoked."""
        key = self.secret(create=True)
        if key is None:
            raise AuthError(f"No JWT secret ({self.secret_file} is unreadable)")
        if not account_exists(user):
            raise AuthError(f"Access denied: no account named {user!r} on this server")
        now = int(time.time())
        exp = now + min(int(lifetime or self.lifetime), self.lifetime)
        claims = {"sub": user, "iss": ISSUER, "iat": now, "exp": exp, "jti": uuid.uuid4().hex}
        return jwt.encode(claims, key, algorithm="HS256"), exp

    def decode(self, token: str) -> dict[str, Any]:
        """The claims of a valid token (signature, issuer, expiry, lifetime cap, jti)."""
        key = self.secret()
        if key is None:
            raise AuthError("Access denied: bearer tokens are not enabled on this server")
        try:
            claims: dict[str, Any] = jwt.decode(token, key, algorithms=["HS256"], issuer=ISSUER,
                                                options={"require": ["sub", "exp"]})
        except jwt.ExpiredSignatureError:
            raise AuthError("Access denied: token expired (get a new one with gridtoken --api-token)") from None
        except jwt.PyJWTError as e:
            raise AuthError(f"Access denied: invalid token ({e})") from None
        sub, jti, iat = claims.get("sub"), claims.get("jti"), claims.get("iat")
        if not isinstance(sub, str) or not sub:
            raise AuthError("Access denied: invalid token (no subject)")
        if not isinstance(jti, str) or not jti or not isinstance(iat, int):
            raise AuthError("Access denied: invalid token (no id or issue time: an older token, "
                            "get a new one with gridtoken --api-token)")
        if int(claims["exp"]) - iat > self.lifetime:
            raise AuthError("Access denied: token lifetime longer than this server allows (API_JWT_LIFETIME)")
        return claims

    def verify(self, token: str) -> str:
        """The user of a token that is valid, not revoked, and whose account still exists."""
        claims = self.decode(token)
        if self.engine is not None:
            from cigri.db.tokens import is_revoked

            with self.engine.connect() as conn:
                if is_revoked(conn, str(claims["jti"])):
                    raise AuthError("Access denied: token revoked (get a new one with gridtoken --api-token)")
        sub = str(claims["sub"])
        if not account_exists(sub):
            raise AuthError(f"Access denied: the account {sub!r} of this token no longer exists")
        return sub

    def revoke(self, claims: dict[str, Any]) -> None:
        from cigri.db.engine import transaction
        from cigri.db.tokens import revoke

        with transaction(self.engine) as conn:
            revoke(conn, str(claims["jti"]), str(claims.get("sub") or ""), int(claims["exp"]))

    # ---------------------------------------------------------------- requests
    def identify(self, scope: Mapping[str, Any], headers: Any) -> Identity:
        peer = scope.get(PEER_SCOPE_KEY)
        claimed = self.claimed_user(headers)
        if claimed is not None:
            if peer is not None:
                source = f"unix:{peer.get('user')}"
            else:
                client = scope.get("client")
                source = client[0] if client else "unknown"
            if source not in self.proxies:
                raise AuthError(f"Access denied: identity header {self.header} not accepted from {source} "
                                "(not a trusted proxy)")
            return Identity(claimed.strip(), "header")
        auth = headers.get("authorization")
        if auth:
            kind, _, token = auth.partition(" ")
            if kind.lower() != "bearer" or not token.strip():
                raise AuthError("Access denied: only 'Authorization: Bearer <token>' is accepted")
            return Identity(self.verify(token.strip()), "jwt")
        if peer is not None:
            if not peer.get("user"):
                raise AuthError(f"Access denied: uid {peer.get('uid')} has no login name on the server")
            return Identity(str(peer["user"]), "peercred")
        return Identity(None, "none")

    def claimed_user(self, headers: Any) -> str | None:
        """The identity header, in either spelling: `X-Cigri-User` or CiGri3's Apache
        `X_CIGRI_USER`. Both present with different values is refused: a proxy that set one
        may have passed the client's other one through."""
        values = {v for name in self.header_names for v in headers.getlist(name)} \
            if hasattr(headers, "getlist") else {headers.get(n) for n in self.header_names} - {None}
        if not values:
            return None
        if len(values) > 1:
            raise AuthError(f"Access denied: conflicting identity headers ({self.header} given twice "
                            "or in both spellings)")
        return str(values.pop())

    def is_admin(self, user: str | None) -> bool:
        return user is not None and user in self.admins


def account_exists(user: str) -> bool:
    """A login the system knows (local files, LDAP... through NSS)."""
    try:
        pwd.getpwnam(user)
    except (KeyError, ValueError):
        return False
    return True


def load_secret(path: str, create: bool = False) -> bytes | None:
    """The HS256 key; created (0600) on first use by the server if absent."""
    p = Path(path)
    try:
        data = p.read_bytes().strip()
        if data:
            return data
    except FileNotFoundError:
        pass
    except OSError:
        return None
    if not create:
        return None
    try:
        p.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_hex(32) + "\n")
    except FileExistsError:
        pass
    except OSError:
        return None
    return p.read_bytes().strip() or None
