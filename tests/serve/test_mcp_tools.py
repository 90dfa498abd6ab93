"""Agents on MCP tools through Serve and the HTTP API, and called by MCP clients at /mcp.

An app of its own (at PREFIX) whose `shop` agent takes its tools from a real MCP server
(tests/mcp_server.py: read-only, side-effecting, slow and failing tools), on a runtime of its
own (its namespace and files, and tool retries long enough to outlast a restart of the server),
with two tenants that each bring their own token for the server."""

from __future__ import annotations

import os
import signal
import threading
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import httpx2
import pytest
import yaml
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp_types import CallToolResult

from actors.caches import CacheSettings
from actors.credentials import CredentialRef
from actors.tool_pool import ToolRetrySettings
from agents.events import Event, ToolResulted
from serve_app.mcp_endpoint import MCP_PATH
from serve_app.tenancy import TenancyConfig, TenantConfig, digest
from tests.fixtures_sim import Sim
from tests.helpers import kill_namespace_actors, wait_for
from tests.mcp_server import McpServerProcess
from tests.serve.conftest import Service
from tests.serve.tenants import auth
from tests.serve.test_runs_http import assert_complete_stream, read_sse
from tests.serve.test_secrets import scan_files

pytestmark = pytest.mark.serve

APP = "rayfleet-mcp-tools"
PREFIX = "/mcp-tools"
KEYS = {"shop_a": "rf-test-shop-a-4c19e2", "shop_b": "rf-test-shop-b-90d7a3"}
ANSWER = {"type": "text", "text": "All done."}


@dataclass
class Shop:
    http: httpx2.Client
    server: McpServerProcess
    tokens: dict[str, str]
    """Each tenant's own token for the server (a file the tenant's credentials name)."""
    files: Path
    """The app's own files: its store, its cache, the tokens."""


def agent(name: str, tools: list[dict[str, Any]]) -> dict[str, Any]:
    strong = {"chain": [{"provider": "sim-openai", "model": "sim-strong"}]}
    return {
        "name": name,
        "version": "v1",
        "system_prompt": "You run errands in a shop.",
        "tiers": {"strong": strong},
        "loop_tier": "strong",
        "tools": tools,
    }


def shop_specs(url: str) -> dict[str, dict[str, Any]]:
    """`shop`: every tool of the server but `slow`, and `slow` with a short timeout, as two
    entries for one server; `shop-guarded`: orders wait for a person's approval."""
    shop = {"url": url, "name": "shop", "tools": ["lookup", "place_order", "broken"]}
    waits = {"url": url, "name": "waits", "tools": ["slow"], "timeout_s": 2}
    guarded = {"url": url, "name": "shop", "tools": ["place_order"], "approval": "required"}
    return {
        "shop": agent("shop", [{"mcp": {**shop, "side_effects": ["place_order"]}}, {"mcp": waits}]),
        "shop-guarded": agent(
            "shop-guarded", [{"mcp": {**guarded, "side_effects": ["place_order"]}}]
        ),
    }


@pytest.fixture(scope="module")
def mcp_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[McpServerProcess]:
    server = McpServerProcess(tmp_path_factory.mktemp("mcp-server"))
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def shop(
    service: Service, mcp_server: McpServerProcess, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Shop]:
    from ray import serve

    from serve_app.app import build_app

    root = tmp_path_factory.mktemp("mcp-shop")
    specs = []
    for name, spec in shop_specs(mcp_server.url).items():
        (path := root / f"{name}.yaml").write_text(yaml.safe_dump(spec))
        specs.append(str(path))
    tokens, tenants = {}, []
    for tenant, key in KEYS.items():
        tokens[tenant] = f"token-of-{tenant}-{uuid.uuid4().hex[:8]}"
        (token := root / f"{tenant}.token").write_text(tokens[tenant] + "\n")
        credentials = {"mcp:shop": CredentialRef(file=str(token))}
        tenants.append(
            TenantConfig(id=tenant, api_key_sha256=(digest(key),), credentials=credentials)
        )
    namespace = f"rayfleet-mcp-{uuid.uuid4().hex[:8]}"
    runtime = service.settings.model_copy(
        update={
            "namespace": namespace,
            "state_url": f"sqlite://{root / 'data'}",
            "cache": CacheSettings(directory=str(root / "cache")),
            # Up to ~7 s of retries: a call caught by a restart of the server is retried
            # until it answers again, within the call's timeout.
            "tool_retry": ToolRetrySettings(attempts=10, initial_backoff_s=0.2, max_backoff_s=1.0),
        }
    )
    config = service.config.model_copy(
        update={
            "agents": tuple(specs),
            "runtime": runtime,
            "tenancy": TenancyConfig(tenants=tuple(tenants), anonymous_tenant=None),
        }
    )
    http = httpx2.Client(base_url=f"{service.base_url}{PREFIX}", timeout=60)
    try:
        serve.run(build_app(config), name=APP, route_prefix=PREFIX)
        yield Shop(http, mcp_server, tokens, root)
    finally:
        http.close()
        serve.delete(APP)
        kill_namespace_actors(namespace)


