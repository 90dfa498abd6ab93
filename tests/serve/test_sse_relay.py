"""The gateway relays the run host's SSE frames as they are: the body is byte for byte what
sse-starlette wrote per event before, from the start and from a resume point."""

from __future__ import annotations

import pytest
from sse_starlette.event import ServerSentEvent

from agents.events import Event
from serve_app.sse import to_sse
from tests.fixtures_sim import Sim
from tests.serve.conftest import Service
from tests.serve.test_runs_http import SSE, assert_complete_stream, read_sse

pytestmark = pytest.mark.serve


def per_event_frames(events: list[Event]) -> bytes:
    return b"".join(ServerSentEvent(**to_sse(e), sep="\r\n").encode() for e in events)


def test_the_relayed_body_is_the_per_event_frames(service: Service, sim: Sim) -> None:
    events = read_sse(
        service.http, "POST", "/v1/agents/support/runs", json={"input": "Where is order 1003?"}
    )
    assert_complete_stream(events)
    run_id, middle = events[0].run_id, len(events) // 2
    for after in (0, middle):
        response = service.http.get(f"/v1/runs/{run_id}/events?after={after}", headers=SSE)
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        assert response.headers["cache-control"] == "no-store"
        assert response.headers["x-accel-buffering"] == "no"
        assert response.content == per_event_frames(events[after:])
