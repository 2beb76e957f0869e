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
    _install_error_handlers(app)
    app.add_middleware(_InvalidateOnWrite, api=api)
    for router in ROUTERS:
        app.include_router(router)
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
