"""rayfleet's agents as MCP tools at /mcp, driven by the `mcp` SDK's own streamable HTTP client
against the session's Serve app: real Ray, real Serve, the simulator as provider."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import anyio
import httpx2
import pytest
from mcp import Client
from mcp.client.client import ConnectMode
from mcp.client.streamable_http import streamable_http_client
from mcp_types import CallToolResult, TextContent

from serve_app.mcp_endpoint import MCP_PATH, RUN_META
from tests.fixtures_sim import Sim
from tests.helpers import wait_for
from tests.serve.conftest import Service
from tests.serve.tenants import ADMIN_KEY, MCP_KEY, MCP_SUPPORT_KEY, auth

pytestmark = pytest.mark.serve

MODES: list[ConnectMode] = ["auto", "legacy"]
"""`auto`: protocol 2026-07-28 (one POST per call); `legacy`: the initialize handshake."""


@contextlib.asynccontextmanager
async def mcp_client(
    service: Service, key: str | None, mode: ConnectMode = "auto"
) -> AsyncIterator[Client]:
    headers = auth(key) if key else {}
    async with httpx2.AsyncClient(headers=headers, timeout=httpx2.Timeout(30, read=120)) as http:
        transport = streamable_http_client(service.base_url + MCP_PATH, http_client=http)
        async with Client(transport, mode=mode) as client:
            yield client


def text_of(result: CallToolResult) -> str:
    assert len(result.content) == 1 and isinstance(result.content[0], TextContent)
    return result.content[0].text


def run_of(result: CallToolResult) -> dict[str, Any]:
    assert result.meta is not None, result
    found: dict[str, Any] = result.meta[RUN_META]
    return found


def ended(service: Service, run_id: str, key: str) -> dict[str, Any]:
    def summary() -> dict[str, Any] | None:
        found: dict[str, Any] = service.http.get(f"/v1/runs/{run_id}", headers=auth(key)).json()
        return found if found["status"] not in ("running", "awaiting_approval") else None

    found: dict[str, Any] = wait_for(summary, timeout_s=60)
    return found


@pytest.mark.parametrize("mode", MODES)
async def test_the_tools_are_exactly_the_tenants_agents(
    service: Service, mode: ConnectMode
) -> None:
    for key in (MCP_KEY, MCP_SUPPORT_KEY):
        over_http = service.http.get("/v1/agents", headers=auth(key)).json()["agents"]
        async with mcp_client(service, key, mode) as client:
            tools = (await client.list_tools()).tools
        assert sorted(t.name for t in tools) == [a["name"] for a in over_http]
        for tool, agent in zip(sorted(tools, key=lambda t: t.name), over_http, strict=True):
            assert tool.description == agent["description"]
            schema = tool.input_schema
            assert schema["type"] == "object" and schema["required"] == ["input"]
            assert set(schema["properties"]) == {"input", "thread_id", "version", "user"}
            assert schema["additionalProperties"] is False
            versions = [v["version"] for v in agent["versions"]]
            assert schema["properties"]["version"]["anyOf"][0]["enum"] == versions
            assert tool.output_schema is not None
            assert tool.output_schema["required"] == ["output", "run_id", "thread_id"]
    assert [a["name"] for a in over_http] == ["support"]  # MCP_SUPPORT_KEY's: one agent


@pytest.mark.parametrize("mode", MODES)
async def test_a_call_runs_the_agent_to_completion_with_progress(
    service: Service, sim: Sim, mode: ConnectMode
) -> None:
    progress: list[tuple[float, str | None]] = []

    async def on_progress(value: float, total: float | None, message: str | None) -> None:
        progress.append((value, message))

    async with mcp_client(service, MCP_KEY, mode) as client:
        arguments = {"input": "Where is order 1234?", "thread_id": f"mcp-{mode}"}
        result = await client.call_tool("support", arguments, progress_callback=on_progress)
    assert not result.is_error, result
    assert result.structured_content is not None
    run_id = result.structured_content["run_id"]
    assert run_of(result) == {"run_id": run_id, "thread_id": f"mcp-{mode}", "status": "completed"}

    summary = service.http.get(f"/v1/runs/{run_id}", headers=auth(MCP_KEY)).json()
    assert summary["status"] == "completed" and summary["tenant"] == "mcp"
    assert text_of(result) == summary["output"] == result.structured_content["output"] != ""
    thread = service.http.get(f"/v1/threads/mcp-{mode}/runs", headers=auth(MCP_KEY)).json()
    assert [r["run_id"] for r in thread["runs"]] == [run_id]
    assert result.structured_content["steps"] == summary["steps"] == 2

    values = [value for value, _ in progress]
    assert values == sorted(set(values)), "progress strictly increases"
    messages = [message for _, message in progress]
    assert messages[0] == f"run {run_id} started (support@v1)"
    assert messages[1:] == [
        "step 1",
        "calling tool lookup_order",
        "tool lookup_order answered",
        "step 2",
    ]


async def test_another_tenants_agent_is_not_listed_and_cannot_be_called(
    service: Service,
) -> None:
    async with mcp_client(service, MCP_SUPPORT_KEY) as client:
        names = [t.name for t in (await client.list_tools()).tools]
        assert "concierge" not in names
        restricted = await client.call_tool("concierge", {"input": "hello"})
        unknown = await client.call_tool("no-such-agent", {"input": "hello"})
    # One the tenant may not run reads exactly as one that does not exist.
    assert restricted.is_error and unknown.is_error
    assert text_of(restricted) == "unknown_agent: unknown agent 'concierge' (known: support)"
    assert text_of(unknown) == "unknown_agent: unknown agent 'no-such-agent' (known: support)"
    assert run_of(restricted) == {
        "run_id": None,
        "thread_id": None,
        "status": "not_started",
        "code": "unknown_agent",
    }
    listed = service.http.get("/v1/runs?agent=concierge", headers=auth(MCP_SUPPORT_KEY)).json()
    assert listed["runs"] == []


async def test_bad_arguments_are_a_tool_error_naming_the_field(service: Service) -> None:
    async with mcp_client(service, MCP_KEY) as client:
        missing = await client.call_tool("support", {})
        extra = await client.call_tool("support", {"input": "hi", "colour": "red"})
        version = await client.call_tool("support", {"input": "hi", "version": "v9"})
    assert missing.is_error and text_of(missing).startswith("request_invalid: input: ")
    assert extra.is_error and text_of(extra).startswith("request_invalid: colour: ")
    assert version.is_error and run_of(version)["code"] == "unknown_agent"


async def test_a_kill_switch_is_a_tool_error(service: Service) -> None:
    def kill(reason: str | None) -> None:
        body = {"scope": "tenants", "name": "mcp_support", "reason": reason}
        response = service.http.post("/v1/admin/kill", json=body, headers=auth(ADMIN_KEY))
        assert response.status_code == 200, response.text

    kill("mcp test")
    try:
        async with mcp_client(service, MCP_SUPPORT_KEY) as client:
            result = await client.call_tool("support", {"input": "hi"})
    finally:
        kill(None)
    assert result.is_error and run_of(result)["code"] == "killed"
    assert "mcp test" in text_of(result)


async def test_a_failed_run_is_a_tool_error_with_its_code(service: Service, sim: Sim) -> None:
    sim.script({"type": "status", "status": 401, "message": "no such key"})
    async with mcp_client(service, MCP_KEY) as client:
        result = await client.call_tool("support", {"input": "hi"})
    assert result.is_error, result
    meta = run_of(result)
    summary = ended(service, meta["run_id"], MCP_KEY)
    assert summary["status"] == "failed" and meta["status"] == "failed"
    assert meta["code"] == summary["error"]["code"] == "provider_rejected"
    assert text_of(result) == f"provider_rejected: {summary['error']['message']}"


async def leave_a_call(
    client: Client, before_leaving: Callable[[], Awaitable[None]] | None = None
) -> str:
    """Call `support`, and leave the call (closing its stream) once its run has started and
    `before_leaving` has returned; the run's id, from the first progress notification."""
    started = anyio.Event()
    run_ids: list[str] = []

    async def on_progress(value: float, total: float | None, message: str | None) -> None:
        if message and message.startswith("run "):
            run_ids.append(message.split()[1])
            started.set()

    async with anyio.create_task_group() as group:

        async def call() -> None:
            await client.call_tool("support", {"input": "hi"}, progress_callback=on_progress)

        group.start_soon(call)
        with anyio.fail_after(60):
            await started.wait()
        if before_leaving is not None:
            await before_leaving()
        group.cancel_scope.cancel()
    return run_ids[0]


