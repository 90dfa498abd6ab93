"""The HTTP/SSE API end to end: real Ray, real Serve, real HTTP, the simulator as provider."""

from __future__ import annotations

from typing import Any

import httpx2
import pytest

from agents.events import TERMINAL_KINDS, Event
from serve_app.sse import SSEDecoder
from tests.fixtures_sim import Sim
from tests.helpers import wait_for
from tests.serve.conftest import Service

pytestmark = pytest.mark.serve

SSE = {"Accept": "text/event-stream"}


def read_sse(
    http: httpx2.Client, method: str, url: str, *, limit: int | None = None, **kwargs: Any
) -> list[Event]:
    """Events from an SSE response until its end, or only the first `limit` of them."""
    events: list[Event] = []
    decoder = SSEDecoder()
    headers = {**SSE, **kwargs.pop("headers", {})}
    with http.stream(method, url, headers=headers, **kwargs) as response:
        assert response.status_code == 200, response.read()
        assert response.headers["content-type"].startswith("text/event-stream")
        for line in response.iter_lines():
            event = decoder.feed(line)
            if event is not None:
                events.append(event)
                if limit is not None and len(events) >= limit:
                    break
    return events


def assert_complete_stream(events: list[Event]) -> None:
    assert [e.seq for e in events] == list(range(1, len(events) + 1))
    assert len({e.run_id for e in events}) == 1
    assert [e.kind in TERMINAL_KINDS for e in events].count(True) == 1
    assert events[-1].kind in TERMINAL_KINDS


def test_sse_run_streams_tokens_tool_calls_and_one_terminal_event(
    service: Service, sim: Sim
) -> None:
    events = read_sse(
        service.http, "POST", "/v1/agents/support/runs", json={"input": "Where is order 1234?"}
    )
    assert_complete_stream(events)
    kinds = [e.kind for e in events]
    assert kinds[0] == "run.created"
    assert kinds[-1] == "run.completed"
    assert kinds.index("tool.call") < kinds.index("tool.result") < kinds.index("run.completed")
    assert "model.delta" in kinds
    call = next(e for e in events if e.kind == "tool.call")
    assert call.tool == "lookup_order" and call.arguments == {"order_id": 1234}  # type: ignore[union-attr]
    final = events[-1]
    deltas = "".join(e.text for e in events if e.kind == "model.delta" and e.step == 2)  # type: ignore[union-attr]
    assert final.output == deltas != ""  # type: ignore[union-attr]
    assert final.cost_usd > 0  # type: ignore[union-attr]

    summary = service.http.get(f"/v1/runs/{final.run_id}").json()
    assert summary["status"] == "completed"
    assert summary["output"] == final.output  # type: ignore[union-attr]
    assert summary["steps"] == 2
    assert summary["usage"]["output_tokens"] > 0
    assert summary["cost_usd"] == pytest.approx(final.cost_usd)  # type: ignore[union-attr]


def test_post_without_sse_returns_202_and_the_run_completes(service: Service, sim: Sim) -> None:
    response = service.http.post("/v1/agents/support/runs", json={"input": "hello"})
    assert response.status_code == 202
    run_id = response.json()["run_id"]
    assert response.headers["location"] == f"/v1/runs/{run_id}"
    summary = wait_for(
        lambda: (s := service.http.get(f"/v1/runs/{run_id}").json())["status"] != "running" and s
    )
    assert summary["status"] == "completed"


def test_resume_with_last_event_id_replays_exactly_the_rest(service: Service, sim: Sim) -> None:
    full = read_sse(
        service.http, "POST", "/v1/agents/support/runs", json={"input": "Where is order 1002?"}
    )
    run_id, middle = full[0].run_id, len(full) // 2
    by_header = read_sse(
        service.http, "GET", f"/v1/runs/{run_id}/events", headers={"Last-Event-ID": str(middle)}
    )
    by_query = read_sse(service.http, "GET", f"/v1/runs/{run_id}/events?after={middle}")
    assert by_header == full[middle:]
    assert by_query == full[middle:]


def test_resume_while_live_has_no_gap_and_no_duplicate(service: Service, sim: Sim) -> None:
    # The second model turn is slow, so the client drops while the run is still going.
    sim.script(
        {"type": "tool_call", "name": "lookup_order", "arguments": {"order_id": 1001}},
        {"type": "text", "text": "Order 1001 has shipped and arrives tomorrow.", "delay_ms": 800},
    )
    first = read_sse(
        service.http, "POST", "/v1/agents/support/runs", json={"input": "order 1001?"}, limit=3
    )
    run_id = first[0].run_id
    rest = read_sse(
        service.http,
        "GET",
        f"/v1/runs/{run_id}/events",
        headers={"Last-Event-ID": str(first[-1].seq)},
    )
    assert_complete_stream(first + rest)
    assert rest[-1].kind == "run.completed"


