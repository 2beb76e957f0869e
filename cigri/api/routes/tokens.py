"""/tokens: the caller's JWTs for jwt-authenticated (OAR 3) clusters (administrators: `oar`'s)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool

from cigri.api.bodies import ClusterToken, body_of, request_body
from cigri.api.core import accepted, created, forbidden, int_id, link, not_found, render
from cigri.api.state import Api, get_api
from cigri.db import clusters as dbclusters
from cigri.db.engine import transaction

router = APIRouter()
ApiDep = Annotated[Api, Depends(get_api)]
ADMIN_TOKEN_LOGIN = "oar"


def _jwt_cluster(conn: object, cluster_id: int, shown: object) -> None:
    kind = dbclusters.cluster_auth_type(conn, cluster_id)  # type: ignore[arg-type]
    if kind is None:
        raise not_found(f"Cluster {shown} not found")
    if kind != "jwt":
        raise forbidden(f"Cluster {cluster_id} auth_type is not JWT!")


@router.get("/tokens", summary="Your JWT tokens for OAR3 clusters")
def tokens(request: Request, api: ApiDep, pretty_: str | None = Query(None, alias="pretty")) -> Response:
    login = api.policy.acts_as(api.policy.user(request), ADMIN_TOKEN_LOGIN)
    with api.engine.connect() as conn:
        items = dbclusters.list_tokens(conn, login)
    return render(request, 200, {"items": items, "links": [link(request, "self", "/tokens/")]}, "GET")


@router.post("/tokens", status_code=201, summary="Register your JWT for a jwt-authenticated cluster",
             openapi_extra=request_body(ClusterToken))
async def post_token(request: Request, api: ApiDep) -> Response:
    login = api.policy.acts_as(api.policy.user(request), ADMIN_TOKEN_LOGIN)
    body = await body_of(request, ClusterToken)
    cl_id = int_id(body.cluster_id)
    token = body.token.strip()

    def _do() -> None:
        with transaction(api.engine) as conn:
            _jwt_cluster(conn, cl_id, body.cluster_id)
            dbclusters.upsert_token(conn, login, cl_id, token)

    await run_in_threadpool(_do)
    return created(request, "New token registered")


@router.delete("/tokens/{clid}", status_code=202, summary="Remove your JWT for a cluster")
def delete_token(request: Request, api: ApiDep, clid: str) -> Response:
    # administrators remove `oar`'s token, the one they register (CiGri3 looked for root's)
    login = api.policy.acts_as(api.policy.user(request), ADMIN_TOKEN_LOGIN)
    i = int_id(clid)
    with transaction(api.engine) as conn:
        _jwt_cluster(conn, i, i)
        if not dbclusters.delete_token(conn, login, i):
            raise not_found(f"No token registered on cluster {i}")
    return accepted(request, "Token removed", "Deleted")
