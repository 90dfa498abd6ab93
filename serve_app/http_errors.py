"""The one place errors become HTTP status codes and problem+json bodies (RFC 9457)."""

from __future__ import annotations

import logging
import math
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from ray.exceptions import ActorUnschedulableError, RayActorError, RayError
from ray.serve.exceptions import (
    BackPressureError,
    DeploymentUnavailableError,
    ReplicaUnavailableError,
)
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from agents.errors import (
    Conflict,
    Forbidden,
    Killed,
    NotFound,
    Overloaded,
    ProviderError,
    RayfleetError,
    RequestInvalid,
    RequestTooLarge,
    ServiceUnavailable,
    TenantLimited,
    ToolArgumentsInvalid,
    Unauthorized,
)

logger = logging.getLogger("rayfleet")

_STATUS: dict[type[RayfleetError], int] = {
    RayfleetError: 500,
    NotFound: 404,
    Unauthorized: 401,
    Forbidden: 403,
    RequestInvalid: 422,
    # In a run it is the tool's error to the model; over HTTP (arguments a person sent for
    # a call) it is bad input like any other.
    ToolArgumentsInvalid: 422,
    RequestTooLarge: 413,
    Conflict: 409,
    ProviderError: 502,
    TenantLimited: 429,
    Overloaded: 503,
    Killed: 503,
    ServiceUnavailable: 503,
}


_OUR_PACKAGES = frozenset({"agents", "actors", "serve_app"})


def status_for(error: RayfleetError) -> int:
    """The status of the nearest class in the error's MRO that has one."""
    for cls in type(error).__mro__:
        if cls in _STATUS:
            return _STATUS[cls]
    return 500


def title_for(error: RayfleetError) -> str:
    """Our class's name, also when Ray re-raised the error as a dynamic subclass of it
    (`RayTaskError(UnknownRun)`, defined in ray's module, not ours)."""
    for cls in type(error).__mro__:
        if cls.__module__.partition(".")[0] in _OUR_PACKAGES:
            return cls.__name__
    return type(error).__name__


def problem(status: int, title: str, detail: str, code: str, **extra: Any) -> JSONResponse:
    body = {"type": "about:blank", "title": title, "status": status, "detail": detail, "code": code}
    body.update({k: v for k, v in extra.items() if v is not None})
    return JSONResponse(body, status_code=status, media_type="application/problem+json")


def error_response(error: RayfleetError) -> JSONResponse:
    status = status_for(error)
    response = problem(
        status,
        title_for(error),
        error.message,
        error.code,
        field=getattr(error, "field", None) or None,
    )
    retry_after = getattr(error, "retry_after_s", None)
    if retry_after is not None and status in (409, 429, 503):
        response.headers["Retry-After"] = str(max(1, math.ceil(retry_after)))
    if isinstance(error, TenantLimited) and error.quota is not None:
        # IETF draft RateLimit header fields, for the limit that refused.
        response.headers["RateLimit-Limit"] = f"{error.quota:g}"
        response.headers["RateLimit-Remaining"] = f"{max(0.0, error.remaining or 0.0):g}"
        response.headers["RateLimit-Reset"] = str(math.ceil(error.reset_s or 0.0))
    return response


# Ray's ways of saying "that process is gone or restarting": the same answer as our own
# ServiceUnavailable, so a caller retries after Retry-After instead of seeing a 500.
_UNAVAILABLE = (
    RayActorError,
    ActorUnschedulableError,
    DeploymentUnavailableError,
    ReplicaUnavailableError,
)


def as_rayfleet_error(exc: BaseException) -> RayfleetError:
    """Any exception that escaped a route, as one of ours: a Ray actor or Serve replica that
    died or is restarting is ServiceUnavailable, Serve's backpressure is Overloaded, anything
    else an internal error (named by type only: its text may hold what callers must not see)."""
    if isinstance(exc, RayfleetError):
        return exc
    # Serve wraps a replica's death in its own exception, keeping Ray's as the cause.
    if isinstance(exc, _UNAVAILABLE) or isinstance(exc.__cause__, _UNAVAILABLE):
        return ServiceUnavailable(
            f"a rayfleet service is unavailable ({type(exc).__name__}); try again", "", 2.0
        )
    if isinstance(exc, BackPressureError):
        return Overloaded("the service is at capacity; try again", 1.0)
    return RayfleetError(f"internal error ({type(exc).__name__})")


async def _rayfleet_error(request: Request, exc: RayfleetError) -> Response:
    return error_response(exc)


async def _unexpected_error(request: Request, exc: Exception) -> Response:
    error = as_rayfleet_error(exc)
    if type(error) is RayfleetError:  # a bug, not an outage: its traceback, once
        logger.error("%s %s failed", request.method, request.url.path, exc_info=exc)
    else:
        logger.warning("%s %s failed: %s", request.method, request.url.path, type(exc).__name__)
    return error_response(error)


async def _http_error(request: Request, exc: HTTPException) -> Response:
    return problem(exc.status_code, "HTTPError", str(exc.detail), f"http_{exc.status_code}")


EXCEPTION_HANDLERS: Mapping[Any, Callable[[Request, Any], Awaitable[Response]]] = {
    RayfleetError: _rayfleet_error,
    HTTPException: _http_error,
    # Anything else, Ray's errors included: problem+json, never a bare 500.
    RayError: _unexpected_error,
    Exception: _unexpected_error,
}
"""The gateway app's handlers: every error a route raises becomes problem+json."""
