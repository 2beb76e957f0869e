"""The CiGri REST API: CiGri3's paths, JSON shapes, status codes and `Allow` headers, with
identities that cannot be spoofed (cigri.api.auth) and owner-only access to everything
that is not public grid information (cigri.api.policy).

Public (anyone, even unauthenticated over TCP): `/`, the campaign list and one campaign's
summary and statistics, clusters, global events, grid usage, the OpenAPI document.
Owner or admin: a campaign's JDL, tasks, jobs, events, job outputs and OAR details,
and every write. One router per resource lives in cigri.api.routes. See docs/compat.md
for the differences with CiGri3."""

from __future__ import annotations

import logging
from typing import Any
from urllib.parse import parse_qs

import sqlalchemy as sa
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from cigri import __version__
from cigri.api.core import ApiError, error_body, from_cigri_error, render
from cigri.api.routes import ROUTERS
from cigri.api.state import Api
from cigri.config import Conf
from cigri.errors import CigriError

log = logging.getLogger("cigri.api")


def create_app(conf: Conf) -> FastAPI:
    """The ASGI application. Identities come from cigri.api.server (peer credentials),
    trusted proxies (header) or bearer tokens."""
    app = FastAPI(title="CiGri API", version=__version__,
                  description="Grid middleware running bags of tasks on OAR clusters (CiGri3-compatible API).")
    api = Api(conf)
    app.state.api = api
    app.router.redirect_slashes = False  # CiGri3 answered `/campaigns/` itself (no 307)
    _install_error_handlers(app)
    app.add_middleware(_InvalidateOnWrite, api=api)
    app.add_middleware(Cigri3Requests)
    for router in ROUTERS:
        app.include_router(router)
    return app


OVERRIDABLE = ("DELETE", "PUT", "PATCH")
FORM = "application/x-www-form-urlencoded"


class Cigri3Requests:
    """Requests as CiGri3's Sinatra took them: an optional trailing slash on every path
    (`GET /campaigns/` is `GET /campaigns`), and a POST carrying `_method=DELETE|PUT|PATCH`
    (in the query string or a form body, or as `X-HTTP-Method-Override`) is that method."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope["path"]
        if len(path) > 1 and path.endswith("/"):
            scope = dict(scope, path=path.rstrip("/") or "/")
            if scope.get("raw_path"):
                scope["raw_path"] = scope["raw_path"].rstrip(b"/") or b"/"
        if scope["method"] == "POST":
            method, receive = await self._override(scope, receive)
            if method:
                scope = dict(scope, method=method)
        await self.app(scope, receive, send)

    async def _override(self, scope: dict[str, Any], receive: Any) -> tuple[str | None, Any]:
        headers = {k.lower(): v for k, v in scope.get("headers", [])}
        wanted = [v[-1] for k, v in parse_qs(scope.get("query_string", b"").decode("latin-1")).items()
                  if k == "_method"]
        if headers.get(b"x-http-method-override"):
            wanted.append(headers[b"x-http-method-override"].decode("latin-1"))
        if not wanted and headers.get(b"content-type", b"").split(b";")[0].strip().decode("latin-1") == FORM:
            body, receive = await _peek_body(receive, 64 * 1024)
            wanted = parse_qs(body.decode("latin-1")).get("_method", [])[-1:]
        method = wanted[-1].strip().upper() if wanted else None
        return (method if method in OVERRIDABLE else None), receive


async def _peek_body(receive: Any, limit: int) -> tuple[bytes, Any]:
    """Read up to `limit` bytes of a form body and give back a `receive` that replays them."""
    chunks: list[dict[str, Any]] = []
    size = 0
    while True:
        msg = await receive()
        chunks.append(msg)
        if msg["type"] != "http.request":
            break
        size += len(msg.get("body", b""))
        if not msg.get("more_body") or size > limit:
            break
    body = b"".join(m.get("body", b"") for m in chunks if m["type"] == "http.request")

    async def replay() -> Any:
        if chunks:
            return chunks.pop(0)
        return await receive()

    return body[:limit], replay


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
