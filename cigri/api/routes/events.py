"""/events: open global events (public), one event, fixing events, events raised by admins."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool

from cigri import events as E
from cigri.api.bodies import EventIn, body_of, request_body
from cigri.api.core import accepted, created, flag, int_id, int_param, link, not_found, render
from cigri.api.state import Api, get_api
from cigri.db import events as dbevents

router = APIRouter()
ApiDep = Annotated[Api, Depends(get_api)]


@router.get("/events", summary="Open global (cluster, notify, log) events")
def list_events(request: Request, api: ApiDep, limit: str | None = Query(None), offset: str | None = Query(None),
                pretty_: str | None = Query(None, alias="pretty")) -> Response:
    lim = int_param(limit, "limit", 100) or 100
    off = int_param(offset, "offset", 0)
    with api.engine.connect() as conn:
        items, total = dbevents.global_events(conn, lim, off)
    if not items:
        raise not_found("No global events")
    return render(request, 200, {"items": items, "total": total, "offset": off}, "DELETE,GET,POST,PUT")


@router.post("/events", status_code=201, summary="Create an event (administrators only)",
             openapi_extra=request_body(EventIn))
async def post_event(request: Request, api: ApiDep) -> Response:
    api.policy.admin(request, "Only root can create an event")
    ev = await body_of(request, EventIn)
    await run_in_threadpool(E.raise_event, api.engine, api.conf, ev.class_, ev.code, ev.state, job_id=ev.job_id,
                            cluster_id=ev.cluster_id, campaign_id=ev.campaign_id, parent=ev.parent,
                            message=ev.message)
    return created(request, "New event created")


@router.get("/events/{eid}", summary="One event (campaign events: owner or admin)")
def get_event(request: Request, api: ApiDep, eid: str, pretty_: str | None = Query(None, alias="pretty")
              ) -> Response:
    i = int_id(eid)
    with api.engine.connect() as conn:
        ev = dbevents.event_representation(conn, i)
        if ev is None:
            raise not_found(f"Event {i} not found")
        if ev["campaign_id"] is not None:
            api.policy.event(conn, ev, api.policy.user(request), act=False)
    ev["links"] = [link(request, "self", f"/events/{i}"), link(request, "parent", "/events")]
    return render(request, 200, ev, "DELETE,GET,POST,PUT")


@router.delete("/events/{eid}", status_code=202, summary="Fix (close) an event, optionally resubmitting its job")
def fix_event(request: Request, api: ApiDep, eid: str, resubmit: str | None = Query(None)) -> Response:
    i = int_id(eid)
    caller = api.policy.user(request)
    E.fix_event(api.engine, i, caller.login, api.policy.admins, flag(resubmit))
    return accepted(request, f"Event {i} closed")
