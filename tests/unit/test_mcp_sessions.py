"""MCP tools against a real MCP server (tests/mcp_server.py, the SDK's, on 127.0.0.1 in a
subprocess): discovery, one long-lived session per server, reconnecting after the server comes
back, timeouts, retries and the effect ledger through the ToolPool, per-tenant tokens."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx2
import pytest
from mcp.shared.exceptions import MCPError
from mcp_types.jsonrpc import INTERNAL_ERROR

from actors.caches import CachedTools, CacheStore
from actors.credentials import CredentialRef, TenantContext
from actors.mcp_sessions import McpSessions, discover
from actors.mcp_tenant import TenantMcpTools
from actors.tool_pool import ToolPool, ToolRetrySettings
from agents.errors import AgentSpecError, ToolFailed, ToolUnavailable
from agents.messages import ToolCall
from agents.ports import ToolOutcome
from agents.spec import AgentSpec, ToolSpec
from serve_app.config import AppConfig
from tests.helpers import eventually
from tests.mcp_server import McpServerProcess, free_port

TIERS = {"strong": {"chain": [{"provider": "sim", "model": "m"}]}}
RETRY = ToolRetrySettings(attempts=3, initial_backoff_s=0.05, max_backoff_s=0.2)


class MemoryLedger:
    """An in-memory EffectLedger."""

    def __init__(self) -> None:
        self.outcomes: dict[str, ToolOutcome] = {}

    async def recall(self, key: str) -> ToolOutcome | None:
        return self.outcomes.get(key)

    async def record(self, key: str, outcome: ToolOutcome) -> None:
        self.outcomes[key] = outcome


@pytest.fixture
def server(tmp_path: Path) -> Iterator[McpServerProcess]:
    process = McpServerProcess(tmp_path)
    process.start()
    try:
        yield process
    finally:
        process.stop()


def spec_for(url: str, **entry: Any) -> AgentSpec:
    mcp = {"url": url, "name": "shop", "side_effects": ["place_order"], **entry}
    return AgentSpec.from_mapping(
        {"name": "a", "system_prompt": "x", "tiers": TIERS, "tools": [{"mcp": mcp}]}
    )


@pytest.fixture
async def tools(server: McpServerProcess) -> dict[str, ToolSpec]:
    spec = await discover(spec_for(server.url))
    return {tool.name: tool for tool in spec.tools}


@pytest.fixture
async def sessions() -> AsyncIterator[McpSessions]:
    owned = McpSessions(initial_backoff_s=0.05, max_backoff_s=0.2)
    try:
        yield owned
    finally:
        await owned.aclose()


@pytest.fixture
def ledger() -> MemoryLedger:
    return MemoryLedger()


@pytest.fixture
def pool(sessions: McpSessions, ledger: MemoryLedger) -> ToolPool:
    return ToolPool(retry=RETRY, ledger=ledger, mcp=sessions)


def call(name: str, **arguments: Any) -> ToolCall:
    return ToolCall(id="c1", name=name, arguments=arguments)


async def test_discovery_lists_the_servers_tools(tools: dict[str, ToolSpec]) -> None:
    assert sorted(tools) == ["broken", "lookup", "place_order", "slow"]
    assert tools["lookup"].description.startswith("Look up the weather")
    assert tools["lookup"].parameters["required"] == ["city"]
    assert tools["place_order"].side_effects
    assert "idempotency_key" not in str(tools["place_order"].parameters)


async def test_a_server_that_is_down_at_load_is_an_error_naming_it() -> None:
    url = f"http://127.0.0.1:{free_port()}/mcp"
    with pytest.raises(AgentSpecError, match=f"MCP server {url} cannot be reached"):
        await discover(spec_for(url), "agents/shop.yaml")


async def test_a_tool_the_server_lacks_is_an_error_at_load(server: McpServerProcess) -> None:
    with pytest.raises(AgentSpecError, match="no tool"):
        await discover(spec_for(server.url, tools=["lookup", "refund"], side_effects=[]))


async def test_many_calls_share_one_session(
    pool: ToolPool, sessions: McpSessions, tools: dict[str, ToolSpec]
) -> None:
    lookup = tools["lookup"]
    outcomes = await asyncio.gather(
        *(
            pool.call(lookup, call("lookup", city=f"c{i}"), idempotency_key=f"k{i}", timeout_s=10)
            for i in range(20)
        )
    )
    assert [o.output for o in outcomes] == [f"weather in c{i}: sunny" for i in range(20)]
    assert lookup.mcp is not None and sessions.session(lookup.mcp).connects == 1


async def test_a_failing_tool_answers_the_model_and_is_not_retried(
    pool: ToolPool, tools: dict[str, ToolSpec]
) -> None:
    outcome = await pool.call(tools["broken"], call("broken"), idempotency_key="k", timeout_s=10)
    assert not outcome.ok and outcome.attempts == 1
    assert "broken" in (outcome.error or "")


async def test_a_slow_call_times_out_and_the_session_lives_on(
    pool: ToolPool, sessions: McpSessions, tools: dict[str, ToolSpec]
) -> None:
    # The caller's deadline cancels the request inside the owner's task group: no cancel
    # scope is exited in another task, and the next call uses the same session.
    slow = await pool.call(
        tools["slow"], call("slow", seconds=30), idempotency_key="k", timeout_s=0.5
    )
    assert not slow.ok and "timed out after 0.5s" in (slow.error or "")
    lookup = tools["lookup"]
    after = await pool.call(lookup, call("lookup", city="Oslo"), idempotency_key="k2", timeout_s=10)
    assert after.ok and after.output == "weather in Oslo: sunny"
    assert lookup.mcp is not None and sessions.session(lookup.mcp).connects == 1


async def test_a_side_effect_runs_once_per_key_with_our_key(
    pool: ToolPool, server: McpServerProcess, ledger: MemoryLedger, tools: dict[str, ToolSpec]
) -> None:
    order = tools["place_order"]
    first = await pool.call(
        order, call("place_order", item="kettle"), idempotency_key="run1:s1:c1", timeout_s=10
    )
    again = await pool.call(
        order, call("place_order", item="kettle"), idempotency_key="run1:s1:c1", timeout_s=10
    )
    assert first.ok and first.output == "order 1 placed for kettle"
    assert again.replayed and again.output == first.output
    assert server.orders() == ["run1:s1:c1"]  # the server got our key, once
    assert "run1:s1:c1" in ledger.outcomes


async def test_a_server_that_goes_down_is_unavailable_then_reconnected(
    pool: ToolPool, server: McpServerProcess, sessions: McpSessions, tools: dict[str, ToolSpec]
) -> None:
    lookup = tools["lookup"]
    assert (await pool.call(lookup, call("lookup", city="a"), idempotency_key="k", timeout_s=10)).ok
    server.stop()
    down = await pool.call(lookup, call("lookup", city="b"), idempotency_key="k", timeout_s=10)
    assert not down.ok and "unavailable" in (down.error or "")
    assert down.attempts == RETRY.attempts  # transient: retried, then given to the model
    server.start()

    async def answers() -> bool:
        outcome = await pool.call(
            lookup, call("lookup", city="c"), idempotency_key="k", timeout_s=10
        )
        return outcome.ok

    await eventually(answers, timeout_s=20)
    assert lookup.mcp is not None and sessions.session(lookup.mcp).connects == 2


async def test_a_restart_between_calls_is_survived(
    pool: ToolPool, server: McpServerProcess, tools: dict[str, ToolSpec]
) -> None:
    lookup = tools["lookup"]
    assert (await pool.call(lookup, call("lookup", city="a"), idempotency_key="k", timeout_s=10)).ok
    server.restart()
    outcome = await pool.call(lookup, call("lookup", city="b"), idempotency_key="k", timeout_s=10)
    assert outcome.ok and outcome.output == "weather in b: sunny"


async def test_each_tenant_reaches_the_server_with_its_own_token(
    pool: ToolPool,
    server: McpServerProcess,
    tools: dict[str, ToolSpec],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("TENANT_A_SHOP", "token-of-a")
    monkeypatch.setenv("TENANT_B_SHOP", "token-of-b")
    lookup = tools["lookup"]
    for tenant, env in (("a", "TENANT_A_SHOP"), ("b", "TENANT_B_SHOP")):
        context = TenantContext(tenant=tenant, credentials={"mcp:shop": CredentialRef(env=env)})
        port = TenantMcpTools(pool, context)
        outcome = await port.call(
            lookup, call("lookup", city=tenant), idempotency_key="k", timeout_s=10, tenant=tenant
        )
        assert outcome.ok and "token-of" not in outcome.output
    seen = set(server.auth())
    assert {"Bearer token-of-a", "Bearer token-of-b"} <= seen


async def test_a_tenant_without_its_own_token_may_not_use_the_deployments(
    pool: ToolPool, server: McpServerProcess, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SHOP_AUTH", "Bearer deployment")
    spec = await discover(spec_for(server.url, headers_env={"Authorization": "SHOP_AUTH"}))
    lookup = spec.tool("lookup")
    assert lookup is not None
    strict = TenantMcpTools(pool, TenantContext(tenant="s", use_default_credentials=False))
    refused = await strict.call(lookup, call("lookup", city="x"), idempotency_key="k", timeout_s=10)
    assert not refused.ok and "no credentials of this tenant" in (refused.error or "")
    allowed = await TenantMcpTools(pool, TenantContext(tenant="d")).call(
        lookup, call("lookup", city="x"), idempotency_key="k", timeout_s=10
    )
    assert allowed.ok and "Bearer deployment" in server.auth()


async def test_a_stateful_session_is_opened_again_after_the_server_restarts(
    server: McpServerProcess, tools: dict[str, ToolSpec]
) -> None:
    # The handshake-era protocol keeps a session id on the server: after a restart the server
    # answers 'Session terminated', and the owner opens a new session (the retry succeeds).
    legacy = McpSessions(initial_backoff_s=0.05, max_backoff_s=0.2, mode="legacy")
    pool = ToolPool(retry=RETRY, mcp=legacy)
    lookup = tools["lookup"]
    assert lookup.mcp is not None
    try:
        for city in ("a", "b"):
            outcome = await pool.call(
                lookup, call("lookup", city=city), idempotency_key="k", timeout_s=10
            )
            assert outcome.ok
        assert legacy.session(lookup.mcp).connects == 1
        server.restart()
        outcome = await pool.call(
            lookup, call("lookup", city="c"), idempotency_key="k", timeout_s=10
        )
        assert outcome.ok and outcome.output == "weather in c: sunny"
        assert outcome.attempts == 2
        assert legacy.session(lookup.mcp).connects == 2
    finally:
        await legacy.aclose()


def agent_yaml(path: Path, url: str) -> Path:
    path.write_text(
        "name: shopper\nsystem_prompt: Help.\n"
        "tiers: {strong: {chain: [{provider: sim-openai, model: sim-strong}]}}\n"
        f"tools:\n  - mcp: {{url: '{url}', name: shop, side_effects: [place_order]}}\n"
    )
    return path


def test_the_app_config_lists_mcp_tools_when_it_loads_agents(
    server: McpServerProcess, tmp_path: Path
) -> None:
    path = agent_yaml(tmp_path / "shopper.yaml", server.url)
    (spec,) = AppConfig.from_args({"agents": [str(path)]}).load_specs()
    assert spec.mcp_listed
    assert sorted(t.name for t in spec.tools) == ["broken", "lookup", "place_order", "slow"]


def test_the_app_config_refuses_an_agent_whose_server_is_down(tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{free_port()}/mcp"
    path = agent_yaml(tmp_path / "shopper.yaml", url)
    with pytest.raises(AgentSpecError, match=f"shopper.yaml: agent 'shopper': MCP server {url}"):
        AppConfig.from_args({"agents": [str(path)]}).load_specs()


async def test_a_read_only_tool_with_a_ttl_is_answered_from_the_cache(
    pool: ToolPool, server: McpServerProcess, tmp_path: Path
) -> None:
    spec = await discover(spec_for(server.url, cache_ttl_s=60))
    lookup = spec.tool("lookup")
    assert lookup is not None and lookup.cache_ttl_s == 60
    store = CacheStore(str(tmp_path / "cache"))
    try:
        cached = CachedTools(pool, store)
        first, again = [
            await cached.call(
                lookup, call("lookup", city="Oslo"), idempotency_key="k", timeout_s=10
            )
            for _ in range(2)
        ]
    finally:
        store.close()
    assert first.ok and not first.cached and again.cached and again.output == first.output
    assert (server.state / "lookup.log").read_text().splitlines() == ["Oslo"]


async def test_a_cancelled_caller_cancels_only_its_own_request(
    pool: ToolPool, server: McpServerProcess, sessions: McpSessions, tools: dict[str, ToolSpec]
) -> None:
    slow, lookup = tools["slow"], tools["lookup"]
    waiting = asyncio.create_task(
        pool.call(slow, call("slow", seconds=60), idempotency_key="k", timeout_s=120)
    )
    other = asyncio.create_task(
        pool.call(lookup, call("lookup", city="Oslo"), idempotency_key="k", timeout_s=10)
    )
    assert (await other).ok
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    # Another task again, on the same session: the cancel stayed inside the owner's tasks.
    after = await asyncio.create_task(
        pool.call(lookup, call("lookup", city="Rome"), idempotency_key="k", timeout_s=10)
    )
    assert after.ok and after.output == "weather in Rome: sunny"
    assert slow.mcp is not None and sessions.session(slow.mcp).connects == 1


async def test_an_idle_session_is_closed_and_the_next_call_opens_a_new_one(
    server: McpServerProcess, tools: dict[str, ToolSpec], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TENANT_A_SHOP", "token-of-a")
    lookup = tools["lookup"]
    assert lookup.mcp is not None
    own_token = lookup.mcp.model_copy(update={"token_env": "TENANT_A_SHOP"})
    sessions = McpSessions(idle_close_s=0.5)
    try:
        await sessions.call(lookup.mcp, {"city": "a"}, None)
        first = sessions.session(lookup.mcp)
        loop = asyncio.get_running_loop()

        async def idle() -> bool:
            return first.idle_for(loop.time()) >= 0.5

        await eventually(idle)
        # Any later call looks for idle sessions: the first one is closed, in its own task.
        await sessions.call(own_token, {"city": "b"}, None)
        assert len(sessions) == 1 and not first.running
        await sessions.call(lookup.mcp, {"city": "c"}, None)
        again = sessions.session(lookup.mcp)
        assert again is not first and again.connects == 1 and len(sessions) == 2
    finally:
        await sessions.aclose()


async def test_a_sub_agents_mcp_tools_are_listed_with_its_callers(
    server: McpServerProcess,
) -> None:
    sub = spec_for(server.url).model_dump()
    parent = AgentSpec.from_mapping(
        {
            "name": "p",
            "system_prompt": "x",
            "tiers": TIERS,
            "tools": [{"name": "shopper", "description": "shops", "agent": sub}],
        }
    )
    listed = await discover(parent)
    shopper = listed.tool("shopper")
    assert shopper is not None and shopper.agent is not None
    assert sorted(t.name for t in shopper.agent.tools) == [
        "broken",
        "lookup",
        "place_order",
        "slow",
    ]
    assert not listed.mcp_unlisted()


async def test_a_tenants_token_replaces_the_deployments_headers(
    pool: ToolPool, server: McpServerProcess, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SHOP_AUTH", "Bearer deployment")
    monkeypatch.setenv("TENANT_A_SHOP", "token-of-a")
    spec = await discover(spec_for(server.url, headers_env={"authorization": "SHOP_AUTH"}))
    lookup = spec.tool("lookup")
    assert lookup is not None
    before = len(server.auth())
    context = TenantContext(
        tenant="a", credentials={"mcp:shop": CredentialRef(env="TENANT_A_SHOP")}
    )
    outcome = await TenantMcpTools(pool, context).call(
        lookup, call("lookup", city="a"), idempotency_key="k", timeout_s=10
    )
    assert outcome.ok
    assert set(server.auth()[before:]) == {"Bearer token-of-a"}  # alone, never beside another


async def test_a_header_value_that_would_break_the_request_is_refused_unquoted(
    pool: ToolPool, server: McpServerProcess, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SHOP_AUTH", "Bearer s3\ncret")
    spec = await discover(spec_for(server.url))
    lookup = spec.tool("lookup")
    assert lookup is not None and lookup.mcp is not None
    broken_header = lookup.model_copy(
        update={
            "mcp": lookup.mcp.model_copy(update={"headers_env": {"Authorization": "SHOP_AUTH"}})
        }
    )
    outcome = await pool.call(
        broken_header, call("lookup", city="x"), idempotency_key="k", timeout_s=10
    )
    # Not transient (no retry will fix the variable), and the value is nowhere in the error.
    assert not outcome.ok and outcome.attempts == 1
    assert "SHOP_AUTH" in (outcome.error or "") and "s3" not in (outcome.error or "")


async def test_a_request_lost_after_sending_is_retried_only_if_repeating_it_is_safe(
    server: McpServerProcess, sessions: McpSessions, tools: dict[str, ToolSpec]
) -> None:
    lookup = tools["lookup"]
    assert lookup.mcp is not None
    session = sessions.session(lookup.mcp)

    async def dropped(client: Any) -> None:
        raise httpx2.ReadError("connection dropped")  # as if the server went away mid-call

    with pytest.raises(ToolUnavailable):
        await session.request(dropped, retry_safe=True)
    with pytest.raises(ToolFailed, match="may have run") as lost:
        await session.request(dropped, retry_safe=False)
    assert not isinstance(lost.value, ToolUnavailable)


async def test_an_error_answer_fails_its_own_request_and_others_go_on(
    server: McpServerProcess, sessions: McpSessions, tools: dict[str, ToolSpec]
) -> None:
    lookup = tools["lookup"]
    assert lookup.mcp is not None
    session = sessions.session(lookup.mcp)

    async def refused(client: Any) -> None:
        raise MCPError(code=INTERNAL_ERROR, message="Server returned an error response")

    slow = asyncio.create_task(sessions.call(tools["slow"].mcp, {"seconds": 0.5}, None))  # type: ignore[arg-type]

    async def slow_running() -> bool:
        return bool(server.calls("slow"))

    await eventually(slow_running, timeout_s=30)
    with pytest.raises(ToolFailed) as failed:
        await session.request(refused)
    assert not failed.value.retryable
    assert await slow == "done waiting" and session.connects == 1
