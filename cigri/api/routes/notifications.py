"""/notifications: the caller's own subscriptions (administrators share CiGri3's `%%admin%%`)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool

from cigri.api.bodies import Subscription, body_of, request_body
from cigri.api.core import accepted, bad, created, link, not_found, render
from cigri.api.state import Api, get_api
from cigri.db import notifications as N
from cigri.db.engine import transaction

router = APIRouter()
ApiDep = Annotated[Api, Depends(get_api)]


@router.get("/notifications", summary="Your notification subscriptions")
def notifications(request: Request, api: ApiDep, pretty_: str | None = Query(None, alias="pretty")) -> Response:
    login = api.policy.acts_as(api.policy.user(request), N.ADMIN_LOGIN)
    with api.engine.connect() as conn:
        items = N.list_subscriptions(conn, login)
    return render(request, 200, {"items": items, "links": [link(request, "self", "/notifications/")]}, "GET")


@router.post("/notifications/{ntype}", status_code=201, summary="Subscribe (mail or jabber)",
             openapi_extra=request_body(Subscription))
async def subscribe(request: Request, api: ApiDep, ntype: str) -> Response:
    login = api.policy.acts_as(api.policy.user(request), N.ADMIN_LOGIN)
    if ntype not in N.API_TYPES:
        raise not_found(f"Unknown notification type {ntype} (mail or jabber)")
    sub = await body_of(request, Subscription)

    def _do() -> None:
        with transaction(api.engine) as conn:
            N.add_subscription(conn, login, ntype, sub.identity, sub.severity)

    await run_in_threadpool(_do)
    return created(request, "New subscription created")


@router.delete("/notifications/{ntype}", status_code=202, summary="Unsubscribe")
def unsubscribe(request: Request, api: ApiDep, ntype: str, identity: str | None = Query(None)) -> Response:
    login = api.policy.acts_as(api.policy.user(request), N.ADMIN_LOGIN)
    if ntype not in N.API_TYPES:
        raise not_found(f"Unknown notification type {ntype} (mail or jabber)")
    if not identity:
        raise bad("Parameter identity is required")
    with transaction(api.engine) as conn:
        N.delete_subscription(conn, login, ntype, identity)
    return accepted(request, "Unsubscription ok", "Deleted")
