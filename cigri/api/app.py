"""The CiGri REST API (spec §11): CiGri3's paths, JSON shapes, status codes and `Allow`
headers, with identities that cannot be spoofed (cigri.api.auth) and owner-only access
to everything that is not public grid information.

Public (anyone, even unauthenticated over TCP): `/`, the campaign list and one campaign's
summary and statistics, clusters, global events, grid usage, the OpenAPI document.
Owner or admin: a campaign's JDL, tasks, jobs, events, job outputs and OAR details,
and every write. See docs/compat.md for the differences with CiGri3."""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qs

import sqlalchemy as sa
from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from cigri import __version__
from cigri.api.auth import Authenticator, AuthError, Identity
from cigri.config import Conf
from cigri.db import api_queries as Q
from cigri.db import notifications as N
from cigri.db.engine import make_engine, transaction
from cigri.errors import AdmissionRuleError, CigriError, NotFound, ParseError, StateError, Unauthorized

log = logging.getLogger("cigri.api")

MAX_LIMIT = 100000
LIST_CACHE_TTL = 5.0
LIST_MAX_STALE = 30.0
SUBMIT_SLOTS = 3
#: touched on every write; shared by the worker processes of one server (set by cigri.api.server)
GENERATION_FILE: str | None = None
#: lists shorter than this are always computed fresh (cheap)
LIST_CACHE_MIN = 50
INT4 = 2**31 - 1


class ApiError(Exception):
    def __init__(self, status: int, title: str, message: str) -> None:
        super().__init__(message)
        self.status, self.title, self.message = status, title, message


def bad(message: str) -> ApiError:
    return ApiError(400, "Bad Request", message)


def forbidden(message: str) -> ApiError:
    return ApiError(403, "Forbidden", message)


def not_found(message: str) -> ApiError:
    return ApiError(404, "Not found", message)


def from_cigri_error(e: CigriError) -> ApiError:
    if isinstance(e, NotFound):
        return not_found(e.message)
    if isinstance(e, Unauthorized):
        return forbidden(e.message)
    if isinstance(e, AdmissionRuleError):
        return ApiError(400, "Admission rule error", e.message)
    if isinstance(e, StateError):
        return bad(e.message)
    return ApiError(400, "Error", e.message)


# --------------------------------------------------------------------------- responses
def _pretty(request: Request) -> bool:
    v = request.query_params.get("pretty")
    return v is not None and v.lower() != "false"


def render(request: Request | None, status: int, body: Any, allow: str | None = None,
           headers: dict[str, str] | None = None) -> Response:
    indent = 2 if request is not None and _pretty(request) else None
    text = json.dumps(body, indent=indent, default=_json_default) + "\n"
    h = dict(headers or {})
    if allow:
        h["Allow"] = allow
    return Response(text, status_code=status, media_type="application/json", headers=h)


def _json_default(o: Any) -> Any:
    if isinstance(o, datetime):
        return int(o.timestamp())
    return str(o)


def error_body(status: int, title: str, message: str) -> dict[str, Any]:
    return {"status": status, "title": title, "message": message}


def accepted(request: Request, message: str, title: str = "Accepted") -> Response:
    return render(request, 202, error_body(202, title, message))


def created(request: Request, message: str) -> Response:
    return render(request, 201, error_body(201, "Created", message))


# --------------------------------------------------------------------------- parsing
def int_id(value: str | int | None) -> int:
    """CiGri3 turns non-numeric ids into 0 (hence 404); out-of-range ids too."""
    try:
        v = int(str(value))
    except (TypeError, ValueError):
        return 0
    return v if -INT4 <= v <= INT4 else 0


def int_param(value: str | None, name: str, default: int) -> int:
    if value is None or value == "":
        return default
    try:
        v = int(value)
    except ValueError:
        raise bad(f"Parameter {name} must be an integer, got {value!r}") from None
    if v < 0:
        raise bad(f"Parameter {name} must not be negative")
    return min(v, MAX_LIMIT) if name == "limit" else min(v, 2**62)


def flag(value: str | None) -> bool:
    """`?all`, `?resubmit`, `?hold`... present and not 0/false/no (fixes spec §15.2 #26)."""
    return value is not None and value.strip().lower() not in ("0", "false", "no", "off")


async def json_body(request: Request) -> Any:
    raw = await request.body()
    if not raw.strip():
        raise bad("Empty request body (JSON expected)")
    try:
        return json.loads(raw)
    except (ValueError, UnicodeDecodeError) as e:
        raise bad(f"Request body is not valid JSON: {e}") from None


