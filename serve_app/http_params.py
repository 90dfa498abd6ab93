"""Reading a request's parameters: query values and headers into checked values, and
request data into models. A bad value is a 422 naming its field, never a 500."""

from __future__ import annotations

import math
import re
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError
from starlette.requests import Request

from agents.errors import RequestInvalid

_M = TypeVar("_M", bound=BaseModel)


def validated(model: type[_M], data: Any) -> _M:
    """`data` as `model`; RequestInvalid naming the first field that is wrong."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        field = ".".join(str(part) for part in first["loc"]) or "body"
        raise RequestInvalid(f"{field}: {first['msg']}", field) from None


def since_param(request: Request) -> float | None:
    """The `since` query parameter: unix seconds, or None when absent."""
    raw = request.query_params.get("since")
    if raw is None:
        return None
    try:
        value = float(raw) if raw.isascii() and "_" not in raw else math.nan
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value >= 0):
        raise RequestInvalid(f"since must be unix seconds (>= 0), not {raw[:40]!r}", "since")
    return value


def wants_sse(request: Request) -> bool:
    return "text/event-stream" in request.headers.get("accept", "")


def resume_point(request: Request) -> int:
    """The seq an event stream resumes after: `Last-Event-ID`, else `after`, else 0."""
    raw = request.headers.get("last-event-id") or request.query_params.get("after") or "0"
    field = "Last-Event-ID" if "last-event-id" in request.headers else "after"
    if re.fullmatch(r"[0-9]{1,12}", raw) is None:  # ASCII digits only: "²".isdigit() is True
        raise RequestInvalid(f"{field} must be a non-negative integer seq, not {raw[:40]!r}", field)
    return int(raw)
