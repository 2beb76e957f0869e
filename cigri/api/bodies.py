"""Request bodies: read with a size cap, parsed as strict JSON (no NaN/Infinity, bounded
nesting) and checked against typed models, so that a bad body gets one 400 naming the
problem and nothing from outside is held unbounded in memory."""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal, TypeVar

from fastapi import Request
from pydantic import BaseModel, ConfigDict, Field, RootModel, StrictInt, StrictStr, ValidationError, field_validator
from starlette.requests import ClientDisconnect

from cigri.api.core import INT4, ApiError, bad

#: nesting depth of any JSON body (a JDL is 3 deep; CiGri3 clients never send more than 5)
MAX_DEPTH = 32
#: bodies that are not a JDL or a list of tasks (events, tokens, subscriptions, updates)
SMALL_BODY = 64 * 1024

M = TypeVar("M", bound=BaseModel)


def too_large(limit: int) -> ApiError:
    return ApiError(413, "Payload Too Large", f"Request body larger than {limit} bytes "
                    "(API_MAX_BODY_SIZE; add tasks in several requests)")


async def read_body(request: Request, limit: int) -> bytes:
    """The whole body, or 413 as soon as it is known to exceed `limit` bytes."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise too_large(limit)
    buf = bytearray()
    try:
        async for chunk in request.stream():
            buf += chunk
            if len(buf) > limit:
                raise too_large(limit)
    except ClientDisconnect:
        raise ApiError(400, "Bad Request", "The client went away before sending the whole body") from None
    return bytes(buf)


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def check_depth(value: Any, limit: int = MAX_DEPTH) -> None:
    """ValueError if `value` nests containers deeper than `limit`."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        v, d = stack.pop()
        if isinstance(v, dict):
            items: Any = v.values()
        elif isinstance(v, list):
            items = v
        else:
            continue
        if d > limit:
            raise ValueError(f"nested deeper than {limit} levels")
        stack.extend((x, d + 1) for x in items if isinstance(x, dict | list))


def loads(text: str | bytes) -> Any:
    """JSON as RFC 8259 has it: NaN/Infinity refused, nesting bounded. ValueError otherwise."""
    try:
        value = json.loads(text, parse_constant=_refuse_constant)
    except RecursionError:
        raise ValueError(f"nested deeper than {MAX_DEPTH} levels") from None
    except UnicodeDecodeError:
        raise ValueError("not UTF-8 text") from None
    check_depth(value)
    return value


def parse_json(raw: bytes, what: str = "Request body") -> Any:
    if not raw.strip():
        raise bad("Empty request body (JSON expected)")
    try:
        return loads(raw)
    except ValueError as e:
        raise bad(f"{what} is not valid JSON: {e}") from None


def _explain(e: ValidationError) -> str:
    parts = []
    for err in e.errors(include_url=False):
        loc = ".".join(str(x) for x in err.get("loc", ()) if x != "__root__")
        msg = str(err.get("msg", ""))
        if err.get("type") == "value_error":
            msg = str(err.get("ctx", {}).get("error", msg))
            parts.append(msg)
            continue
        if err.get("type") == "extra_forbidden":
            msg = "unknown field"
        parts.append(f"{loc}: {msg}" if loc else msg)
    return "; ".join(parts)


def validate(model: type[M], value: Any) -> M:
    try:
        return model.model_validate(value)
    except ValidationError as e:
        raise bad(_explain(e)) from None


async def body_of(request: Request, model: type[M], limit: int = SMALL_BODY) -> M:
    return validate(model, parse_json(await read_body(request, limit)))


def request_body(model: type[BaseModel], description: str = "") -> dict[str, Any]:
    """OpenAPI `requestBody` of a route that reads `model` itself (see body_of)."""
    schema = model.model_json_schema(by_alias=True)
    if description:
        schema["description"] = description
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": schema}}}}


# --------------------------------------------------------------------------- the models
Id = Annotated[StrictInt, Field(gt=0, le=INT4)]


class CampaignUpdate(BaseModel):
    """PUT /campaigns/:id: rename and/or pause (paused) or resume (in_treatment)."""

    model_config = ConfigDict(extra="ignore")
    name: Annotated[StrictStr, Field(min_length=1, max_length=255)] | None = None
    state: Literal["paused", "in_treatment"] | None = None


class TaskLines(RootModel[list[StrictStr]]):
    """POST /campaigns/:id/jobs: parameter lines, one task each."""

    root: Annotated[list[StrictStr], Field(min_length=1)]


class EventIn(BaseModel):
    """POST /events (administrators)."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    class_: Literal["cluster", "job", "campaign", "notify", "log"] = Field(alias="class")
    code: Annotated[StrictStr, Field(min_length=1, max_length=32)]
    state: Literal["open", "closed"] = "open"
    job_id: Id | None = None
    cluster_id: Id | None = None
    campaign_id: Id | None = None
    parent: Id | None = None
    message: Annotated[StrictStr, Field(max_length=65536)] | None = None


class Subscription(BaseModel):
    """POST /notifications/:type."""

    model_config = ConfigDict(extra="ignore")
    identity: Annotated[StrictStr, Field(min_length=1, max_length=255)]
    severity: StrictStr

    @field_validator("identity")
    @classmethod
    def _identity(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("identity must be a non-empty string")
        return v.strip()

    @field_validator("severity")
    @classmethod
    def _severity(cls, v: str) -> str:
        if v not in ("low", "medium", "high"):
            raise ValueError("Severity should be 'low', 'medium' or 'high'")
        return v


class ClusterToken(BaseModel):
    """POST /tokens: a user's JWT for a jwt-authenticated (OAR 3) cluster."""

    model_config = ConfigDict(extra="ignore")
    cluster_id: StrictInt | StrictStr
    token: Annotated[StrictStr, Field(min_length=1, max_length=240)]


class TokenRequest(BaseModel):
    """POST /auth/token: a bearer token for oneself (or, for an admin, for `user`)."""

    model_config = ConfigDict(extra="ignore")
    user: Annotated[StrictStr, Field(min_length=1, max_length=255)] | None = None
    lifetime: Annotated[StrictInt, Field(gt=0)] | None = None


#: the JDL as documented in docs (validated by cigri.jdl, which names the faulty field)
JDL_SCHEMA: dict[str, Any] = {"requestBody": {"required": True, "content": {"application/json": {"schema": {
    "type": "object", "description": "the JDL", "required": ["name", "clusters"],
    "properties": {"name": {"type": "string"}, "clusters": {"type": "object"},
                   "params": {"type": "array", "items": {"type": "string"}},
                   "nb_jobs": {"type": "integer"}, "jobs_type": {"type": "string"}}}}}}}