# --------------------------------------------------------------------------- app
class Api:
    """State shared by the handlers of one application instance."""

    def __init__(self, conf: Conf) -> None:
        self.conf = conf
        self.engine = make_engine(conf, pool_size=5, max_overflow=10)
        #: big submissions use extra connections (parallel bag writes): queue them, never
        #: exhaust PostgreSQL's connection slots
        self.submit_slots = threading.BoundedSemaphore(SUBMIT_SLOTS)
        self.auth = Authenticator(conf)
        #: the public campaign list, rendered: key -> (monotonic time, body)
        self.list_cache: dict[Any, tuple[float, bytes, float]] = {}
        self.list_locks: dict[Any, threading.Lock] = {}
        self.small_lists: set[Any] = set()
        self.list_lock = threading.Lock()

    def cached_list(self, key: Any, compute: Callable[[], tuple[bytes, int]]) -> bytes:
        """The campaign list of a big grid is computed by one request at a time (per query)
        and shared while fresh (LIST_CACHE_TTL s, or 10x its computing time); when stale,
        the previous one (at most LIST_MAX_STALE s old) is served while one background
        thread recomputes it. Short lists are always computed fresh, without waiting."""
        if key in self.small_lists:
            body, n = compute()
            if n >= LIST_CACHE_MIN:
                self.small_lists.discard(key)
                self.list_cache[key] = (time.monotonic(), body, LIST_CACHE_TTL)
            return body
        entry = self.list_cache.get(key)
        now = time.monotonic()
        if entry is not None and self.written_since(entry[0]):
            entry = None  # a write through any worker: recompute now
            self.list_cache.pop(key, None)
        if entry is not None and now - entry[0] < entry[2]:
            return entry[1]
        with self.list_lock:
            klock = self.list_locks.setdefault(key, threading.Lock())
        if entry is not None and now - entry[0] < LIST_MAX_STALE:
            if klock.acquire(blocking=False):
                def refresh() -> None:
                    try:
                        self._compute_list(key, compute)
                    except Exception:  # noqa: BLE001 - keep serving the previous list
                        log.exception("campaign list refresh failed")
                    finally:
                        klock.release()

                threading.Thread(target=refresh, daemon=True).start()
            return entry[1]
        with klock:
            entry = self.list_cache.get(key)
            if entry is not None and time.monotonic() - entry[0] < entry[2]:
                return entry[1]
            return self._compute_list(key, compute)

    def written_since(self, mono: float) -> bool:
        """Did a write go through any worker process since `mono` (time.monotonic)?"""
        if not GENERATION_FILE:
            return False
        try:
            mtime = os.stat(GENERATION_FILE).st_mtime
        except OSError:
            return False
        return mtime > time.time() - (time.monotonic() - mono)

    def wrote(self) -> None:
        self.list_cache.clear()
        if GENERATION_FILE:
            try:
                with open(GENERATION_FILE, "a"):
                    os.utime(GENERATION_FILE)
            except OSError:
                pass

    def _compute_list(self, key: Any, compute: Callable[[], tuple[bytes, int]]) -> bytes:
        t = time.monotonic()
        body, n = compute()
        if len(self.list_cache) > 1000 or len(self.small_lists) > 10000:
            self.list_cache.clear()
            self.small_lists.clear()
        if n >= LIST_CACHE_MIN:
            self.list_cache[key] = (time.monotonic(), body, max(LIST_CACHE_TTL, 10 * (time.monotonic() - t)))
        else:
            self.list_cache.pop(key, None)
            self.small_lists.add(key)
        return body

    def identity(self, request: Request) -> Identity:
        try:
            return self.auth.identify(request.scope, request.headers)
        except AuthError as e:
            raise forbidden(e.message) from None

    def user(self, request: Request) -> str:
        """The authenticated caller (403 'not authenticated' otherwise)."""
        ident = self.identity(request)
        if not ident.authenticated or ident.user is None:
            raise forbidden("Access denied: not authenticated")
        return ident.user

    def admins(self) -> tuple[str, ...]:
        return tuple(sorted(self.auth.admins))

    def owned_campaign(self, conn: sa.Connection, cid: int, user: str) -> dict[str, Any]:
        try:
            return Q.require_campaign(conn, cid, user, self.admins())
        except Unauthorized:
            raise forbidden(f"Access denied: campaign {cid} belongs to another user") from None
        except NotFound:
            raise not_found(f"Campaign {cid} not found") from None

    def read_campaign(self, request: Request, cid: int) -> tuple[str, dict[str, Any]]:
        user = self.user(request)
        with self.engine.connect() as conn:
            return user, self.owned_campaign(conn, cid, user)

    def owned_job(self, conn: sa.Connection, job_id: int, user: str) -> dict[str, Any]:
        job = Q.job_representation(conn, job_id)
        if job is None:
            raise not_found(f"Job {job_id} not found")
        if job["grid_user"] != user and not self.auth.is_admin(user):
            raise forbidden(f"Access denied: job {job_id} belongs to another user")
        return job


def prefix_of(request: Request) -> str:
    return request.headers.get("x-cigri-api-path-prefix", "").rstrip("/")


def link(request: Request, rel: str, href: str, title: str | None = None) -> dict[str, str]:
    d = {"rel": rel, "href": prefix_of(request) + href}
    if title:
        d["title"] = title
    return d


def format_campaign(request: Request, c: dict[str, Any], finished: int, has_events: bool,
                    clusters: dict[str, Any] | None = None) -> dict[str, Any]:
    cid = int(c["id"])
    d: dict[str, Any] = {
        "id": cid, "name": c["name"], "user": c["grid_user"], "state": c["state"], "has_events": has_events,
        "submission_time": Q.epoch(c["submission_time"]), "total_jobs": c["nb_jobs"] or 0,
        "finished_jobs": finished,
        "links": [link(request, "self", f"/campaigns/{cid}"), link(request, "parent", "/campaigns"),
                  link(request, "collection", f"/campaigns/{cid}/jobs", "jobs"),
                  link(request, "collection", f"/campaigns/{cid}/events", "events"),
                  link(request, "item", f"/campaigns/{cid}/jdl", "jdl")],
    }
    if clusters is not None:
        d["clusters"] = clusters
    return d


def _campaign_list(api: Api, request: Request, user: str | None, lim: int | None, off: int) -> tuple[bytes, int]:
    with api.engine.connect() as conn:
        rows, total = Q.list_campaigns(conn, user=user, limit=lim, offset=off)
        whole = user is None and lim is None and off == 0
        fin = Q.finished_counts(conn, rows, Q.LISTED_CAMPAIGN_STATES if whole else None)
        ev = Q.campaigns_with_events(conn, [int(r["id"]) for r in rows])
    items = [format_campaign(request, r, fin[int(r["id"])], int(r["id"]) in ev) for r in rows]
    resp = render(request, 200, {"items": items, "total": total,
                                 "links": [link(request, "self", "/campaigns"), link(request, "parent", "/")]})
    return bytes(resp.body), len(rows)


