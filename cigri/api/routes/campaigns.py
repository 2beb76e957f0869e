"""/campaigns: the public list and summaries, submission, updates (rename, pause, resume,
cancel, purge), a campaign's JDL, tasks and events (owner or admin)."""

from __future__ import annotations

from typing import Annotated, Any
from urllib.parse import parse_qs

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool

from cigri import campaigns as C
from cigri import clock
from cigri import events as E
from cigri.api.bodies import JDL_SCHEMA, CampaignUpdate, TaskLines, loads, parse_json, read_body, request_body, validate
from cigri.api.core import ApiError, accepted, bad, flag, int_id, int_param, link, not_found, prefix_of, pretty, render
from cigri.api.policy import Caller
from cigri.api.state import Api, get_api
from cigri.db import campaigns as dbcampaigns
from cigri.db import events as dbevents
from cigri.db import jobs as dbjobs
from cigri.db import parameters as dbparameters
from cigri.db import progress
from cigri.errors import AdmissionRuleError, ParseError, StateError
from cigri.states import JOB_STATES

router = APIRouter()
ApiDep = Annotated[Api, Depends(get_api)]
TASK_STATES = (*JOB_STATES, "queued", "pending")


def format_campaign(request: Request, c: dict[str, Any], finished: int, has_events: bool,
                    clusters: dict[str, Any] | None = None) -> dict[str, Any]:
    cid = int(c["id"])
    d: dict[str, Any] = {
        "id": cid, "name": c["name"], "user": c["grid_user"], "state": c["state"], "has_events": has_events,
        "submission_time": clock.epoch(c["submission_time"]), "total_jobs": c["nb_jobs"] or 0,
        "finished_jobs": finished,
        "links": [link(request, "self", f"/campaigns/{cid}"), link(request, "parent", "/campaigns"),
                  link(request, "collection", f"/campaigns/{cid}/jobs", "jobs"),
                  link(request, "collection", f"/campaigns/{cid}/events", "events"),
                  link(request, "item", f"/campaigns/{cid}/jdl", "jdl")],
    }
    if clusters is not None:
        d["clusters"] = clusters
    return d


def campaign_body(api: Api, request: Request, cid: int, with_clusters: bool) -> dict[str, Any]:
    with api.engine.connect() as conn:
        c = dbcampaigns.get_campaign(conn, cid)
        if c is None:
            raise not_found(f"Campaign {cid} not found")
        fin, ev, cl = progress.campaign_summary(conn, c, with_clusters)
    return format_campaign(request, c, fin, ev, cl)


def _campaign_list(api: Api, request: Request, user: str | None, lim: int | None, off: int) -> tuple[bytes, int]:
    with api.engine.connect() as conn:
        rows, total = dbcampaigns.list_campaigns(conn, user=user, limit=lim, offset=off)
        whole = user is None and lim is None and off == 0
        fin = progress.finished_counts(conn, rows, dbcampaigns.LISTED_CAMPAIGN_STATES if whole else None)
        ev = dbevents.campaigns_with_events(conn, [int(r["id"]) for r in rows])
    items = [format_campaign(request, r, fin[int(r["id"])], int(r["id"]) in ev) for r in rows]
    resp = render(request, 200, {"items": items, "total": total,
                                 "links": [link(request, "self", "/campaigns"), link(request, "parent", "/")]})
    return bytes(resp.body), len(rows)


def _owned(api: Api, cid: int, caller: Caller) -> dict[str, Any]:
    with api.engine.connect() as conn:
        return api.policy.campaign(conn, cid, caller)


@router.get("/campaigns", summary="Running and paused campaigns of every user")
def list_campaigns(request: Request, api: ApiDep, user: str | None = Query(None), limit: str | None = Query(None),
                   offset: str | None = Query(None), pretty_: str | None = Query(None, alias="pretty")) -> Response:
    lim = int_param(limit, "limit", 0) or None
    off = int_param(offset, "offset", 0)
    key = (user, lim, off, prefix_of(request), pretty(request))
    body = api.cached_list(key, lambda: _campaign_list(api, request, user, lim, off))
    return Response(body, status_code=200, media_type="application/json", headers={"Allow": "GET,POST"})


def _submit(api: Api, raw: bytes, user: str) -> int:
    try:
        jdl = loads(raw)
    except ValueError as e:
        raise ApiError(400, "Error", f"Error submitting campaign: the JDL is not valid JSON ({e})") from None
    if not isinstance(jdl, dict):
        raise ApiError(400, "Error", "Error submitting campaign: the JDL must be a JSON object")
    try:
        with api.submit_slots:
            return int(C.submit_campaign(api.engine, jdl, user, api.conf, read_files=False))
    except AdmissionRuleError as e:
        raise ApiError(400, "Admission rule error", e.message) from None
    except (ParseError, StateError) as e:
        raise ApiError(400, "Error", f"Error submitting campaign: {e.message}") from None


