"""The simulator's control API (`/_sim/*`: the request log, scripted replies, faults, reset)
is off unless turned on: whoever reaches a simulator must not read every caller's prompts or
steer what the next caller gets."""

from __future__ import annotations

from collections.abc import Iterator

import httpx2
import pytest

from serve_app.simulator import SimSettings
from serve_app.simulator.server import SimulatorThread

CONTROL = [
    ("GET", "/_sim/requests"),
    ("GET", "/_sim/script"),
    ("POST", "/_sim/script"),
    ("GET", "/_sim/faults"),
    ("POST", "/_sim/faults"),
    ("DELETE", "/_sim/faults"),
    ("POST", "/_sim/reset"),
]
CHAT = {"model": "sim-fast", "messages": [{"role": "user", "content": "my secret prompt"}]}


def serve(settings: SimSettings) -> Iterator[httpx2.Client]:
    server = SimulatorThread(settings)
    server.start()
    try:
        with httpx2.Client(base_url=server.base_url, timeout=10) as http:
            yield http
    finally:
        server.stop()


@pytest.fixture
def closed() -> Iterator[httpx2.Client]:
    yield from serve(SimSettings(ttft_ms=0))


@pytest.fixture
def opened() -> Iterator[httpx2.Client]:
    yield from serve(SimSettings(ttft_ms=0, control_api=True))


def test_the_control_api_is_off_by_default(closed: httpx2.Client) -> None:
    assert SimSettings().control_api is False
    answer = closed.post("/v1/chat/completions", json=CHAT)
    assert answer.status_code == 200, answer.text  # the providers' API still answers
    for method, path in CONTROL:
        body = {"replies": [{"type": "text", "text": "steered"}]} if method == "POST" else None
        response = closed.request(method, path, json=body)
        assert response.status_code == 404, (method, path, response.text)
        assert "secret" not in response.text
    # Nothing steered the next reply.
    assert "steered" not in closed.post("/v1/chat/completions", json=CHAT).text


def test_with_the_control_api_on_the_log_and_the_script_answer(opened: httpx2.Client) -> None:
    script = {"replies": [{"type": "text", "text": "steered"}]}
    assert opened.post("/_sim/script", json=script).status_code == 200
    assert "steered" in opened.post("/v1/chat/completions", json=CHAT).text
    logged = opened.get("/_sim/requests").json()["requests"]
    assert [entry["body"] for entry in logged] == [CHAT]