def campaign_body(api: Api, request: Request, cid: int, with_clusters: bool) -> dict[str, Any]:
    with api.engine.connect() as conn:
        c = Q.get_campaign(conn, cid)
        if c is None:
            raise not_found(f"Campaign {cid} not found")
        fin, ev, cl = Q.campaign_summary(conn, c, with_clusters)
    return format_campaign(request, c, fin, ev, cl)


JDL_BODY = {"requestBody": {"required": True, "content": {
    "application/json": {"schema": {"type": "object", "description": "the JDL (spec §4)"}}}}}
LINES_BODY = {"requestBody": {"required": True, "content": {
    "application/json": {"schema": {"type": "array", "items": {"type": "string"}}}}}}


def _obj_body(props: dict[str, Any], required: list[str]) -> dict[str, Any]:
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": {
        "type": "object", "properties": props, "required": required}}}}}


def create_app(conf: Conf) -> FastAPI:
    """The ASGI application. Identities come from cigri.api.server (peer credentials),
    trusted proxies (header) or bearer tokens."""
    app = FastAPI(title="CiGri API", version=__version__,
                  description="Grid middleware running bags of tasks on OAR clusters (CiGri3-compatible API).")
    api = Api(conf)
    app.state.api = api
    _install_error_handlers(app)
    app.add_middleware(_InvalidateOnWrite, api=api)
    _routes(app, api)
    return app


class _InvalidateOnWrite:
    """Any write through this API drops the cached campaign list (a user sees their change)."""

    def __init__(self, app: Any, api: Api) -> None:
        self.app, self.api = app, api

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        await self.app(scope, receive, send)
        if scope["type"] == "http" and scope.get("method") not in ("GET", "HEAD"):
            self.api.wrote()


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def _api_error(request: Request, e: ApiError) -> Response:
        return render(request, e.status, error_body(e.status, e.title, e.message))

    @app.exception_handler(CigriError)
    async def _cigri_error(request: Request, e: CigriError) -> Response:
        a = from_cigri_error(e)
        return render(request, a.status, error_body(a.status, a.title, a.message))

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, e: StarletteHTTPException) -> Response:
        if e.status_code == 404:
            msg = f"{request.method} {request.url.path} not found on this server"
            return render(request, 404, error_body(404, "Not found", msg))
        if e.status_code == 405:
            msg = f"{request.method} not allowed on {request.url.path}"
            return render(request, 405, error_body(405, "Method not allowed", msg),
                          headers=dict(e.headers or {}))
        return render(request, e.status_code, error_body(e.status_code, "Error", str(e.detail)))

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, e: RequestValidationError) -> Response:
        parts = [f"{'.'.join(str(x) for x in err.get('loc', ()))}: {err.get('msg')}" for err in e.errors()]
        return render(request, 400, error_body(400, "Bad Request", "; ".join(parts)))

    @app.exception_handler(sa.exc.DBAPIError)
    async def _db_error(request: Request, e: sa.exc.DBAPIError) -> Response:
        log.error("database error on %s %s: %s", request.method, request.url.path, str(e).splitlines()[0])
        if isinstance(e, sa.exc.DataError | sa.exc.IntegrityError):
            return render(request, 400, error_body(400, "Bad Request", "Invalid value for the database"))
        return render(request, 503, error_body(503, "Service Unavailable", "Database error, retry later"))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, e: Exception) -> Response:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return render(request, 500, error_body(500, "Internal Server Error", "Unexpected server error"))