@router.post("/campaigns", status_code=201, summary="Submit a campaign (body = JDL)", openapi_extra=JDL_SCHEMA)
async def submit(request: Request, api: ApiDep) -> Response:
    caller = api.policy.user(request)
    raw = await read_body(request, api.max_body)
    if not raw.strip():
        raise ApiError(400, "Error", "Error submitting campaign: empty JDL")
    cid = await run_in_threadpool(_submit, api, raw, caller.login)
    del raw
    body = await run_in_threadpool(campaign_body, api, request, cid, False)
    return render(request, 201, body, headers={"Location": prefix_of(request) + f"/campaigns/{cid}"})


@router.get("/campaigns/{cid}", summary="One campaign with its per-cluster state")
def get_campaign(request: Request, api: ApiDep, cid: str, pretty_: str | None = Query(None, alias="pretty")
                 ) -> Response:
    return render(request, 200, campaign_body(api, request, int_id(cid), True), "DELETE,GET,POST,PUT")


async def _update_values(request: Request) -> CampaignUpdate:
    """name/state from the query string, a JSON object or a form body (CiGri3 clients use all three)."""
    values: dict[str, Any] = dict(request.query_params)
    raw = await read_body(request, 64 * 1024)
    if raw.strip():
        if "json" in request.headers.get("content-type", ""):
            parsed = parse_json(raw)
            if not isinstance(parsed, dict):
                raise bad("Cannot read the request body: not an object")
            values.update({k: v for k, v in parsed.items() if k in ("name", "state")})
        else:
            try:
                values.update({k: v[-1] for k, v in parse_qs(raw.decode(), strict_parsing=False).items()})
            except UnicodeDecodeError as e:
                raise bad(f"Cannot read the request body: {e}") from None
    if values.get("state") not in (None, "paused", "in_treatment"):
        raise bad(f"Invalid state {values['state']!r} (paused or in_treatment)")
    return validate(CampaignUpdate, {k: values.get(k) for k in ("name", "state")})


@router.put("/campaigns/{cid}", status_code=202,
            summary="Rename, pause (state=paused) or resume (state=in_treatment)",
            openapi_extra=request_body(CampaignUpdate))
async def put_campaign(request: Request, api: ApiDep, cid: str, name: str | None = Query(None),
                       state: str | None = Query(None)) -> Response:
    caller = api.policy.user(request)
    upd = await _update_values(request)
    i = int_id(cid)
    await run_in_threadpool(_owned, api, i, caller)
    if upd.name is not None or upd.state is not None:
        await run_in_threadpool(C.update_campaign, api.engine, i, caller.login, upd.name, upd.state,
                                api.policy.admins)
    return render(request, 202, await run_in_threadpool(campaign_body, api, request, i, False))


@router.delete("/campaigns/{cid}", status_code=202, summary="Cancel, or hold / resume / purge a campaign")
def delete_campaign(request: Request, api: ApiDep, cid: str, hold: str | None = Query(None),
                    resume: str | None = Query(None), purge: str | None = Query(None)) -> Response:
    caller = api.policy.user(request)
    i = int_id(cid)
    _owned(api, i, caller)
    user, admins = caller.login, api.policy.admins
    if flag(purge):
        C.purge_campaign(api.engine, i, user, admins=admins)
        msg = "will be purged"
    elif flag(resume):
        C.resume_campaign(api.engine, i, user, admins=admins)
        msg = "resumed"
    elif flag(hold):
        C.pause_campaign(api.engine, i, user, admins=admins)
        msg = "paused"
    else:
        if not C.cancel_campaign(api.engine, i, user, admins=admins):
            raise bad("Campaign already cancelled.")
        msg = "cancelled"
    return accepted(request, f"Campaign {i} {msg}")


@router.get("/campaigns/{cid}/stats", summary="Duration, throughput and failure statistics")
def stats(request: Request, api: ApiDep, cid: str, pretty_: str | None = Query(None, alias="pretty")) -> Response:
    i = int_id(cid)
    with api.engine.connect() as conn:
        c = dbcampaigns.get_campaign(conn, i)
        if c is None:
            raise not_found(f"Campaign {i} not found")
        body = progress.campaign_stats(conn, c, int(api.conf.get("CAMPAIGN_THROUGHPUT_WINDOW")))
    return render(request, 200, body, "GET")


@router.get("/campaigns/{cid}/jdl", summary="The stored (expanded) JDL — owner or admin")
def jdl(request: Request, api: ApiDep, cid: str, pretty_: str | None = Query(None, alias="pretty")) -> Response:
    c = _owned(api, int_id(cid), api.policy.user(request))
    return render(request, 200, dbcampaigns.stored_jdl(c), "GET")


