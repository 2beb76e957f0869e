"""The API's one access policy. Every route asks it who is calling and whether the caller
may read or act on an object: public grid information needs nothing, everything else
needs an authenticated caller who owns the object or is an administrator
(cigri.access.may_act_on, the rule the commands and the library use too)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from fastapi import Request
from sqlalchemy.engine import Connection

from cigri.access import is_admin, may_act_on
from cigri.api.auth import Authenticator, AuthError
from cigri.api.core import forbidden, not_found
from cigri.db import campaigns as dbcampaigns
from cigri.db import jobs as dbjobs


@dataclass(frozen=True)
class Caller:
    user: str | None
    via: str  # "peercred", "header", "jwt" or "none"
    admin: bool

    @property
    def authenticated(self) -> bool:
        return bool(self.user) and str(self.user).lower() not in ("unknown", "null")

    @property
    def login(self) -> str:
        assert self.user is not None
        return self.user


class Policy:
    def __init__(self, auth: Authenticator) -> None:
        self.auth = auth

    @property
    def admins(self) -> tuple[str, ...]:
        return tuple(sorted(self.auth.admins))

    # ---------------------------------------------------------------- who
    def caller(self, request: Request) -> Caller:
        """The caller, authenticated or not; 403 for a refused identity (spoofed header, bad token)."""
        try:
            ident = self.auth.identify(request.scope, request.headers)
        except AuthError as e:
            raise forbidden(e.message) from None
        return Caller(ident.user, ident.via, is_admin(ident.user, self.auth.admins))

    def user(self, request: Request) -> Caller:
        """An authenticated caller, or 403 'not authenticated'."""
        c = self.caller(request)
        if not c.authenticated:
            raise forbidden("Access denied: not authenticated")
        return c

    def admin(self, request: Request, message: str) -> Caller:
        """An administrator, or 403 with `message`."""
        c = self.caller(request)
        if not (c.authenticated and c.admin):
            raise forbidden(message)
        return c

    # ---------------------------------------------------------------- what
    def require_owner(self, caller: Caller, owner: str | None, what: str) -> None:
        if not may_act_on(caller.user, owner, self.auth.admins):
            raise forbidden(f"Access denied: {what} belongs to another user")

    def campaign(self, conn: Connection, cid: int, caller: Caller) -> dict[str, Any]:
        """The campaign row, if the caller owns it or is an admin (404 / 403 otherwise)."""
        c = dbcampaigns.get_campaign(conn, cid)
        if c is None:
            raise not_found(f"Campaign {cid} not found")
        self.require_owner(caller, c["grid_user"], f"campaign {cid}")
        return c

    def job(self, conn: Connection, job_id: int, caller: Caller) -> dict[str, Any]:
        job = dbjobs.job_representation(conn, job_id)
        if job is None:
            raise not_found(f"Job {job_id} not found")
        self.require_owner(caller, job["grid_user"], f"job {job_id}")
        return job

    def event(self, conn: Connection, ev: dict[str, Any], caller: Caller, act: bool) -> None:
        """Campaign events: owner or admin. Global events: public to read, admins to fix."""
        if ev["campaign_id"] is not None:
            self.campaign(conn, int(ev["campaign_id"]), caller)
        elif act and not caller.admin:
            raise forbidden("Access denied: only an administrator can fix a global event")

    def acts_as(self, caller: Caller, admin_login: str) -> str:
        """The login under which the caller's own settings are kept: CiGri3 files the
        administrators' notifications under `%%admin%%` and their cluster tokens under `oar`."""
        return admin_login if caller.admin else caller.login
