"""`/` and `/auth/token` (bearer tokens for remote clients)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response

from cigri.api.auth import AuthError
from cigri.api.bodies import TokenRequest, parse_json, read_body, request_body, validate
from cigri.api.core import ApiError, forbidden, link, render
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
        raise ApiError(503, "Service Unavailable", e.message) from None
    return render(request, 201, {"token": token, "user": user, "expires": exp})