def test_client_disconnect_does_not_cancel_the_run(service: Service, sim: Sim) -> None:
    sim.script({"type": "text", "text": "A slow answer.", "delay_ms": 600})
    first = read_sse(
        service.http, "POST", "/v1/agents/support/runs", json={"input": "hello"}, limit=1
    )
    run_id = first[0].run_id
    summary = wait_for(
        lambda: (s := service.http.get(f"/v1/runs/{run_id}").json())["status"] != "running" and s
    )
    assert summary["status"] == "completed"
    assert summary["output"] == "A slow answer."


def test_cancel_stops_a_running_run_and_its_stream_ends_cancelled(
    service: Service, sim: Sim
) -> None:
    sim.script({"type": "text", "text": "never sent", "delay_ms": 60_000})
    run_id = service.http.post("/v1/agents/support/runs", json={"input": "hello"}).json()["run_id"]
    wait_for(lambda: len(sim.requests()) == 1)  # the model call is in flight
    response = service.http.post(f"/v1/runs/{run_id}/cancel")
    assert response.status_code == 200
    assert response.json()["status"] == "cancelled"
    events = read_sse(service.http, "GET", f"/v1/runs/{run_id}/events")
    assert_complete_stream(events)
    assert events[-1].kind == "run.cancelled"
    assert "model.completed" not in [e.kind for e in events]


def test_list_agents_and_health(service: Service) -> None:
    assert service.http.get("/healthz").json() == {"status": "ok"}
    agents = service.http.get("/v1/agents").json()["agents"]
    support = next(a for a in agents if a["name"] == "support")
    assert support["current_version"] == "v1"
    assert support["versions"][0]["tools"] == ["lookup_order", "issue_refund", "search_kb"]


@pytest.mark.parametrize(
    ("method", "url", "body", "status", "code", "field"),
    [
        ("POST", "/v1/agents/nope/runs", {"input": "x"}, 404, "unknown_agent", None),
        (
            "POST",
            "/v1/agents/support/runs",
            {"input": "x", "colour": 1},
            422,
            "request_invalid",
            "colour",
        ),
        ("POST", "/v1/agents/support/runs", {}, 422, "request_invalid", "input"),
        ("POST", "/v1/agents/support/runs", {"input": 7}, 422, "request_invalid", "input"),
        (
            "POST",
            "/v1/agents/support/runs",
            {"input": "x", "version": "v9"},
            404,
            "unknown_agent",
            None,
        ),
        ("GET", "/v1/runs/run-h0-00000000000000000000", None, 404, "unknown_run", None),
        ("GET", "/v1/runs/not-a-run-id", None, 404, "unknown_run", None),
        ("GET", "/v1/runs/run-zz9-00000000000000000000/events", None, 404, "unknown_run", None),
        ("POST", "/v1/runs/not-a-run/cancel", None, 404, "unknown_run", None),
        ("GET", "/v1/nothing-here", None, 404, "http_404", None),
    ],
)
def test_bad_requests_get_problem_json(
    service: Service, method: str, url: str, body: Any, status: int, code: str, field: str | None
) -> None:
    response = service.http.request(method, url, json=body)
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    problem = response.json()
    assert problem["status"] == status and problem["code"] == code
    assert problem.get("field") == field


def test_malformed_and_oversized_bodies_are_rejected_and_the_server_keeps_serving(
    service: Service,
) -> None:
    malformed = service.http.post(
        "/v1/agents/support/runs",
        content=b'{"input": ',
        headers={"content-type": "application/json"},
    )
    assert malformed.status_code == 422 and malformed.json()["field"] == "body"
    huge = service.http.post("/v1/agents/support/runs", content=b"x" * 2_000_000)
    assert huge.status_code == 413
    bad_resume = service.http.get(
        "/v1/runs/run-h0-00000000000000000000/events", headers={"Last-Event-ID": "-1"}
    )
    assert bad_resume.status_code in (404, 422)
    assert service.http.get("/healthz").status_code == 200


def test_a_thread_id_continues_the_conversation(service: Service, sim: Sim) -> None:
    thread = f"thread-{id(sim)}"
    for text in ("My name is Ada.", "What is my name?"):
        events = read_sse(
            service.http,
            "POST",
            "/v1/agents/support/runs",
            json={"input": text, "thread_id": thread},
        )
        assert events[-1].kind == "run.completed"
    second_run_first_call = next(
        r["body"]
        for r in sim.requests()
        if any(m.get("content") == "What is my name?" for m in r["body"]["messages"])
    )
    contents = [m.get("content") for m in second_run_first_call["messages"]]
    # The first turn was recalled into the second run, before its own input.
    assert contents.index("My name is Ada.") < contents.index("What is my name?")


def test_the_end_user_named_on_the_request_is_the_runs(service: Service, sim: Sim) -> None:
    body = {"input": "Where is order 1234?", "user": "cust-7"}
    events = read_sse(service.http, "POST", "/v1/agents/support/runs", json=body)
    assert_complete_stream(events)
    assert events[0].kind == "run.created" and events[0].user == "cust-7"  # type: ignore[union-attr]
    for user in ("", "cust\n7", "x" * 129, 7):
        refused = service.http.post("/v1/agents/support/runs", json={"input": "hi", "user": user})
        assert refused.status_code == 422, refused.text
        assert refused.json()["field"] == "user"
