"""Fuzz the live HTTP API from its own OpenAPI document (schemathesis on hypothesis).

Whatever a caller sends, the gateway answers with a documented status and content type,
never a 5xx, and stays healthy. Bounded and repeatable: a fixed number of cases per
operation and variant, derandomized, no shrinking. The document is built in-process, so
this does not depend on `GET /openapi.json` being mounted.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from schemathesis import Case, GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.core.result import Ok
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from serve_app.openapi import openapi_document
from tests.fixtures_sim import Sim
from tests.helpers import wait_for
from tests.serve.conftest import Service

pytestmark = pytest.mark.serve

MAX_EXAMPLES = 25
TIMEOUT_S = 10.0
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,  # JSON bodies, and each SSE frame's `data` against Event
]
# Asking for JSON keeps POST .../runs on its 202 path while fuzzing; its stream is checked
# once below (and end to end in test_runs_http.py). GET .../events streams for a live run.
HEADERS = {"Accept": "application/json"}
AGENT = "support"

SCHEMA = schemathesis.openapi.from_dict(openapi_document())
PARAMETERS = {
    "GET /healthz": (),
    "GET /console": (),
    "GET /console/static/{name}": (),  # an enum of its files: positive cases only
    "GET /v1/agents": (),
    "POST /v1/agents/{agent}/runs": ("agent",),
    "GET /v1/runs": (),
    "GET /v1/threads/{thread_id}/runs": ("thread_id",),
    "GET /v1/runs/{run_id}": ("run_id",),
    "GET /v1/runs/{run_id}/events": ("run_id",),
    "POST /v1/runs/{run_id}/cancel": ("run_id",),
    "POST /v1/runs/{run_id}/outcome": ("run_id",),
    "POST /v1/runs/{run_id}/approvals/{call_id}": ("run_id", "call_id"),
    "GET /v1/admin/tenants": (),
    "GET /v1/admin/kill": (),
    "POST /v1/admin/kill": (),
    "POST /v1/admin/agents/{agent}/rollback": ("agent",),
    "GET /v1/admin/agents/{agent}/shadows": ("agent",),
    "GET /v1/admin/costs": (),
    "GET /v1/admin/providers": (),
}
"""Every operation but GET /openapi.json (nothing to fuzz) and the batch routes, with its path
parameters."""
FUZZED_ELSEWHERE = {
    # test_batches.py fuzzes these, waiting for the batches it starts to end.
    "POST /v1/agents/{agent}/batches",
    "GET /v1/batches/{batch_id}",
    "POST /v1/batches/{batch_id}/cancel",
    # test_input_http.py fuzzes it: here it would delete the runs the other operations use.
    "DELETE /v1/runs/{run_id}",
}

VARIANTS = [
    pytest.param(label, variant, id=f"{label}-{variant}")
    for label, path_params in PARAMETERS.items()
    # no inputs: nothing to negate and nothing to pin
    for variant in (("positive", "negative", "live") if path_params else ("positive",))
]

FUZZ_SETTINGS = settings(
    max_examples=MAX_EXAMPLES,
    derandomize=True,
    database=None,
    deadline=None,
    phases=[Phase.explicit, Phase.generate],  # no shrinking: the failing request is enough
    suppress_health_check=list(HealthCheck),
    print_blob=False,
)


def test_every_operation_is_fuzzed() -> None:
    results = list(SCHEMA.get_all_operations())
    assert all(isinstance(result, Ok) for result in results), results
    labels = {result.ok().label for result in results if isinstance(result, Ok)}
    assert labels - set(PARAMETERS) - FUZZED_ELSEWHERE == {"GET /openapi.json"}


@pytest.fixture(scope="module")
def live_run(service: Service) -> str:
    """A finished run: real ids to pin path parameters to, so checks reach the 200 paths."""
    r = service.http.post(f"/v1/agents/{AGENT}/runs", json={"input": "Where is order 1234?"})
    assert r.status_code == 202, r.text
    run_id: str = r.json()["run_id"]

    def finished() -> bool:
        status = service.http.get(f"/v1/runs/{run_id}").json()["status"]
        return bool(status != "running")

    wait_for(finished, timeout_s=30)
    return run_id


@pytest.fixture(scope="module")
def session() -> Iterator[requests.Session]:
    with requests.Session() as http:
        yield http


def _strategy(label: str, variant: str, live_run: str) -> Any:
    operation = SCHEMA.find_operation_by_label(label)
    assert operation is not None, label
    if variant == "live":
        pinned = {
            "agent": AGENT,
            "run_id": live_run,
            "thread_id": "fuzz-thread",
            "call_id": "call-1",
        }
        path_parameters = {name: pinned[name] for name in PARAMETERS[label]}
        return operation.as_strategy(GenerationMode.POSITIVE, path_parameters=path_parameters)
    mode = GenerationMode.NEGATIVE if variant == "negative" else GenerationMode.POSITIVE
    return operation.as_strategy(mode)


@pytest.mark.parametrize(("label", "variant"), VARIANTS)
def test_fuzz(
    label: str,
    variant: str,
    service: Service,
    sim: Sim,
    live_run: str,
    session: requests.Session,
) -> None:
    @FUZZ_SETTINGS
    @given(case=_strategy(label, variant, live_run))
    def check(case: Case[Any]) -> None:
        case.call_and_validate(
            base_url=service.base_url,
            session=session,
            headers=HEADERS,
            checks=CHECKS,
            timeout=TIMEOUT_S,
        )

    check()


HOSTILE = [
    # Inputs the generators rarely reach: Unicode digits, over-long and signed seqs.
    pytest.param({"after": "\u00b2"}, {}, id="after-superscript-two"),
    pytest.param({}, {"Last-Event-ID": "\u00b2"}, id="last-event-id-superscript-two"),
    pytest.param({"after": "\u0661"}, {}, id="after-arabic-indic-one"),
    pytest.param({}, {"Last-Event-ID": "\u00bd"}, id="last-event-id-one-half"),
    pytest.param({"after": "1" * 13}, {}, id="after-13-digits"),
    pytest.param({"after": "-1"}, {}, id="after-negative"),
    pytest.param({"after": "0x10"}, {"Last-Event-ID": ""}, id="empty-last-event-id-falls-back"),
]


@pytest.mark.parametrize(("query", "headers"), HOSTILE)
def test_hostile_resume_points(
    query: dict[str, str],
    headers: dict[str, str],
    service: Service,
    live_run: str,
    session: requests.Session,
) -> None:
    operation = SCHEMA.find_operation_by_label("GET /v1/runs/{run_id}/events")
    assert operation is not None
    case = operation.Case(path_parameters={"run_id": live_run}, query=query, headers=headers)
    case.call_and_validate(
        base_url=service.base_url,
        session=session,
        headers=HEADERS,
        checks=CHECKS,
        timeout=TIMEOUT_S,
    )


def test_a_streamed_run_conforms(service: Service, sim: Sim, session: requests.Session) -> None:
    operation = SCHEMA.find_operation_by_label("POST /v1/agents/{agent}/runs")
    assert operation is not None
    case = operation.Case(
        path_parameters={"agent": AGENT},
        body={"input": "Where is order 1234?"},
        media_type="application/json",
    )
    response = case.call_and_validate(
        base_url=service.base_url,
        session=session,
        headers={"Accept": "text/event-stream"},
        checks=CHECKS,
        timeout=TIMEOUT_S * 3,
    )
    assert response.status_code == 200
    assert "event: run.completed" in response.text


def test_healthy_after_fuzzing(service: Service) -> None:
    r = service.http.get("/healthz")
    assert r.status_code == 200, r.text
    assert r.json() == {"status": "ok"}