def call(name: str, **arguments: Any) -> dict[str, Any]:
    return {"type": "tool_call", "name": name, "arguments": arguments}


def run(shop: Shop, tenant: str, text: str, agent: str = "shop") -> list[Event]:
    """A run of `agent` for `tenant` over HTTP, streamed by SSE to its end."""
    url = f"/v1/agents/{agent}/runs"
    events = read_sse(shop.http, "POST", url, json={"input": text}, headers=auth(KEYS[tenant]))
    assert_complete_stream(events)
    return events


def results(events: list[Event]) -> dict[str, ToolResulted]:
    return {e.tool: e for e in events if isinstance(e, ToolResulted)}


def test_the_agent_lists_the_servers_tools_as_its_own(shop: Shop) -> None:
    agents = shop.http.get("/v1/agents", headers=auth(KEYS["shop_a"])).json()["agents"]
    (found,) = [a for a in agents if a["name"] == "shop"]
    assert found["versions"][0]["version"] == "v1"


def test_a_run_calls_mcp_tools_through_serve_and_survives_a_restart_of_the_server(
    shop: Shop, sim: Sim
) -> None:
    sim.script(
        call("slow", seconds=30),
        call("lookup", city="Oslo"),
        call("broken"),
        call("lookup", city="Rome"),
        call("place_order", item="kettle"),
        ANSWER,
    )
    server = shop.server
    oslo = len(server.calls("lookup"))

    def restart_after_oslo() -> None:
        wait_for(lambda: "Oslo" in server.calls("lookup")[oslo:], 120)
        server.restart()  # the run's session is gone: its next calls need a new one

    restarter = threading.Thread(target=restart_after_oslo)
    restarter.start()
    events = run(shop, "shop_a", "Wait, look up the weather, then order a kettle.")
    restarter.join(timeout=120)
    assert not restarter.is_alive()

    assert events[-1].kind == "run.completed", events[-1]
    found = results(events)
    # A timeout, as for a Python tool: the call's deadline, one attempt, the model told.
    assert not found["slow"].ok and "timed out after 2s" in (found["slow"].error or "")
    assert len(server.calls("slow")) == 1
    assert found["lookup"].ok and found["lookup"].output == "weather in Rome: sunny"
    # A tool that answered with an error is not retried: it reached the server once.
    assert not found["broken"].ok and "Error executing tool broken" in (found["broken"].error or "")
    assert len(server.calls("broken")) == 1
    # The side effect ran once, after the restart, with the run's idempotency key.
    assert found["place_order"].ok and found["place_order"].output == "order 1 placed for kettle"
    (key,) = server.orders()
    assert events[0].run_id in key


def test_each_tenants_calls_carry_its_own_token_and_it_is_never_recorded(
    shop: Shop, sim: Sim
) -> None:
    import ray

    server = shop.server
    for tenant, token in shop.tokens.items():
        before = len(server.auth())
        sim.script(call("lookup", city=tenant), ANSWER)
        events = run(shop, tenant, "The weather?")
        assert events[-1].kind == "run.completed", events[-1]
        assert results(events)["lookup"].output == f"weather in {tenant}: sunny"
        # Every request the server got during this tenant's run came with its token.
        assert set(server.auth()[before:]) == {f"Bearer {token}"}
        recorded = shop.http.get(
            f"/v1/runs/{events[0].run_id}/events", headers=auth(KEYS[tenant])
        ).text
        assert token not in recorded and all(token not in e.model_dump_json() for e in events)
    # Nor in any log, store or cache file of the session's Ray and of this app.
    session = Path(ray._private.worker._global_node.get_session_dir_path())
    stores = [shop.files / "data", shop.files / "cache"]  # no cache dir until a tool caches
    # The positive control: the scan reads where this app's runs are stored.
    assert scan_files(stores, events[0].run_id.encode()).leaks, f"no run in {stores}"
    for token in shop.tokens.values():
        scan = scan_files([session / "logs", *stores], token.encode())
        assert not scan.leaks, scan.leaks