@router.get("/campaigns/{cid}/jobs", summary="Tasks of a campaign, paginated, filterable by state — owner or admin")
def tasks(request: Request, api: ApiDep, cid: str, limit: str | None = Query(None), offset: str | None = Query(None),
          state: str | None = Query(None), pretty_: str | None = Query(None, alias="pretty")) -> Response:
    i = int_id(cid)
    lim = int_param(limit, "limit", 100) or 100
    off = int_param(offset, "offset", 0)
    if state is not None and state not in TASK_STATES:
        raise bad(f"Unknown state {state!r} (one of {', '.join(TASK_STATES)})")
    caller = api.policy.user(request)
    with api.engine.connect() as conn:
        c = api.policy.campaign(conn, i, caller)
        items, total = dbparameters.campaign_tasks(conn, i, lim, off, state)
    if total < 0:
        total = c["nb_jobs"] or 0
    for it in items:
        it["href"] = prefix_of(request) + f"/campaigns/{i}/jobs/{it['id']}"
    qs = f"&state={state}" if state else ""
    links = [link(request, "self", f"/campaigns/{i}/jobs?limit={lim}&offset={off}{qs}"),
             link(request, "parent", f"/campaigns/{i}")]
    if off + lim < total:  # a next link only when there is a next page (CiGri3 always gave one)
        links.append(link(request, "next", f"/campaigns/{i}/jobs?limit={lim}&offset={off + lim}{qs}"))
    body: dict[str, Any] = {"items": items, "total": total, "offset": off, "limit": lim, "links": links}
    if not items:
        body |= {"title": "No jobs found", "message": "No more jobs"}
    return render(request, 200, body, "GET,POST")


def _add_tasks(api: Api, cid: int, raw: bytes, caller: Caller) -> None:
    _owned(api, cid, caller)
    lines = validate(TaskLines, parse_json(raw)).root
    try:
        with api.submit_slots:
            C.add_tasks(api.engine, cid, lines, caller.login, admins=api.policy.admins)
    except (ParseError, StateError) as e:
        raise ApiError(400, "Error", f"Error adding jobs: {e.message}") from None


@router.post("/campaigns/{cid}/jobs", status_code=201, summary="Add tasks (body = JSON array of parameter lines)",
             openapi_extra=request_body(TaskLines))
async def add_jobs(request: Request, api: ApiDep, cid: str) -> Response:
    caller = api.policy.user(request)
    i = int_id(cid)
    raw = await read_body(request, api.max_body)
    await run_in_threadpool(_add_tasks, api, i, raw, caller)
    del raw
    body = await run_in_threadpool(campaign_body, api, request, i, False)
    return render(request, 201, body, headers={"Location": prefix_of(request) + f"/campaigns/{i}"})


@router.get("/campaigns/{cid}/jobs/finished", summary="Finished jobs (terminated or event) — owner or admin")
def finished(request: Request, api: ApiDep, cid: str, pretty_: str | None = Query(None, alias="pretty")) -> Response:
    i = int_id(cid)
    caller = api.policy.user(request)
    with api.engine.connect() as conn:
        api.policy.campaign(conn, i, caller)
        items = dbjobs.finished_jobs(conn, i)
    return render(request, 200, {"items": items}, "GET,POST")


@router.get("/campaigns/{cid}/jobs/{task_id}", summary="One task and its executions — owner or admin")
def task(request: Request, api: ApiDep, cid: str, task_id: str,
         pretty_: str | None = Query(None, alias="pretty")) -> Response:
    i, t = int_id(cid), int_id(task_id)
    caller = api.policy.user(request)
    with api.engine.connect() as conn:
        api.policy.campaign(conn, i, caller)
        body = dbparameters.campaign_task(conn, i, t)
    body["links"] = [link(request, "self", f"/campaigns/{i}/jobs/{t}"),
                     link(request, "parent", f"/campaigns/{i}/jobs")]
    return render(request, 200, body, "GET")


@router.get("/campaigns/{cid}/events", summary="Open events of a campaign (all=1: also closed) — owner or admin")
def campaign_events(request: Request, api: ApiDep, cid: str, limit: str | None = Query(None),
                    offset: str | None = Query(None), all_: str | None = Query(None, alias="all"),
                    pretty_: str | None = Query(None, alias="pretty")) -> Response:
    i = int_id(cid)
    lim = int_param(limit, "limit", 100) or 100
    off = int_param(offset, "offset", 0)
    caller = api.policy.user(request)
    with api.engine.connect() as conn:
        api.policy.campaign(conn, i, caller)
        items, total = dbevents.campaign_events(conn, i, flag(all_), lim, off)
    if not items:
        raise not_found(f"No events for campaign {i}")
    return render(request, 200, {"items": items, "total": total, "offset": off}, "GET")


@router.delete("/campaigns/{cid}/events", status_code=202, summary="Fix (close) the events of a campaign")
def fix_campaign_events(request: Request, api: ApiDep, cid: str, resubmit: str | None = Query(None)) -> Response:
    i = int_id(cid)
    caller = api.policy.user(request)
    _owned(api, i, caller)
    E.fix_campaign_events(api.engine, i, caller.login, api.policy.admins, flag(resubmit))
    return accepted(request, f"Campaign {i} events closed")