async def test_closing_the_calls_stream_cancels_the_run(service: Service, sim: Sim) -> None:
    sim.script({"type": "text", "text": "never sent", "delay_ms": 60_000})

    async def model_call_in_flight() -> None:  # waited for off the loop: the call runs on
        await anyio.to_thread.run_sync(lambda: wait_for(sim.requests, timeout_s=60))

    async with mcp_client(service, MCP_KEY) as client:
        run_id = await leave_a_call(client, model_call_in_flight)  # the client cancels it
    summary = ended(service, run_id, MCP_KEY)
    assert summary["status"] == "cancelled"


async def test_a_legacy_call_left_by_its_client_goes_on(service: Service, sim: Sim) -> None:
    """At handshake-era versions a disconnect is not a cancellation: the run is durable."""
    sim.script({"type": "text", "text": "A slow answer.", "delay_ms": 600})
    async with mcp_client(service, MCP_KEY, "legacy") as client:
        run_id = await leave_a_call(client)
    summary = ended(service, run_id, MCP_KEY)
    assert summary["status"] == "completed" and summary["output"] == "A slow answer."


def test_a_bad_key_or_the_admin_key_is_the_http_apis_401(service: Service) -> None:
    initialize = {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "initialize",
        "params": {
            "protocolVersion": "2025-11-25",
            "capabilities": {},
            "clientInfo": {"name": "t", "version": "0"},
        },
    }
    headers = {"Accept": "application/json, text/event-stream"}
    for key in ("rf-not-a-key", ADMIN_KEY):
        mcp = service.http.post(MCP_PATH, json=initialize, headers={**headers, **auth(key)})
        runs = service.http.post("/v1/agents/support/runs", json={"input": "hi"}, headers=auth(key))
        assert mcp.status_code == runs.status_code == 401
        assert mcp.headers["content-type"] == "application/problem+json"
        assert mcp.json() == runs.json()
    # Without a key: the anonymous tenant, as over HTTP (this app has one).
    anonymous = service.http.post(MCP_PATH, json=initialize, headers=headers)
    assert anonymous.status_code == 200, anonymous.text


def test_a_body_over_the_limit_is_refused_and_the_endpoint_keeps_serving(
    service: Service,
) -> None:
    limit = service.config.max_body_bytes
    headers = {"Accept": "application/json, text/event-stream", **auth(MCP_KEY)}
    body = b'{"jsonrpc": "2.0", "id": 1, "method": "ping", "x": "' + b"x" * limit + b'"}'
    response = service.http.post(
        MCP_PATH, content=body, headers={**headers, "Content-Type": "application/json"}
    )
    assert response.status_code == 413, response.text
    garbage = service.http.post(
        MCP_PATH, content=b"{not json", headers={**headers, "Content-Type": "application/json"}
    )
    assert 400 <= garbage.status_code < 500, garbage.text
    assert service.http.get(MCP_PATH, headers=headers).status_code == 405
