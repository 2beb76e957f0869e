"""/clusters: enabled clusters (public, without credentials) and file deletion on a cluster."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import Response

from cigri.api.core import ApiError, bad, forbidden, int_id, link, not_found, render
from cigri.api.state import Api, get_api
from cigri.clusters.base import ClusterAPIError, ClusterAPINotFound
from cigri.clusters.http import media_path
from cigri.db import clusters as dbclusters
from cigri.db.clusters import get_cluster, user_mapping

router = APIRouter()
ApiDep = Annotated[Api, Depends(get_api)]


def adapter_for(api: Api, info: Any, mapping: dict[str, str]) -> Any:
    from cigri.clusters import get_adapter

    try:
        return get_adapter(info, api.conf, mapping)
    except ClusterAPIError as e:
        raise ApiError(400, "Error", f"Cluster {info.name} cannot be reached: {e}") from None


@router.get("/clusters", summary="Enabled clusters")
def clusters(request: Request, api: ApiDep, pretty_: str | None = Query(None, alias="pretty")) -> Response:
    with api.engine.connect() as conn:
        names = dbclusters.enabled_cluster_names(conn)
        batches = dbclusters.enabled_cluster_batches(conn)
    items = [{"id": i, "name": n, "batch": batches.get(i), "links": [link(request, "self", f"/clusters/{i}"),
                                                                      link(request, "parent", "/clusters")]}
             for i, n in sorted(names.items())]
    return render(request, 200, {"items": items, "total": len(items),
                                 "links": [link(request, "self", "/clusters"), link(request, "parent", "/")]},
                  "GET")


@router.get("/clusters/{clid}", summary="One cluster (no credentials), with stress and blacklist state")
def cluster(request: Request, api: ApiDep, clid: str, pretty_: str | None = Query(None, alias="pretty")
            ) -> Response:
    i = int_id(clid)
    with api.engine.connect() as conn:
        body = dbclusters.cluster_representation(conn, i, float(api.conf.get("STRESS_FACTOR")))
    if body is None:
        raise not_found(f"Cluster {i} not found")
    body["links"] = [link(request, "self", f"/clusters/{i}"), link(request, "parent", "/clusters")]
    return render(request, 200, body, "GET")


@router.delete("/clusters/{clid}/{path:path}", status_code=202,
               summary="Delete a file on a cluster, as the (authenticated) caller's cluster login")
def delete_file(request: Request, api: ApiDep, clid: str, path: str) -> Response:
    caller = api.policy.user(request)
    i = int_id(clid)
    try:
        file_path = media_path(path)
    except ValueError as e:
        raise bad(str(e)) from None
    with api.engine.connect() as conn:
        info = get_cluster(conn, i)
        mapping = user_mapping(conn, i)
    if info.batch == "local" and not caller.admin:
        # a local cluster acts with the server's own identity: no deletion on a user's behalf
        raise forbidden(f"Access denied: files of local cluster {info.name} can only be deleted by an admin")
    adapter = adapter_for(api, info, mapping)
    try:
        adapter.delete_file(file_path, caller.login)
    except ClusterAPINotFound as e:
        raise not_found(f"File not found: {e.message}") from None
    except ClusterAPIError as e:
        raise ApiError(400, "Media deletion error", e.message) from None
    finally:
        adapter.close()
    return render(request, 202, {"msg": f"Deleting {path} on {i}"})
