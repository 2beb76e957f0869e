"""`/` and `/auth/token` (bearer tokens for remote clients)."""

from __future__ import annotations

import time
from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import Response

from cigri.api.auth import AuthError
from cigri.api.bodies import TokenRequest, parse_json, read_body, request_body, validate
from cigri.api.core import ApiError, accepted, bad, forbidden, link, render
from cigri.api.state import Api, get_api

router = APIRouter()
ApiDep = Annotated[Api, Depends(get_api)]


@router.get("/", summary="Entry point")
def root(request: Request) -> Response:
    return render(request, 200, {"links": [link(request, "self", "/"),
                                           link(request, "collection", "/campaigns", "campaigns"),
                                           link(request, "collection", "/clusters", "clusters")]}, "GET")


@router.post("/auth/token", summary="Issue a bearer token (over the Unix socket or a trusted proxy)",
             openapi_extra=request_body(TokenRequest))
async def auth_token(request: Request, api: ApiDep) -> Response:
    caller = api.policy.caller(request)
    if caller.via not in ("peercred", "header") or not caller.authenticated:
        raise forbidden("Access denied: tokens are issued only to callers identified by the Unix "
                        "socket or a trusted proxy")
    raw = await read_body(request, 64 * 1024)
    body = validate(TokenRequest, parse_json(raw)) if raw.strip() else TokenRequest()
    user = body.user or caller.login
    if user != caller.user and not caller.admin:
        raise forbidden("Access denied: only administrators may issue tokens for other users")
    try:
        token, exp = api.auth.issue(user, body.lifetime)
    except AuthError as e:
        if e.message.startswith("Access denied"):
            raise forbidden(e.message) from None
        raise ApiError(503, "Service Unavailable", e.message) from None
    return render(request, 201, {"token": token, "user": user, "expires": exp})


@router.delete("/auth/token", status_code=202,
               summary="Revoke a bearer token: the one this request carries, or any (jti=...) for an admin")
def revoke_token(request: Request, api: ApiDep, jti: str | None = Query(None, max_length=64)) -> Response:
    caller = api.policy.user(request)
    if jti:
        if not caller.admin:
            raise forbidden("Access denied: only administrators may revoke another token by its jti "
                            "(revoke yours by sending it: gridtoken --revoke-api-token)")
        api.auth.revoke({"jti": jti, "sub": None, "exp": int(time.time()) + api.auth.lifetime})
        return accepted(request, f"Token {jti} revoked", "Deleted")
    if caller.via != "jwt":
        raise bad("No bearer token in this request: send the token to revoke in 'Authorization: Bearer', "
                  "or give its jti (administrators)")
    claims = api.auth.decode(request.headers["authorization"].partition(" ")[2].strip())
    api.auth.revoke(claims)
    return accepted(request, f"Token {claims['jti']} revoked", "Deleted")
