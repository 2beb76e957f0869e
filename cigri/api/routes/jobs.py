"""/jobs/:id: one CiGri job, its kill, its outputs and the batch scheduler's view (owner or admin)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import Response

from cigri import events as E
from cigri.api.core import ApiError, accepted, bad, int_id, link, not_found, render
from cigri.api.routes.clusters import adapter_for
from cigri.api.state import Api, get_api
from cigri.clusters.base import ClusterAPIError, ClusterAPINotFound
from cigri.clusters.http import media_path
from cigri.db.clusters import get_cluster, user_mapping

router = APIRouter()
ApiDep = Annotated[Api, Depends(get_api)]


@router.get("/jobs/{jid}", summary="One CiGri job — owner or admin")
def get_job(request: Request, api: ApiDep, jid: str, pretty_: str | None = Query(None, alias="pretty")) -> Response:
    i = int_id(jid)
    caller = api.policy.user(request)
    with api.engine.connect() as conn:
        job = api.policy.job(conn, i, caller)
    job["links"] = [link(request, "self", f"/jobs/{i}"), link(request, "parent", "/jobs")]
    return render(request, 200, job, "GET")


@router.delete("/jobs/{jid}", status_code=202, summary="Ask nikita to kill one job — owner or admin")
def delete_job(request: Request, api: ApiDep, jid: str) -> Response:
    i = int_id(jid)
    caller = api.policy.user(request)
    E.cancel_job(api.engine, i, caller.login, api.policy.admins)
    return accepted(request, f"Job {i} cancel event created")


def _job_adapter(request: Request, api: Api, jid: str) -> tuple[Any, dict[str, Any]]:
    i = int_id(jid)
    caller = api.policy.user(request)
    with api.engine.connect() as conn:
        job = api.policy.job(conn, i, caller)
        if job["cluster_id"] is None or job["remote_id"] is None:
            raise not_found(f"Job {i} has not been submitted to a cluster yet")
        info = get_cluster(conn, int(job["cluster_id"]))
        mapping = user_mapping(conn, info.id)
    return adapter_for(api, info, mapping), job


def _output(request: Request, api: Api, jid: str, which: str) -> Response:
    adapter, job = _job_adapter(request, api, jid)
    try:
        remote = adapter.get_job(int(job["remote_id"]), job["grid_user"])
        path = remote.output_path(which)
        if not path:
            raise not_found(f"Job {job['id']} has no {which} file")
        try:
            path = media_path(path)
        except ValueError as e:
            raise bad(f"Job {job['id']}: {e}") from None
        text = adapter.get_file(path, job["grid_user"], int(api.conf.get("OUTPUT_TAIL_LINES")))
    except ClusterAPINotFound as e:
        raise not_found(f"File not found: {e.message}") from None
    except ClusterAPIError as e:
        raise ApiError(400, "Get media error", e.message) from None
    finally:
        adapter.close()
    return render(request, 200, {"output": text}, "GET")


@router.get("/jobs/{jid}/stdout", summary="The job's stdout (last lines) — owner or admin")
def stdout(request: Request, api: ApiDep, jid: str) -> Response:
    return _output(request, api, jid, "stdout")


@router.get("/jobs/{jid}/stderr", summary="The job's stderr (last lines) — owner or admin")
def stderr(request: Request, api: ApiDep, jid: str) -> Response:
    return _output(request, api, jid, "stderr")


@router.get("/jobs/{jid}/cinfos", summary="The batch scheduler's details of the job — owner or admin")
def cinfos(request: Request, api: ApiDep, jid: str, pretty_: str | None = Query(None, alias="pretty")) -> Response:
    adapter, job = _job_adapter(request, api, jid)
    try:
        remote = adapter.get_job(int(job["remote_id"]), job["grid_user"])
    except ClusterAPINotFound as e:
        raise not_found(f"Remote job not found: {e.message}") from None
    except ClusterAPIError as e:
        raise ApiError(400, "Error", f"Cluster API error: {e.message}") from None
    finally:
        adapter.close()
    return render(request, 200, remote.raw or remote.__dict__, "GET")