def _routes(app: FastAPI, api: Api) -> None:  # noqa: C901 - one function, one table of routes
    conf = api.conf

    # ------------------------------------------------------------------ root
    @app.get("/", summary="Entry point")
    def root(request: Request) -> Response:
        return render(request, 200, {"links": [link(request, "self", "/"),
                                               link(request, "collection", "/campaigns", "campaigns"),
                                               link(request, "collection", "/clusters", "clusters")]}, "GET")

    @app.post("/auth/token", summary="Issue a bearer token (over the Unix socket or a trusted proxy)")
    async def auth_token(request: Request) -> Response:
        ident = api.identity(request)
        if ident.via not in ("peercred", "header") or not ident.authenticated or ident.user is None:
            raise forbidden("Access denied: tokens are issued only to callers identified by the Unix "
                            "socket or a trusted proxy")
        raw = await request.body()
        body: dict[str, Any] = {}
        if raw.strip():
            try:
                body = json.loads(raw)
            except ValueError:
                raise bad("Request body is not valid JSON") from None
            if not isinstance(body, dict):
                raise bad("Body must be an object {\"user\": ..., \"lifetime\": ...}")
        user = body.get("user") or ident.user
        if not isinstance(user, str) or (user != ident.user and not api.auth.is_admin(ident.user)):
            raise forbidden("Access denied: only administrators may issue tokens for other users")
        lifetime = body.get("lifetime")
        if lifetime is not None and (not isinstance(lifetime, int) or isinstance(lifetime, bool) or lifetime <= 0):
            raise bad("lifetime must be a positive number of seconds")
        try:
            token, exp = api.auth.issue(user, lifetime)
        except AuthError as e:
            raise ApiError(503, "Service Unavailable", e.message) from None
        return render(request, 201, {"token": token, "user": user, "expires": exp})

    # ------------------------------------------------------------------ campaigns
    @app.get("/campaigns", summary="Running and paused campaigns of every user")
    def list_campaigns(request: Request, user: str | None = Query(None), limit: str | None = Query(None),
                       offset: str | None = Query(None), pretty: str | None = Query(None)) -> Response:
        lim = int_param(limit, "limit", 0) or None
        off = int_param(offset, "offset", 0)
        key = (user, lim, off, prefix_of(request), _pretty(request))
        body = api.cached_list(key, lambda: _campaign_list(api, request, user, lim, off))
        return Response(body, status_code=200, media_type="application/json", headers={"Allow": "GET,POST"})

    @app.post("/campaigns", status_code=201, summary="Submit a campaign (body = JDL)", openapi_extra=JDL_BODY)
    async def submit(request: Request) -> Response:
        user = api.user(request)
        buf = bytearray()
        async for chunk in request.stream():
            buf += chunk
        if not buf.strip():
            raise ApiError(400, "Error", "Error submitting campaign: empty JDL")
        try:
            text = buf.decode()
        except UnicodeDecodeError:
            raise ApiError(400, "Error", "Error submitting campaign: the JDL is not UTF-8 text") from None
        del buf
        cid = await run_in_threadpool(_submit, api, text, user)
        body = await run_in_threadpool(campaign_body, api, request, cid, False)
        return render(request, 201, body, headers={"Location": prefix_of(request) + f"/campaigns/{cid}"})

    @app.get("/campaigns/{cid}", summary="One campaign with its per-cluster state")
    def get_campaign(request: Request, cid: str, pretty: str | None = Query(None)) -> Response:
        return render(request, 200, campaign_body(api, request, int_id(cid), True), "DELETE,GET,POST,PUT")

    @app.put("/campaigns/{cid}", status_code=202, summary="Rename, pause (state=paused) or resume (state=in_treatment)")
    async def put_campaign(request: Request, cid: str, name: str | None = Query(None),
                           state: str | None = Query(None)) -> Response:
        user = api.user(request)
        values = dict(request.query_params)
        raw = await request.body()
        if raw.strip():
            ctype = request.headers.get("content-type", "")
            try:
                if "json" in ctype:
                    parsed = json.loads(raw)
                    if not isinstance(parsed, dict):
                        raise ValueError("not an object")
                    values.update({k: v for k, v in parsed.items() if k in ("name", "state")})
                else:
                    values.update({k: v[-1] for k, v in parse_qs(raw.decode(), strict_parsing=False).items()})
            except (ValueError, UnicodeDecodeError) as e:
                raise bad(f"Cannot read the request body: {e}") from None
        new_name, new_state = values.get("name"), values.get("state")
        if new_state is not None and new_state not in ("paused", "in_treatment"):
            raise bad(f"Invalid state {new_state!r} (paused or in_treatment)")
        if new_name is not None and (not isinstance(new_name, str) or not new_name or len(new_name) > 255):
            raise bad("Invalid name (1 to 255 characters)")
        i = int_id(cid)
        await run_in_threadpool(_update, api, i, user, new_name, new_state)
        return render(request, 202, await run_in_threadpool(campaign_body, api, request, i, False))

    @app.delete("/campaigns/{cid}", status_code=202, summary="Cancel, or hold / resume / purge a campaign")
    def delete_campaign(request: Request, cid: str, hold: str | None = Query(None), resume: str | None = Query(None),
                        purge: str | None = Query(None)) -> Response:
        user = api.user(request)
        i = int_id(cid)
        from cigri import campaigns as C

        with api.engine.connect() as conn:
            c = api.owned_campaign(conn, i, user)
        st = c["state"]
        if flag(purge):
            if st not in ("terminated", "cancelled"):
                raise bad(f"Can't purge a {st} campaign (cancel it first)")
            C.purge_campaign(api.engine, i, user, admins=api.admins())
            msg = "will be purged"
        elif flag(resume):
            if st != "paused":
                raise bad(f"Can't resume a {st} campaign")
            C.resume_campaign(api.engine, i, user, admins=api.admins())
            msg = "resumed"
        elif flag(hold):
            if st != "in_treatment":
                raise bad(f"Can't hold (pause) a {st} campaign")
            C.pause_campaign(api.engine, i, user, admins=api.admins())
            msg = "paused"
        else:
            if st == "cancelled":
                raise bad("Campaign already cancelled.")
            C.cancel_campaign(api.engine, i, user, admins=api.admins())
            msg = "cancelled"
        return accepted(request, f"Campaign {i} {msg}")

    @app.get("/campaigns/{cid}/stats", summary="Duration, throughput and failure statistics")
    def stats(request: Request, cid: str, pretty: str | None = Query(None)) -> Response:
        i = int_id(cid)
        with api.engine.connect() as conn:
            c = Q.get_campaign(conn, i)
            if c is None:
                raise not_found(f"Campaign {i} not found")
            body = Q.campaign_stats(conn, c, int(conf.get("CAMPAIGN_THROUGHPUT_WINDOW")))
        return render(request, 200, body, "GET")

    @app.get("/campaigns/{cid}/jdl", summary="The stored (expanded) JDL — owner or admin")
    def jdl(request: Request, cid: str, pretty: str | None = Query(None)) -> Response:
        _, c = api.read_campaign(request, int_id(cid))
        try:
            body = json.loads(c["jdl"] or "{}")
        except ValueError:
            body = c["jdl"]
        return render(request, 200, body, "GET")

    @app.get("/campaigns/{cid}/jobs", summary="Tasks of a campaign, paginated, filterable by state — owner or admin")
    def tasks(request: Request, cid: str, limit: str | None = Query(None), offset: str | None = Query(None),
              state: str | None = Query(None), pretty: str | None = Query(None)) -> Response:
        i = int_id(cid)
        lim = int_param(limit, "limit", 100) or 100
        off = int_param(offset, "offset", 0)
        allowed = ("to_launch", "launching", "submitted", "running", "remote_waiting", "batch_waiting",
                   "terminated", "event", "queued", "pending")
        if state is not None and state not in allowed:
            raise bad(f"Unknown state {state!r} (one of {', '.join(allowed)})")
        user = api.user(request)
        with api.engine.connect() as conn:
            c = api.owned_campaign(conn, i, user)
            items, total = Q.campaign_tasks(conn, i, lim, off, state)
        if total < 0:
            total = c["nb_jobs"] or 0
        for it in items:
            it["href"] = prefix_of(request) + f"/campaigns/{i}/jobs/{it['id']}"
        qs = f"&state={state}" if state else ""
        links = [link(request, "self", f"/campaigns/{i}/jobs?limit={lim}&offset={off}{qs}"),
                 link(request, "parent", f"/campaigns/{i}")]
        if off + lim < total:  # spec §15.2 #8: a next link only when there is a next page
            links.append(link(request, "next", f"/campaigns/{i}/jobs?limit={lim}&offset={off + lim}{qs}"))
        body: dict[str, Any] = {"items": items, "total": total, "offset": off, "limit": lim, "links": links}
        if not items:
            body |= {"title": "No jobs found", "message": "No more jobs"}
        return render(request, 200, body, "GET,POST")

    @app.post("/campaigns/{cid}/jobs", status_code=201, summary="Add tasks (body = JSON array of parameter lines)",
              openapi_extra=LINES_BODY)
    async def add_jobs(request: Request, cid: str) -> Response:
        user = api.user(request)
        i = int_id(cid)
        lines = await json_body(request)
        if not isinstance(lines, list) or not all(isinstance(x, str) for x in lines):
            raise bad("Body must be a JSON array of parameter lines (strings)")
        if not lines:
            raise bad("No parameter lines given")
        await run_in_threadpool(_add_tasks, api, i, lines, user)
        body = await run_in_threadpool(campaign_body, api, request, i, False)
        return render(request, 201, body, headers={"Location": prefix_of(request) + f"/campaigns/{i}"})

    @app.get("/campaigns/{cid}/jobs/finished", summary="Finished jobs (terminated or event) — owner or admin")
    def finished(request: Request, cid: str, pretty: str | None = Query(None)) -> Response:
        i = int_id(cid)
        user = api.user(request)
        with api.engine.connect() as conn:
            api.owned_campaign(conn, i, user)
            items = Q.finished_jobs(conn, i)
        return render(request, 200, {"items": items}, "GET,POST")

    @app.get("/campaigns/{cid}/jobs/{task_id}", summary="One task and its executions — owner or admin")
    def task(request: Request, cid: str, task_id: str, pretty: str | None = Query(None)) -> Response:
        i, t = int_id(cid), int_id(task_id)
        user = api.user(request)
        with api.engine.connect() as conn:
            api.owned_campaign(conn, i, user)
            body = Q.campaign_task(conn, i, t)
        body["links"] = [link(request, "self", f"/campaigns/{i}/jobs/{t}"),
                         link(request, "parent", f"/campaigns/{i}/jobs")]
        return render(request, 200, body, "GET")

    @app.get("/campaigns/{cid}/events", summary="Open events of a campaign (all=1: also closed) — owner or admin")
    def campaign_events(request: Request, cid: str, limit: str | None = Query(None), offset: str | None = Query(None),
                        all: str | None = Query(None), pretty: str | None = Query(None)) -> Response:  # noqa: A002
        i = int_id(cid)
        lim = int_param(limit, "limit", 100) or 100
        off = int_param(offset, "offset", 0)
        user = api.user(request)
        with api.engine.connect() as conn:
            api.owned_campaign(conn, i, user)
            items, total = Q.campaign_events(conn, i, flag(all), lim, off)
        if not items:
            raise not_found(f"No events for campaign {i}")
        return render(request, 200, {"items": items, "total": total, "offset": off}, "GET")

    @app.delete("/campaigns/{cid}/events", status_code=202, summary="Fix (close) the events of a campaign")
    def fix_campaign_events(request: Request, cid: str, resubmit: str | None = Query(None)) -> Response:
        i = int_id(cid)
        user = api.user(request)
        from cigri.db.jobs import resubmit_job

        with transaction(api.engine) as conn:
            api.owned_campaign(conn, i, user)
            job_ids = Q.close_campaign_events(conn, i)
            if flag(resubmit):
                for j in job_ids:
                    resubmit_job(conn, j)
        return accepted(request, f"Campaign {i} events closed")

    # ------------------------------------------------------------------ events
    @app.get("/events", summary="Open global (cluster, notify, log) events")
    def list_events(request: Request, limit: str | None = Query(None), offset: str | None = Query(None),
                    pretty: str | None = Query(None)) -> Response:
        lim = int_param(limit, "limit", 100) or 100
        off = int_param(offset, "offset", 0)
        with api.engine.connect() as conn:
            items, total = Q.global_events(conn, lim, off)
        if not items:
            raise not_found("No global events")
        return render(request, 200, {"items": items, "total": total, "offset": off}, "DELETE,GET,POST,PUT")

    @app.post("/events", status_code=201, summary="Create an event (administrators only)",
              openapi_extra=_obj_body({"class": {"type": "string"}, "code": {"type": "string"},
                                       "cluster_id": {"type": "integer"}, "job_id": {"type": "integer"},
                                       "campaign_id": {"type": "integer"}, "message": {"type": "string"}},
                                      ["class", "code"]))
    async def post_event(request: Request) -> Response:
        try:
            ident = api.auth.identify(request.scope, request.headers)
        except AuthError as e:
            raise forbidden(e.message) from None
        if not api.auth.is_admin(ident.user):
            raise forbidden("Only root can create an event")
        body = await json_body(request)
        await run_in_threadpool(_create_event, api, body)
        return created(request, "New event created")

    @app.get("/events/{eid}", summary="One event (campaign events: owner or admin)")
    def get_event(request: Request, eid: str, pretty: str | None = Query(None)) -> Response:
        i = int_id(eid)
        with api.engine.connect() as conn:
            ev = Q.event_representation(conn, i)
            if ev is None:
                raise not_found(f"Event {i} not found")
            if ev["campaign_id"] is not None:
                api.owned_campaign(conn, int(ev["campaign_id"]), api.user(request))
        ev["links"] = [link(request, "self", f"/events/{i}"), link(request, "parent", "/events")]
        return render(request, 200, ev, "DELETE,GET,POST,PUT")

    @app.delete("/events/{eid}", status_code=202, summary="Fix (close) an event, optionally resubmitting its job")
    def fix_event(request: Request, eid: str, resubmit: str | None = Query(None)) -> Response:
        i = int_id(eid)
        user = api.user(request)
        from cigri.db.events import close_event, get_event
        from cigri.db.jobs import resubmit_job

        with transaction(api.engine) as conn:
            ev = get_event(conn, i)
            if ev is None:
                raise not_found(f"Event {i} not found")
            if ev["campaign_id"] is None:
                if not api.auth.is_admin(user):
                    raise forbidden("Access denied: only an administrator can fix a global event")
            else:
                api.owned_campaign(conn, int(ev["campaign_id"]), user)
            close_event(conn, i)
            if flag(resubmit) and ev["job_id"] is not None:
                resubmit_job(conn, int(ev["job_id"]))
        return accepted(request, f"Event {i} closed")

    # ------------------------------------------------------------------ jobs
    @app.get("/jobs/{jid}", summary="One CiGri job — owner or admin")
    def get_job(request: Request, jid: str, pretty: str | None = Query(None)) -> Response:
        i = int_id(jid)
        user = api.user(request)
        with api.engine.connect() as conn:
            job = api.owned_job(conn, i, user)
        job["links"] = [link(request, "self", f"/jobs/{i}"), link(request, "parent", "/jobs")]
        return render(request, 200, job, "GET")

    @app.delete("/jobs/{jid}", status_code=202, summary="Ask nikita to kill one job — owner or admin")
    def delete_job(request: Request, jid: str) -> Response:
        i = int_id(jid)
        user = api.user(request)
        from cigri.db.events import create_event

        with transaction(api.engine) as conn:
            job = api.owned_job(conn, i, user)
            create_event(conn, "job", "USER_FRAG", job_id=i, campaign_id=job["campaign_id"],
                         cluster_id=job["cluster_id"], message=f"User request to cancel the job {i}")
        return accepted(request, f"Job {i} cancel event created")

    def _job_adapter(request: Request, jid: str) -> tuple[Any, dict[str, Any]]:
        i = int_id(jid)
        user = api.user(request)
        from cigri.db.clusters import get_cluster, user_mapping

        with api.engine.connect() as conn:
            job = api.owned_job(conn, i, user)
            if job["cluster_id"] is None or job["remote_id"] is None:
                raise not_found(f"Job {i} has not been submitted to a cluster yet")
            info = get_cluster(conn, int(job["cluster_id"]))
            mapping = user_mapping(conn, info.id)
        return adapter_for(info, mapping), job

    def adapter_for(info: Any, mapping: dict[str, str]) -> Any:
        from cigri.clusters import get_adapter
        from cigri.clusters.base import ClusterAPIError

        try:
            return get_adapter(info, conf, mapping)
        except (ImportError, ClusterAPIError) as e:
            raise ApiError(400, "Error", f"Cluster {info.name} cannot be reached: {e}") from None

    def _output(request: Request, jid: str, which: str) -> Response:
        from cigri.clusters.base import ClusterAPIError, ClusterAPINotFound

        adapter, job = _job_adapter(request, jid)
        try:
            remote = adapter.get_job(int(job["remote_id"]), job["grid_user"])
            path = remote.output_path(which)
            if not path:
                raise not_found(f"Job {job['id']} has no {which} file")
            text = adapter.get_file(path, job["grid_user"], int(conf.get("OUTPUT_TAIL_LINES")))
        except ClusterAPINotFound as e:
            raise not_found(f"File not found: {e.message}") from None
        except ClusterAPIError as e:
            raise ApiError(400, "Get media error", e.message) from None
        finally:
            adapter.close()
        return render(request, 200, {"output": text}, "GET")

    @app.get("/jobs/{jid}/stdout", summary="The job's stdout (last lines) — owner or admin")
    def stdout(request: Request, jid: str) -> Response:
        return _output(request, jid, "stdout")

    @app.get("/jobs/{jid}/stderr", summary="The job's stderr (last lines) — owner or admin")
    def stderr(request: Request, jid: str) -> Response:
        return _output(request, jid, "stderr")

    @app.get("/jobs/{jid}/cinfos", summary="The batch scheduler's details of the job — owner or admin")
    def cinfos(request: Request, jid: str, pretty: str | None = Query(None)) -> Response:
        from cigri.clusters.base import ClusterAPIError, ClusterAPINotFound

        adapter, job = _job_adapter(request, jid)
        try:
            remote = adapter.get_job(int(job["remote_id"]), job["grid_user"])
        except ClusterAPINotFound as e:
            raise not_found(f"Remote job not found: {e.message}") from None
        except ClusterAPIError as e:
            raise ApiError(400, "Error", f"Cluster API error: {e.message}") from None
        finally:
            adapter.close()
        return render(request, 200, remote.raw or remote.__dict__, "GET")

    # ------------------------------------------------------------------ clusters
    @app.get("/clusters", summary="Enabled clusters")
    def clusters(request: Request, pretty: str | None = Query(None)) -> Response:
        with api.engine.connect() as conn:
            names = Q.enabled_cluster_names(conn)
        items = [{"id": i, "name": n, "links": [link(request, "self", f"/clusters/{i}"),
                                                 link(request, "parent", "/clusters")]}
                 for i, n in sorted(names.items())]
        return render(request, 200, {"items": items, "total": len(items),
                                     "links": [link(request, "self", "/clusters"), link(request, "parent", "/")]},
                      "GET")

    @app.get("/clusters/{clid}", summary="One cluster (no credentials), with stress and blacklist state")
    def cluster(request: Request, clid: str, pretty: str | None = Query(None)) -> Response:
        i = int_id(clid)
        with api.engine.connect() as conn:
            body = Q.cluster_representation(conn, i, float(conf.get("STRESS_FACTOR")))
        if body is None:
            raise not_found(f"Cluster {i} not found")
        body["links"] = [link(request, "self", f"/clusters/{i}"), link(request, "parent", "/clusters")]
        return render(request, 200, body, "GET")

    @app.delete("/clusters/{clid}/{path:path}", status_code=202,
                summary="Delete a file on a cluster, as the (authenticated) caller's cluster login")
    def delete_file(request: Request, clid: str, path: str) -> Response:
        user = api.user(request)
        i = int_id(clid)
        from cigri.clusters.base import ClusterAPIError, ClusterAPINotFound
        from cigri.db.clusters import get_cluster, user_mapping

        with api.engine.connect() as conn:
            info = get_cluster(conn, i)
            mapping = user_mapping(conn, i)
        if info.batch == "local" and not api.auth.is_admin(user):
            # a local cluster acts with the server's own identity: no deletion on a user's behalf
            raise forbidden(f"Access denied: files of local cluster {info.name} can only be deleted by an admin")
        adapter = adapter_for(info, mapping)
        try:
            adapter.delete_file("/" + path.lstrip("/"), user)
        except ClusterAPINotFound as e:
            raise not_found(f"File not found: {e.message}") from None
        except ClusterAPIError as e:
            raise ApiError(400, "Media deletion error", e.message) from None
        finally:
            adapter.close()
        return render(request, 202, {"msg": f"Deleting {path} on {i}"})

    # ------------------------------------------------------------------ notifications
    def notif_login(user: str) -> str:
        return N.ADMIN_LOGIN if api.auth.is_admin(user) else user

    @app.get("/notifications", summary="Your notification subscriptions")
    def notifications(request: Request, pretty: str | None = Query(None)) -> Response:
        user = api.user(request)
        with api.engine.connect() as conn:
            items = N.list_subscriptions(conn, notif_login(user))
        return render(request, 200, {"items": items, "links": [link(request, "self", "/notifications/")]}, "GET")

    @app.post("/notifications/{ntype}", status_code=201, summary="Subscribe (mail or jabber)",
              openapi_extra=_obj_body({"identity": {"type": "string"},
                                       "severity": {"type": "string", "enum": ["low", "medium", "high"]}},
                                      ["identity", "severity"]))
    async def subscribe(request: Request, ntype: str) -> Response:
        user = api.user(request)
        if ntype not in N.API_TYPES:
            raise not_found(f"Unknown notification type {ntype} (mail or jabber)")
        body = await json_body(request)
        if not isinstance(body, dict):
            raise bad("Body must be an object {\"identity\": ..., \"severity\": ...}")
        identity, severity = body.get("identity"), body.get("severity")
        if not isinstance(identity, str) or not identity.strip() or len(identity) > 255:
            raise bad("identity must be a non-empty string")
        if severity not in N.SEVERITIES:
            raise bad("Severity should be 'low', 'medium' or 'high'")

        def _do() -> None:
            with transaction(api.engine) as conn:
                N.add_subscription(conn, notif_login(user), ntype, identity.strip(), str(severity))

        await run_in_threadpool(_do)
        return created(request, "New subscription created")

    @app.delete("/notifications/{ntype}", status_code=202, summary="Unsubscribe")
    def unsubscribe(request: Request, ntype: str, identity: str | None = Query(None)) -> Response:
        user = api.user(request)
        if ntype not in N.API_TYPES:
            raise not_found(f"Unknown notification type {ntype} (mail or jabber)")
        if not identity:
            raise bad("Parameter identity is required")
        with transaction(api.engine) as conn:
            N.delete_subscription(conn, notif_login(user), ntype, identity)
        return accepted(request, "Unsubscription ok", "Deleted")

    # ------------------------------------------------------------------ cluster tokens
    def token_login(user: str) -> str:
        return "oar" if api.auth.is_admin(user) else user

    @app.get("/tokens", summary="Your JWT tokens for OAR3 clusters")
    def tokens(request: Request, pretty: str | None = Query(None)) -> Response:
        user = api.user(request)
        with api.engine.connect() as conn:
            items = Q.list_tokens(conn, token_login(user))
        return render(request, 200, {"items": items, "links": [link(request, "self", "/tokens/")]}, "GET")

    @app.post("/tokens", status_code=201, summary="Register your JWT for a jwt-authenticated cluster",
              openapi_extra=_obj_body({"cluster_id": {"type": "integer"}, "token": {"type": "string"}},
                                      ["cluster_id", "token"]))
    async def post_token(request: Request) -> Response:
        user = api.user(request)
        body = await json_body(request)
        if not isinstance(body, dict):
            raise bad("Body must be an object {\"cluster_id\": N, \"token\": \"...\"}")
        cl, token = body.get("cluster_id"), body.get("token")
        cl_id = int_id(cl) if isinstance(cl, int | str) and not isinstance(cl, bool) else 0
        if not isinstance(token, str) or not token.strip() or len(token) > 240:
            raise bad("token must be a non-empty string (at most 240 characters)")

        def _do() -> None:
            with transaction(api.engine) as conn:
                kind = Q.cluster_auth_type(conn, cl_id)
                if kind is None:
                    raise not_found(f"Cluster {cl} not found")
                if kind != "jwt":
                    raise forbidden(f"Cluster {cl_id} auth_type is not JWT!")
                Q.upsert_token(conn, token_login(user), cl_id, token.strip())

        await run_in_threadpool(_do)
        return created(request, "New token registered")

    @app.delete("/tokens/{clid}", status_code=202, summary="Remove your JWT for a cluster")
    def delete_token(request: Request, clid: str) -> Response:
        user = api.user(request)
        i = int_id(clid)
        with transaction(api.engine) as conn:
            kind = Q.cluster_auth_type(conn, i)
            if kind is None:
                raise not_found(f"Cluster {i} not found")
            if kind != "jwt":
                raise forbidden(f"Cluster {i} auth_type is not JWT!")
            # spec §15.2 #25: root's token is the `oar` one, as for GET/POST
            if not Q.delete_token(conn, token_login(user), i):
                raise not_found(f"No token registered on cluster {i}")
        return accepted(request, "Token removed", "Deleted")

    # ------------------------------------------------------------------ grid usage
    @app.get("/gridusage", summary="Grid usage snapshots (newest, or from < date <= to)")
    def gridusage(request: Request, pretty: str | None = Query(None), from_: str | None = Query(None, alias="from"),
                  to: str | None = Query(None)) -> Response:
        def ts(v: str | None, name: str) -> datetime | None:
            if v is None or v == "":
                return None
            try:
                return datetime.fromtimestamp(float(v), UTC)
            except (ValueError, OverflowError, OSError):
                raise bad(f"Parameter {name} must be an epoch time, got {v!r}") from None

        f, t = ts(from_, "from"), ts(to, "to")
        with api.engine.connect() as conn:
            items = Q.gridusage(conn, f, t)
        return render(request, 200, {"items": items, "from": from_, "to": to, "total": len(items),
                                     "links": [link(request, "self", "/gridusage"), link(request, "parent", "/")]},
                      "GET")


