"""What every route of the API shares: CiGri3's error and answer shapes (JSON ending with
a newline, `Allow` headers, `{"status", "title", "message"}` errors), links prefixed by
`X-Cigri-Api-Path-Prefix`, and the parsing of ids and query flags."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from fastapi import Request
from fastapi.responses import Response

from cigri.errors import AdmissionRuleError, CigriError, NotFound, StateError, Unauthorized

MAX_LIMIT = 100000
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


# --------------------------------------------------------------------------- answers
def pretty(request: Request) -> bool:
    v = request.query_params.get("pretty")
    return v is not None and v.lower() != "false"


def _json_default(o: Any) -> Any:
    if isinstance(o, datetime):
        return int(o.timestamp())
    return str(o)


def render(request: Request | None, status: int, body: Any, allow: str | None = None,
           headers: dict[str, str] | None = None) -> Response:
    indent = 2 if request is not None and pretty(request) else None
    text = json.dumps(body, indent=indent, default=_json_default) + "\n"
    h = dict(headers or {})
    if allow:
        h["Allow"] = allow
    return Response(text, status_code=status, media_type="application/json", headers=h)


def error_body(status: int, title: str, message: str) -> dict[str, Any]:
    return {"status": status, "title": title, "message": message}


def accepted(request: Request, message: str, title: str = "Accepted") -> Response:
    return render(request, 202, error_body(202, title, message))


def created(request: Request, message: str) -> Response:
    return render(request, 201, error_body(201, "Created", message))


def prefix_of(request: Request) -> str:
    return request.headers.get("x-cigri-api-path-prefix", "").rstrip("/")


def link(request: Request, rel: str, href: str, title: str | None = None) -> dict[str, str]:
    d = {"rel": rel, "href": prefix_of(request) + href}
    if title:
        d["title"] = title
    return d


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
    """`?all`, `?resubmit`, `?hold`... present and not 0/false/no (CiGri3 took `all=0` for yes)."""
    return value is not None and value.strip().lower() not in ("0", "false", "no", "off")
