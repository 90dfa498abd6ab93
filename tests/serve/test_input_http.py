"""Bad input, idempotent submission and deletion over real HTTP, on the session's app:
deeply nested JSON, Idempotency-Key on runs and batches, DELETE /v1/runs/{id}."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx2
import pytest
import requests
from hypothesis import given
from schemathesis import GenerationMode

from agents.events import TERMINAL_KINDS, Event
from serve_app.sse import SSEDecoder
from tests.fixtures_sim import Sim
from tests.helpers import wait_for
from tests.serve.conftest import Service
from tests.serve.tenants import ACME_KEY, ADMIN_KEY, GLOBEX_KEY, auth
from tests.serve.test_batches import wait_batch
from tests.serve.test_fuzz import CHECKS, FUZZ_SETTINGS, HEADERS, SCHEMA, TIMEOUT_S

pytestmark = pytest.mark.serve

ACME = auth(ACME_KEY)
GLOBEX = auth(GLOBEX_KEY)
ADMIN = auth(ADMIN_KEY)
RUNS = "/v1/agents/support/runs"
ASK = {"input": "Where is order 1234?"}


def keyed(headers: dict[str, str]) -> dict[str, str]:
    return {**headers, "Idempotency-Key": str(uuid.uuid4())}


def finished(service: Service, run_id: str, headers: dict[str, str] = ACME) -> dict[str, Any]:
    def ended() -> dict[str, Any] | None:
        summary: dict[str, Any] = service.http.get(f"/v1/runs/{run_id}", headers=headers).json()
        return summary if summary["status"] != "running" else None

    found = wait_for(ended, timeout_s=30)
    assert found is not None
    return found


def stream(
    service: Service, headers: dict[str, str], limit: int | None = None
) -> tuple[httpx2.Headers, list[Event]]:
    events: list[Event] = []
    decoder = SSEDecoder()
    headers = {**headers, "Accept": "text/event-stream"}
    with service.http.stream("POST", RUNS, json=ASK, headers=headers) as response:
        assert response.status_code == 200, response.read()
        for line in response.iter_lines():
            event = decoder.feed(line)
            if event is not None:
                events.append(event)
                if limit is not None and len(events) >= limit:
                    break
        return response.headers, events


def assert_problem(response: httpx2.Response, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    body: dict[str, Any] = response.json()
    assert body["code"] == code
    return body


# -- deeply nested JSON ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "headers"),
    [
        (RUNS, ACME),
        ("/v1/agents/support/batches", ACME),
        ("/v1/admin/kill", ADMIN),
    ],
)
@pytest.mark.parametrize("depth", [30_000, 40])  # 30 000: past the stack, under 64 KiB
def test_deeply_nested_json_is_a_422_naming_the_problem(
    service: Service, path: str, headers: dict[str, str], depth: int
) -> None:
    body = b'{"input": ' + b"[" * depth + b"]" * depth + b"}"
    response = service.http.post(
        path, content=body, headers={**headers, "Content-Type": "application/json"}
    )
    problem = assert_problem(response, 422, "request_invalid")
    assert problem["field"] == "body"
    assert "nested more than 32 levels deep" in problem["detail"]
    assert service.http.get("/healthz").status_code == 200


# -- Idempotency-Key ---------------------------------------------------------------------------


def test_a_repeated_key_returns_the_first_run(service: Service, sim: Sim) -> None:
    headers = keyed(ACME)
    first = service.http.post(RUNS, json=ASK, headers=headers)
    assert first.status_code == 202, first.text
    assert "idempotent-replayed" not in first.headers
    again = service.http.post(RUNS, json=ASK, headers=headers)
    assert again.status_code == 202, again.text
    assert again.json() == first.json()
    assert again.headers["location"] == first.headers["location"]
    assert again.headers["idempotent-replayed"] == "true"
    # The same key is another tenant's own.
    theirs = service.http.post(
        RUNS, json=ASK, headers={**GLOBEX, "Idempotency-Key": headers["Idempotency-Key"]}
    )
    assert theirs.status_code == 202 and "idempotent-replayed" not in theirs.headers
    assert theirs.json()["run_id"] != first.json()["run_id"]
    # Another body with the key: refused, naming the header.
    other = service.http.post(RUNS, json={"input": "Something else"}, headers=headers)
    assert assert_problem(other, 422, "request_invalid")["field"] == "Idempotency-Key"
    finished(service, first.json()["run_id"])
    finished(service, theirs.json()["run_id"], GLOBEX)


def test_a_bad_key_is_a_422(service: Service) -> None:
    response = service.http.post(RUNS, json=ASK, headers={**ACME, "Idempotency-Key": "a b"})
    assert assert_problem(response, 422, "request_invalid")["field"] == "Idempotency-Key"


def test_a_streamed_retry_streams_the_same_run_from_its_start(service: Service, sim: Sim) -> None:
    sim.script({"type": "text", "text": "Order 1234 ships today.", "delay_ms": 300})
    headers = keyed(ACME)
    first_headers, first = stream(service, headers, limit=1)  # then the caller drops
    assert "idempotent-replayed" not in first_headers
    run_id = first_headers["x-run-id"]
    again_headers, events = stream(service, headers)
    assert again_headers["x-run-id"] == run_id
    assert again_headers["idempotent-replayed"] == "true"
    assert first[0] == events[0] and events[0].kind == "run.created"
    assert [e.seq for e in events] == list(range(1, len(events) + 1))
    assert {e.run_id for e in events} == {run_id}
    assert [e.kind in TERMINAL_KINDS for e in events].count(True) == 1
    assert events[-1].kind == "run.completed"


def test_concurrent_requests_with_one_key_start_one_run(service: Service, sim: Sim) -> None:
    headers = keyed(ACME)

    def post(_: int) -> httpx2.Response:
        with httpx2.Client(base_url=service.base_url, timeout=30) as http:
            return http.post(RUNS, json=ASK, headers=headers)

    with ThreadPoolExecutor(max_workers=6) as pool:
        responses = list(pool.map(post, range(6)))
    assert [r.status_code for r in responses] == [202] * 6, [r.text for r in responses]
    run_ids = {r.json()["run_id"] for r in responses}
    assert len(run_ids) == 1
    replayed = [r.headers.get("idempotent-replayed") == "true" for r in responses]
    assert replayed.count(False) == 1  # one request started it; the others got it
    finished(service, run_ids.pop())


def test_a_repeated_key_returns_the_first_batch(service: Service, sim: Sim) -> None:
    headers = keyed(ACME)
    body = {"inputs": ["Where is order 1002?"]}
    path = "/v1/agents/support/batches"
    first = service.http.post(path, json=body, headers=headers)
    assert first.status_code == 202, first.text
    again = service.http.post(path, json=body, headers=headers)
    assert again.status_code == 202, again.text
    assert again.json() == first.json() and again.headers["idempotent-replayed"] == "true"
    # The key of a run is not the key of a batch: another endpoint, another scope.
    run = service.http.post(RUNS, json=ASK, headers=headers)
    assert run.status_code == 202 and "idempotent-replayed" not in run.headers
    assert wait_batch(service, first.json()["batch_id"])["total"] == 1
    finished(service, run.json()["run_id"])


# -- DELETE /v1/runs/{id} ----------------------------------------------------------------------


def test_a_tenant_deletes_its_ended_run_and_only_its_own(service: Service, sim: Sim) -> None:
    run_id = service.http.post(RUNS, json=ASK, headers=ACME).json()["run_id"]
    finished(service, run_id)

    assert_problem(service.http.delete(f"/v1/runs/{run_id}", headers=GLOBEX), 404, "unknown_run")
    assert service.http.get(f"/v1/runs/{run_id}", headers=ACME).status_code == 200
    deleted = service.http.delete(f"/v1/runs/{run_id}", headers=ACME)
    assert deleted.status_code == 204 and deleted.content == b""
    assert_problem(service.http.get(f"/v1/runs/{run_id}", headers=ACME), 404, "unknown_run")
    events = service.http.get(f"/v1/runs/{run_id}/events", headers=ACME)
    assert_problem(events, 404, "unknown_run")
    assert_problem(service.http.delete(f"/v1/runs/{run_id}", headers=ACME), 404, "unknown_run")


def test_a_running_run_is_a_409_until_cancelled(service: Service, sim: Sim) -> None:
    sim.script({"type": "text", "text": "never sent", "delay_ms": 60_000})
    run_id = service.http.post(RUNS, json=ASK, headers=ACME).json()["run_id"]
    wait_for(lambda: len(sim.requests()) == 1)  # the model call is in flight
    refused = service.http.delete(f"/v1/runs/{run_id}", headers=ACME)
    assert "cancel it" in assert_problem(refused, 409, "conflict")["detail"]
    assert int(refused.headers["retry-after"]) >= 1
    assert service.http.get(f"/v1/runs/{run_id}", headers=ACME).json()["status"] == "running"
    assert service.http.post(f"/v1/runs/{run_id}/cancel", headers=ACME).status_code == 200
    assert service.http.delete(f"/v1/runs/{run_id}", headers=ACME).status_code == 204


def test_the_admin_key_deletes_any_tenants_run(service: Service, sim: Sim) -> None:
    run_id = service.http.post(RUNS, json=ASK, headers=GLOBEX).json()["run_id"]
    finished(service, run_id, GLOBEX)
    assert service.http.delete(f"/v1/runs/{run_id}", headers=ADMIN).status_code == 204
    assert_problem(service.http.get(f"/v1/runs/{run_id}", headers=GLOBEX), 404, "unknown_run")


def test_deleting_needs_a_known_key(service: Service) -> None:
    response = service.http.delete(
        "/v1/runs/run-h0-00000000000000000000", headers=auth("rf-not-a-key")
    )
    assert_problem(response, 401, "unauthorized")


@pytest.fixture(scope="module")
def session() -> Iterator[requests.Session]:
    with requests.Session() as http:
        yield http


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_fuzz_delete_run(service: Service, session: requests.Session, mode: Any) -> None:
    operation = SCHEMA.find_operation_by_label("DELETE /v1/runs/{run_id}")
    assert operation is not None

    @FUZZ_SETTINGS
    @given(case=operation.as_strategy(mode))
    def check(case: Any) -> None:
        case.call_and_validate(
            base_url=service.base_url,
            session=session,
            headers=HEADERS,
            checks=CHECKS,
            timeout=TIMEOUT_S,
        )

    check()