# --------------------------------------------------------------------------- writes (threadpool)
def _submit(api: Api, text: str, user: str) -> int:
    from cigri import campaigns as C

    try:
        jdl = json.loads(text)
    except ValueError as e:
        raise ApiError(400, "Error", f"Error submitting campaign: the JDL is not valid JSON ({e})") from None
    if not isinstance(jdl, dict):
        raise ApiError(400, "Error", "Error submitting campaign: the JDL must be a JSON object")
    try:
        with api.submit_slots:
            return int(C.submit_campaign(api.engine, jdl, user, api.conf))
    except AdmissionRuleError as e:
        raise ApiError(400, "Admission rule error", e.message) from None
    except (ParseError, StateError) as e:
        raise ApiError(400, "Error", f"Error submitting campaign: {e.message}") from None


def _update(api: Api, cid: int, user: str, name: str | None, state: str | None) -> None:
    from cigri import campaigns as C

    with api.engine.connect() as conn:
        c = api.owned_campaign(conn, cid, user)
    if state is not None and state != c["state"]:
        # spec §15.2 #24: only the pause/resume transitions
        if (c["state"], state) not in (("in_treatment", "paused"), ("paused", "in_treatment")):
            raise bad(f"Can't change a {c['state']} campaign to {state}")
    elif state == c["state"]:
        state = None
    if name is None and state is None:
        return
    C.update_campaign(api.engine, cid, user, name=name, state=state, admins=api.admins())


