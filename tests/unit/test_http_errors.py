"""Every error in the tree has a status and becomes problem+json (RFC 9457) with its code."""

from __future__ import annotations

import gc
import json
from typing import Any

import pytest
from ray.exceptions import ActorDiedError, ActorUnavailableError
from ray.serve.exceptions import BackPressureError, RayServeException

from agents.errors import (
    Overloaded,
    ProviderUnavailable,
    RayfleetError,
    RequestInvalid,
    TenantLimited,
    UnknownRun,
    all_error_classes,
)
from serve_app.http_errors import as_rayfleet_error, error_response, status_for
from tests.unit.test_errors import build

CLASSES = all_error_classes()

# The status each class answers with. A new class must be added here on purpose: a 500 for
# a caller's mistake, or a 4xx for our own bug, is a decision, not a default.
EXPECTED_STATUS = {
    "RayfleetError": 500,
    "ConfigError": 500,
    "AgentSpecError": 500,
    "NotFound": 404,
    "UnknownAgent": 404,
    "UnknownRun": 404,
    "UnknownBatch": 404,
    "RequestInvalid": 422,
    "RequestTooLarge": 413,
    "Conflict": 409,
    "NotPending": 409,
    "RunError": 500,
    "BudgetExceeded": 500,
    "RunTimeout": 500,
    "ApprovalTimedOut": 500,
    "ToolFailed": 500,
    "ToolUnavailable": 500,
    "ToolArgumentsInvalid": 422,
    "SideEffectsExceeded": 500,
    "Killed": 503,
    "Unauthorized": 401,
    "Forbidden": 403,
    "ModelOutputUnusable": 500,
    "ProviderError": 502,
    "ProviderUnavailable": 502,
    "ProviderRejected": 502,
    "AllProvidersFailed": 502,
    "TenantLimited": 429,
    "Overloaded": 503,
    "HostFull": 503,
    "ServiceUnavailable": 503,
}


def body_of(response: Any) -> dict[str, Any]:
    parsed: dict[str, Any] = json.loads(bytes(response.body))
    return parsed


@pytest.mark.parametrize("cls", CLASSES, ids=lambda cls: cls.__name__)
def test_every_error_class_has_a_status_and_a_problem_body(cls: type[RayfleetError]) -> None:
    assert cls.__name__ in EXPECTED_STATUS, f"add {cls.__name__} to EXPECTED_STATUS"
    error = build(cls)
    status = status_for(error)
    assert status == EXPECTED_STATUS[cls.__name__]

    response = error_response(error)
    assert response.status_code == status
    assert response.headers["content-type"] == "application/problem+json"
    body = body_of(response)
    assert body["status"] == status
    assert body["code"] == cls.code
    assert body["title"] == cls.__name__
    assert body["detail"] == error.message
    assert body["type"] == "about:blank"
    if status in (429, 503) or (status == 409 and error.args[-1] is not None):
        assert int(response.headers["retry-after"]) >= 1
    else:
        assert "retry-after" not in response.headers


def test_every_class_is_covered() -> None:
    assert set(EXPECTED_STATUS) == {cls.__name__ for cls in CLASSES}


@pytest.mark.parametrize(
    ("error", "status", "retry_after"),
    [
        (TenantLimited("over requests_per_min=60 for tenant 'acme'", 2.5), 429, "3"),
        (TenantLimited("over tokens_per_min", 0.01), 429, "1"),  # never "0"
        (Overloaded("run pool is at max_hosts=4", 1.0), 503, "1"),
        (Overloaded("run pool is at max_hosts=4", 30), 503, "30"),
    ],
)
def test_429_and_503_carry_retry_after_in_whole_seconds(
    error: RayfleetError, status: int, retry_after: str
) -> None:
    response = error_response(error)
    assert response.status_code == status
    assert response.headers["retry-after"] == retry_after


def test_a_provider_retry_hint_is_not_a_retry_after_for_our_caller() -> None:
    response = error_response(ProviderUnavailable("sim-openai: 429", "sim-openai", 429, 7.0))
    assert response.status_code == 502
    assert "retry-after" not in response.headers


def test_a_request_error_names_its_field() -> None:
    body = body_of(error_response(RequestInvalid("input must not be empty", "input")))
    assert body["field"] == "input"
    assert body["code"] == "request_invalid"
    assert "field" not in body_of(error_response(UnknownRun("unknown run 'x'", "x")))


class _RayWrapper(Exception):
    """Stands in for ray.exceptions.RayTaskError in the dynamic class Ray builds."""


_RayWrapper.__module__ = "ray.exceptions"


def ray_wrapped(cause: RayfleetError) -> RayfleetError:
    """What Ray re-raises in the caller: `RayTaskError(<Cause>)`, a class built on the fly in
    ray's module that subclasses both the wrapper and the cause's class and delegates to it."""

    def __init__(self: Any, wrapped: RayfleetError) -> None:
        self.cause = wrapped
        self.args = (wrapped,)

    def __getattr__(self: Any, name: str) -> Any:
        return getattr(self.cause, name)

    name = f"RayTaskError({type(cause).__name__})"
    cls = type(
        name,
        (_RayWrapper, type(cause)),
        {
            "__init__": __init__,
            "__getattr__": __getattr__,
            "__module__": "ray.exceptions",
            "__qualname__": name,
        },
    )
    wrapped: RayfleetError = cls(cause)
    return wrapped


@pytest.mark.parametrize(
    ("cause", "status"),
    [
        (UnknownRun("unknown run 'run-h1-x'", "run-h1-x"), 404),
        (Overloaded("run pool is at max_hosts=4", 2.0), 503),
    ],
)
def test_the_title_names_our_class_for_a_ray_wrapped_error(
    cause: RayfleetError, status: int
) -> None:
    error = ray_wrapped(cause)
    try:
        assert type(error).__name__.startswith("RayTaskError(")
        response = error_response(error)
        body = body_of(response)
        assert response.status_code == status
        assert body["title"] == type(cause).__name__
        assert body["code"] == cause.code
        assert body["detail"] == cause.message
        if status == 503:
            assert response.headers["retry-after"] == "2"
    finally:
        # The dynamic class is a subclass of ours while it lives: keep it out of the tree.
        del error
        gc.collect()
    assert all(cls.__module__ == "agents.errors" for cls in all_error_classes())


def upstream_crash() -> Exception:
    """What a Serve handle raises when the replica it called died (router.py)."""
    wrapped = RayServeException("Request to deployment 'support@v1' failed: actor died")
    wrapped.__cause__ = ActorDiedError()
    return wrapped


@pytest.mark.parametrize(
    ("exc", "status", "code"),
    [
        (ActorUnavailableError("the actor is restarting", None), 503, "service_unavailable"),
        (ActorDiedError(), 503, "service_unavailable"),
        (BackPressureError(num_queued_requests=9, max_queued_requests=8), 503, "overloaded"),
        (upstream_crash(), 503, "service_unavailable"),
        (RuntimeError("db password=hunter2 rejected"), 500, "internal_error"),
    ],
)
def test_any_other_exception_becomes_problem_json_not_a_bare_500(
    exc: Exception, status: int, code: str
) -> None:
    response = error_response(as_rayfleet_error(exc))
    assert response.status_code == status
    assert response.headers["content-type"] == "application/problem+json"
    body = body_of(response)
    assert body["code"] == code
    assert "hunter2" not in body["detail"]  # only the type is named
    if status == 503:
        assert int(response.headers["retry-after"]) >= 1
