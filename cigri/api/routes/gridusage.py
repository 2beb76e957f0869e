"""/gridusage: snapshots of the grid's use (public)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import Response

from cigri.api.core import bad, link, render
from cigri.api.state import Api, get_api
from cigri.db import usage

router = APIRouter()
ApiDep = Annotated[Api, Depends(get_api)]


def _epoch(v: str | None, name: str) -> datetime | None:
    if v is None or v == "":
        return None
    try:
        return datetime.fromtimestamp(float(v), UTC)
    except (ValueError, OverflowError, OSError):
        raise bad(f"Parameter {name} must be an epoch time, got {v!r}") from None


@router.get("/gridusage", summary="Grid usage snapshots (newest, or from < date <= to)")
def gridusage(request: Request, api: ApiDep, pretty_: str | None = Query(None, alias="pretty"),
              from_: str | None = Query(None, alias="from"), to: str | None = Query(None)) -> Response:
    f, t = _epoch(from_, "from"), _epoch(to, "to")
    with api.engine.connect() as conn:
        items = usage.gridusage(conn, f, t)
    return render(request, 200, {"items": items, "from": from_, "to": to, "total": len(items),
                                 "links": [link(request, "self", "/gridusage"), link(request, "parent", "/")]},
                  "GET")
