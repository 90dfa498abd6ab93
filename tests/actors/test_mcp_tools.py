"""MCP tools in real runs: an agent whose tools come from a real MCP server (tests/mcp_server.py)
runs through a run host (read-only tools) and the tool-pool actor (side-effecting ones), and
survives the server restarting in the middle of a run."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from actors.credentials import CredentialRef, TenantContext
from actors.mcp_sessions import discover
from actors.runs_client import Runs
from actors.runtime import ensure_runtime
from actors.settings import RuntimeSettings
from agents.errors import AgentSpecError
from agents.events import Event, ToolResulted
from agents.spec import AgentSpec
from tests.actors.test_durability import ANSWER, assert_one_clean_stream, collect, support
from tests.actors.test_exactly_once import kill_9_host_of
from tests.fixtures_sim import Sim
from tests.helpers import wait_for
from tests.mcp_server import McpServerProcess

pytestmark = pytest.mark.ray

Settings = Callable[..., RuntimeSettings]


@pytest.fixture
def server(tmp_path: Path) -> Iterator[McpServerProcess]:
    (state := tmp_path / "mcp").mkdir()
    process = McpServerProcess(state)
    process.start()
    try:
        yield process
    finally:
        process.stop()


async def shop_agent(url: str) -> AgentSpec:
    data = support().model_dump()
    data["tools"] = [{"mcp": {"url": url, "name": "shop", "side_effects": ["place_order"]}}]
    return await discover(AgentSpec.model_validate(data))


def call(name: str, **arguments: Any) -> dict[str, Any]:
    return {"type": "tool_call", "name": name, "arguments": arguments}


def results(events: list[Event]) -> list[ToolResulted]:
    return [e for e in events if isinstance(e, ToolResulted)]


async def test_a_run_calls_mcp_tools_and_survives_a_server_restart(
    settings_for: Settings, sim: Sim, server: McpServerProcess
) -> None:
    # Retries that outlast a restart of the server (a second or two on a busy machine): a
    # call caught by it is retried until the server answers again, within its timeout.
    retry = {"attempts": 10, "initial_backoff_s": 0.2, "max_backoff_s": 1.0}
    runs = Runs(settings := settings_for(tool_retry=retry), await ensure_runtime(settings))
    spec = await shop_agent(server.url)
    sim.script(
        call("lookup", city="Oslo"),
        call("broken"),
        call("lookup", city="Rome"),
        call("place_order", item="kettle"),
        ANSWER,
    )
    run_id = await runs.start(spec, "Weather, then order a kettle.")
    reader = asyncio.create_task(collect(runs, run_id))
    # The server restarts once the run has made its first call: the later calls find a
    # session the server no longer has (or no server yet) and are retried on a new one.
    await asyncio.to_thread(wait_for, lambda: (server.state / "lookup.log").exists(), 60)
    await asyncio.to_thread(server.restart)
    events = await reader

    assert_one_clean_stream(events)
    assert events[-1].kind == "run.completed", events[-1]
    found = results(events)
    assert [(r.tool, r.ok) for r in found] == [
        ("lookup", True),
        ("broken", False),
        ("lookup", True),
        ("place_order", True),
    ], [(r.tool, r.error) for r in found]
    assert found[0].output == "weather in Oslo: sunny"
    assert found[2].output == "weather in Rome: sunny"
    assert found[3].output == "order 1 placed for kettle"
    (key,) = server.orders()  # once, with the run's idempotency key
    assert run_id in key


async def test_each_tenants_runs_reach_the_server_with_its_own_token(
    settings_for: Settings, sim: Sim, server: McpServerProcess, tmp_path: Path
) -> None:
    runs = Runs(settings := settings_for(), await ensure_runtime(settings))
    spec = await shop_agent(server.url)
    listed = len(server.auth())  # discovery's requests: the deployment's, with no token
    for tenant in ("acme", "globex"):
        # A file, not an env var: the run hosts are processes of the session's Ray.
        (token := tmp_path / f"{tenant}.token").write_text(f"token-of-{tenant}\n")
        context = TenantContext(
            tenant=tenant, credentials={"mcp:shop": CredentialRef(file=str(token))}
        )
        sim.script(call("lookup", city=tenant), ANSWER)
        run_id = await runs.start(spec, "Weather?", context=context)
        events = await collect(runs, run_id)
        assert events[-1].kind == "run.completed", events[-1]
        (found,) = results(events)
        assert found.ok and found.output == f"weather in {tenant}: sunny"
        # Never in what the run records.
        assert not any("token-of" in event.model_dump_json() for event in events)
    by_runs = server.auth()[listed:]
    assert set(by_runs) == {"Bearer token-of-acme", "Bearer token-of-globex"}


async def test_a_run_whose_host_is_killed_mid_call_resumes_on_a_new_session(
    settings_for: Settings, namespace: str, sim: Sim, server: McpServerProcess
) -> None:
    runs = Runs(settings := settings_for(), await ensure_runtime(settings))
    spec = await shop_agent(server.url)
    sim.script(call("slow", seconds=2), ANSWER)
    run_id = await runs.start(spec, "Wait, then answer.")
    reader = asyncio.create_task(collect(runs, run_id))
    slow_log = server.state / "slow.log"
    await asyncio.to_thread(wait_for, slow_log.exists, 60)
    await kill_9_host_of(run_id, namespace)  # the session dies with its process
    events = await reader

    assert events[-1].kind == "run.completed", events[-1]
    (found,) = [r for r in results(events) if r.tool == "slow"][-1:]
    assert found.ok and found.output == "done waiting"
    # Read-only, so asked again by the resumed run's host, over a session of its own.
    assert len(slow_log.read_text().splitlines()) == 2


async def test_a_spec_whose_servers_were_never_listed_does_not_start(
    settings_for: Settings,
) -> None:
    data = support().model_dump()
    data["tools"] = [{"mcp": {"url": "http://127.0.0.1:9/mcp", "name": "shop"}}]
    unlisted = AgentSpec.model_validate(data)  # not through discover: its tools are missing
    with pytest.raises(AgentSpecError, match="not listed"):
        await Runs(settings_for()).start(unlisted, "Weather?")