def _add_tasks(api: Api, cid: int, lines: list[str], user: str) -> None:
    from cigri import campaigns as C

    with api.engine.connect() as conn:
        api.owned_campaign(conn, cid, user)
    try:
        with api.submit_slots:
            C.add_tasks(api.engine, cid, lines, user, admins=api.admins())
    except (ParseError, StateError) as e:
        raise ApiError(400, "Error", f"Error adding jobs: {e.message}") from None


EVENT_FIELDS: dict[str, Callable[[Any], bool]] = {
    "class": lambda v: v in ("cluster", "job", "campaign", "notify", "log"),
    "code": lambda v: isinstance(v, str) and 0 < len(v) <= 32,
    "state": lambda v: v in ("open", "closed"),
    "job_id": lambda v: isinstance(v, int) and not isinstance(v, bool) and 0 < v <= INT4,
    "cluster_id": lambda v: isinstance(v, int) and not isinstance(v, bool) and 0 < v <= INT4,
    "campaign_id": lambda v: isinstance(v, int) and not isinstance(v, bool) and 0 < v <= INT4,
    "parent": lambda v: isinstance(v, int) and not isinstance(v, bool) and 0 < v <= INT4,
    "message": lambda v: isinstance(v, str),
}


def _create_event(api: Api, body: Any) -> None:
    from cigri.db.events import create_event

    if not isinstance(body, dict):
        raise bad("Body must be an event object")
    for k, v in body.items():
        check = EVENT_FIELDS.get(k)
        if check is None:
            raise bad(f"Unknown event field {k!r} (allowed: {', '.join(EVENT_FIELDS)})")
        if not check(v):
            raise bad(f"Invalid value for event field {k!r}")
    if "class" not in body or "code" not in body:
        raise bad("An event needs a class and a code")
    with transaction(api.engine) as conn:
        campaign_id = body.get("campaign_id")
        if body.get("job_id") is not None:
            campaign_id = Q.set_job_event_state(conn, int(body["job_id"]))
        eid = create_event(conn, body["class"], body["code"], state=body.get("state", "open"),
                           job_id=body.get("job_id"), cluster_id=body.get("cluster_id"), campaign_id=campaign_id,
                           parent=body.get("parent"), message=body.get("message"))
        if body["class"] == "cluster" and body.get("state", "open") == "open":
            # colombo's decision (e.g. blacklist the cluster) in the same transaction, as CiGri3
            from cigri.engine.colombo import check_events

            check_events(conn, [eid], api.conf)