def test_an_mcp_tool_that_needs_approval_waits_for_a_person(shop: Shop, sim: Sim) -> None:
    key = auth(KEYS["shop_b"])
    sim.script(call("place_order", item="teapot"), ANSWER)
    started = shop.http.post(
        "/v1/agents/shop-guarded/runs", json={"input": "A teapot."}, headers=key
    )
    run_id = started.json()["run_id"]

    def waiting() -> dict[str, Any] | None:
        summary: dict[str, Any] = shop.http.get(f"/v1/runs/{run_id}", headers=key).json()
        return summary["approval"] if summary["status"] == "awaiting_approval" else None

    asked = wait_for(waiting, timeout_s=60)
    assert asked["tool"] == "place_order" and asked["arguments"] == {"item": "teapot"}
    assert not any(run_id in order for order in shop.server.orders())  # not before approval
    decided = shop.http.post(
        f"/v1/runs/{run_id}/approvals/{asked['call_id']}", json={"decision": "approve"}, headers=key
    )
    assert decided.status_code == 200, decided.text

    def ended() -> str | None:
        status: str = shop.http.get(f"/v1/runs/{run_id}", headers=key).json()["status"]
        return status if status not in ("running", "awaiting_approval") else None

    assert wait_for(ended, timeout_s=60) == "completed"
    assert len([order for order in shop.server.orders() if run_id in order]) == 1


def gateway_pid() -> int | None:
    """The pid of this app's one gateway replica, once it answers (None meanwhile)."""
    import ray

    names = [
        a["name"]
        for a in ray.util.list_named_actors(all_namespaces=True)
        if a["namespace"] == "serve" and a["name"].startswith(f"SERVE_REPLICA::{APP}#gateway#")
    ]
    if len(names) != 1:
        return None
    try:
        handle = ray.get_actor(names[0], namespace="serve")
        pid: int = ray.get(handle.__ray_call__.remote(lambda _self: os.getpid()), timeout=30)
    except (ray.exceptions.RayError, ValueError):
        return None
    return pid


async def call_agent(shop: Shop, on_run: Callable[[str], None] | None = None) -> CallToolResult:
    """An MCP client's call of the `shop` agent at this app's /mcp; `on_run` hears the run's
    id from the first progress notification."""

    async def progress(value: float, total: float | None, message: str | None) -> None:
        if on_run is not None and message and message.startswith("run "):
            on_run(message.split()[1])

    headers = auth(KEYS["shop_a"])
    timeout = httpx2.Timeout(30, read=120)
    async with httpx2.AsyncClient(headers=headers, timeout=timeout) as http:
        url = f"{shop.http.base_url}".rstrip("/") + MCP_PATH
        async with Client(streamable_http_client(url, http_client=http)) as client:
            arguments = {"input": "Is the kettle in stock?"}
            return await client.call_tool("shop", arguments, progress_callback=progress)


def summary_once_ended(shop: Shop, run_id: str) -> dict[str, Any] | None:
    """The run's summary once it has ended; None while it runs or the gateway is down."""
    try:
        response = shop.http.get(f"/v1/runs/{run_id}", headers=auth(KEYS["shop_a"]))
    except httpx2.TransportError:
        return None
    if response.status_code != 200:
        return None
    found: dict[str, Any] = response.json()
    return found if found["status"] != "running" else None


async def test_a_gateway_killed_mid_mcp_calls_loses_no_run_and_serves_mcp_again(
    shop: Shop, sim: Sim
) -> None:
    """MCP clients call an agent (whose tools are MCP tools) while its gateway replica is
    killed with kill -9: the runs go on on their hosts and complete; the replica comes back
    and serves MCP again."""
    calls = 3
    before = await anyio.to_thread.run_sync(lambda: wait_for(gateway_pid, timeout_s=120))
    # The model holds its answers long enough for the kill to land while they are awaited.
    sim.script(*[{"type": "text", "text": "In stock.", "delay_ms": 6000}] * calls)
    run_ids: list[str] = []
    outcomes: list[CallToolResult | Exception] = []

    async def calling() -> None:
        try:
            outcomes.append(await call_agent(shop, run_ids.append))
        except Exception as exc:  # the call's connection dies with the replica
            outcomes.append(exc)

    async with anyio.create_task_group() as group:
        for _ in range(calls):
            group.start_soon(calling)
        # Every run has started and asked the model: kill the gateway mid-call.
        await anyio.to_thread.run_sync(
            lambda: wait_for(lambda: len(run_ids) == calls and len(sim.requests()) >= calls, 60)
        )
        os.kill(before, signal.SIGKILL)
    assert all(isinstance(o, Exception) or o.is_error for o in outcomes), outcomes

    for run_id in run_ids:  # accepted runs are not lost: each completes on its host
        ended = await anyio.to_thread.run_sync(
            lambda run_id=run_id: wait_for(lambda: summary_once_ended(shop, run_id), 180)
        )
        assert ended["status"] == "completed" and ended["output"] == "In stock.", ended
    after = await anyio.to_thread.run_sync(lambda: wait_for(gateway_pid, timeout_s=180))
    assert after != before, "the gateway answers from the killed pid"

    sim.script(ANSWER)
    again = await call_agent(shop)
    assert not again.is_error, again
    assert again.structured_content is not None
    assert summary_once_ended(shop, again.structured_content["run_id"])["status"] == "completed"  # type: ignore[index]
