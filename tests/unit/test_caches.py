"""The caches (actors/caches.py): tool results and model responses per tenant, on a real
diskcache in a temporary directory. No Ray."""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from actors.caches import CachedModel, CachedTools, CacheStore, cache_key
from agents.messages import Message, ModelResponse, TextDelta, ToolCall, ToolSchema, Usage
from agents.ports import Discard, ModelResult, ToolOutcome
from agents.spec import ModelRef, TierSpec, ToolSpec

# --- fakes ----------------------------------------------------------------------------------


class CountingTools:
    """A ToolPort that answers from the call's arguments and counts its calls."""

    def __init__(self, ok: bool = True) -> None:
        self.calls: list[tuple[str, str]] = []  # (tenant, tool)
        self.ok = ok

    async def call(
        self,
        tool: ToolSpec,
        call: ToolCall,
        *,
        idempotency_key: str,
        timeout_s: float,
        tenant: str = "default",
        user: str | None = None,
    ) -> ToolOutcome:
        self.calls.append((tenant, tool.name))
        n = len(self.calls)
        if not self.ok:
            return ToolOutcome(ok=False, output="", error=f"failure {n}")
        return ToolOutcome(ok=True, output=f"{tool.name}({call.arguments}) #{n}", cost_usd=0.01)


class CountingModel:
    """A ModelPort streaming a fixed answer in two deltas; counts its calls."""

    def __init__(self, text: str = "Hello there", fail_mid_stream: bool = False) -> None:
        self.text = text
        self.calls = 0
        self.fail_mid_stream = fail_mid_stream

    async def stream(
        self,
        tier: TierSpec,
        messages: tuple[Message, ...],
        tools: tuple[ToolSchema, ...],
        *,
        timeout_s: float,
    ) -> AsyncIterator[TextDelta | Discard | ModelResult]:
        self.calls += 1
        half = len(self.text) // 2
        yield TextDelta(text="lost")
        yield Discard(reason="a fallback", provider="first")
        yield TextDelta(text=self.text[:half])
        if self.fail_mid_stream:
            raise RuntimeError("the stream broke")
        yield TextDelta(text=self.text[half:])
        usage = Usage(input_tokens=120, cached_input_tokens=30, output_tokens=9)
        response = ModelResponse(
            message=Message(role="assistant", content=self.text), usage=usage, model="sim-strong"
        )
        yield ModelResult(
            response=response,
            provider="sim-openai",
            cost_usd=0.0042,
            latency_ms=210.0,
            tried=("first/sim-strong",),
        )


class SpyStore(CacheStore):
    """A real store that counts reads and writes."""

    def __init__(self, directory: str) -> None:
        super().__init__(directory)
        self.reads = 0
        self.writes = 0

    def get(self, key: str) -> Any | None:
        self.reads += 1
        return super().get(key)

    def set(self, key: str, value: Any, ttl_s: float) -> None:
        self.writes += 1
        super().set(key, value, ttl_s)


class BrokenDisk:
    """Stands in for a diskcache.Cache on a failing disk."""

    def get(self, *args: Any, **kwargs: Any) -> Any:
        raise sqlite3.OperationalError("disk I/O error")

    def set(self, *args: Any, **kwargs: Any) -> Any:
        raise OSError(28, "No space left on device")

    def close(self) -> None:
        pass


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SpyStore]:
    spy = SpyStore(str(tmp_path / "cache"))
    yield spy
    spy.close()


def lookup_tool(ttl_s: float | None = 60.0) -> ToolSpec:
    return ToolSpec(
        name="lookup_order",
        description="Look up an order.",
        function="agents.examples.support_tools:lookup_order",
        cache_ttl_s=ttl_s,
    )


def order(order_id: int = 1001) -> ToolCall:
    return ToolCall(id="call-1", name="lookup_order", arguments={"order_id": order_id})


async def call(
    tools: CachedTools, tool: ToolSpec, tool_call: ToolCall, tenant: str = "acme"
) -> ToolOutcome:
    return await tools.call(tool, tool_call, idempotency_key="r:1:c", timeout_s=5, tenant=tenant)


# --- keys -----------------------------------------------------------------------------------


def test_keys_are_sha256_of_canonical_parts_and_always_per_tenant() -> None:
    key = cache_key("tool", "acme", "t", {"b": 1, "a": [1, 2]})
    assert len(key) == 64 and int(key, 16) >= 0
    assert key == cache_key("tool", "acme", "t", {"a": [1, 2], "b": 1})  # key order is not data
    assert key != cache_key("tool", "globex", "t", {"a": [1, 2], "b": 1})
    assert key != cache_key("model", "acme", "t", {"a": [1, 2], "b": 1})


# --- tool results ---------------------------------------------------------------------------


async def test_a_repeated_call_is_answered_from_the_cache(store: SpyStore) -> None:
    inner = CountingTools()
    tools = CachedTools(inner, store)
    first = await call(tools, lookup_tool(), order())
    second = await call(tools, lookup_tool(), order())
    assert len(inner.calls) == 1
    assert first.cached is False and first.cost_usd == 0.01
    assert second.cached is True
    assert second.output == first.output and second.ok
    assert second.cost_usd == 0.0  # nothing was spent the second time


async def test_other_arguments_or_another_tool_are_misses(store: SpyStore) -> None:
    inner = CountingTools()
    tools = CachedTools(inner, store)
    await call(tools, lookup_tool(), order(1001))
    await call(tools, lookup_tool(), order(1002))
    other = lookup_tool().model_copy(update={"function": "agents.examples.support_tools:other"})
    await call(tools, other, order(1001))
    assert len(inner.calls) == 3


async def test_one_tenants_entry_is_never_served_to_another(store: SpyStore) -> None:
    inner = CountingTools()
    tools = CachedTools(inner, store)
    a = await call(tools, lookup_tool(), order(), tenant="acme")
    b = await call(tools, lookup_tool(), order(), tenant="globex")
    assert inner.calls == [("acme", "lookup_order"), ("globex", "lookup_order")]
    assert b.cached is False and b.output != a.output
    again = await call(tools, lookup_tool(), order(), tenant="globex")
    assert again.cached is True and again.output == b.output


async def test_one_users_entry_is_never_served_to_another_user(store: SpyStore) -> None:
    # A tool may answer each end user with their own data: the cache is per user too.
    inner = CountingTools()
    tools = CachedTools(inner, store)

    async def as_user(user: str | None) -> ToolOutcome:
        return await tools.call(
            lookup_tool(), order(), idempotency_key="r:1:c", timeout_s=5, tenant="acme", user=user
        )

    alice, bob, nobody = await as_user("alice"), await as_user("bob"), await as_user(None)
    assert len(inner.calls) == 3 and not (alice.cached or bob.cached or nobody.cached)
    assert (await as_user("bob")).output == bob.output and len(inner.calls) == 3
    # Runs without a user keep the key they always had.
    assert (await call(tools, lookup_tool(), order())).cached is True


async def test_side_effecting_tools_never_touch_the_cache(store: SpyStore) -> None:
    inner = CountingTools()
    tools = CachedTools(inner, store)
    refund = ToolSpec(
        name="issue_refund",
        description="Refund.",
        function="agents.examples.support_tools:issue_refund",
        side_effects=True,
    )
    # The spec refuses a TTL on a side-effecting tool; the cache checks again regardless.
    forced = ToolSpec.model_construct(**{**refund.__dict__, "cache_ttl_s": 60.0})
    for tool in (refund, forced, refund, forced):
        outcome = await call(tools, tool, ToolCall(id="c", name="issue_refund"))
        assert outcome.cached is False
    assert len(inner.calls) == 4
    assert store.reads == 0 and store.writes == 0


async def test_tools_without_a_ttl_are_not_cached(store: SpyStore) -> None:
    inner = CountingTools()
    tools = CachedTools(inner, store)
    await call(tools, lookup_tool(ttl_s=None), order())
    await call(tools, lookup_tool(ttl_s=None), order())
    assert len(inner.calls) == 2
    assert store.reads == 0 and store.writes == 0


async def test_an_entry_expires_after_its_ttl(store: SpyStore) -> None:
    inner = CountingTools()
    tools = CachedTools(inner, store)
    await call(tools, lookup_tool(ttl_s=0.05), order())
    await asyncio.sleep(0.2)
    again = await call(tools, lookup_tool(ttl_s=0.05), order())
    assert again.cached is False
    assert len(inner.calls) == 2


async def test_failed_outcomes_are_not_cached(store: SpyStore) -> None:
    inner = CountingTools(ok=False)
    tools = CachedTools(inner, store)
    first = await call(tools, lookup_tool(), order())
    second = await call(tools, lookup_tool(), order())
    assert (first.error, second.error) == ("failure 1", "failure 2")
    assert len(inner.calls) == 2 and store.writes == 0


# --- model responses ------------------------------------------------------------------------

TIER = TierSpec(chain=(ModelRef(provider="sim-openai", model="sim-strong"),))
MESSAGES = (
    Message(role="system", content="Be brief."),
    Message(role="user", content="Where is order 1001?"),
)
TOOLS = (ToolSchema(name="lookup_order", description="Look up.", parameters={"type": "object"}),)


async def turn(
    model: CachedModel,
    tier: TierSpec = TIER,
    messages: tuple[Message, ...] = MESSAGES,
    tools: tuple[ToolSchema, ...] = TOOLS,
) -> list[TextDelta | Discard | ModelResult]:
    return [item async for item in model.stream(tier, messages, tools, timeout_s=5)]


def result_of(items: list[TextDelta | Discard | ModelResult]) -> ModelResult:
    last = items[-1]
    assert isinstance(last, ModelResult)
    return last


async def test_a_repeated_deterministic_call_is_answered_from_the_cache(
    store: SpyStore,
) -> None:
    inner = CountingModel("Order 1001 is in transit.")
    model = CachedModel(inner, store, tenant="acme", ttl_s=60)
    miss = await turn(model)
    hit = await turn(model)
    assert inner.calls == 1
    # A miss passes the inner stream through unchanged, discard included.
    assert [type(i).__name__ for i in miss] == [
        "TextDelta",
        "Discard",
        "TextDelta",
        "TextDelta",
        "ModelResult",
    ]
    first = result_of(miss)
    assert first.cached is False and first.cost_usd == 0.0042
    # A hit: the whole text as one delta, then the result, free and marked cached.
    assert hit[:-1] == [TextDelta(text="Order 1001 is in transit.")]
    cached = result_of(hit)
    assert cached.cached is True
    assert cached.cost_usd == 0.0
    assert cached.response.usage == Usage()
    assert cached.tried == ()
    assert cached.provider == "sim-openai"
    assert cached.response.message == first.response.message
    assert cached.response.model == "sim-strong"
    assert cached.latency_ms >= 0 and cached.latency_ms != first.latency_ms  # measured anew


async def test_a_cached_tool_call_reply_has_no_text_delta(store: SpyStore) -> None:
    inner = CountingModel("")
    model = CachedModel(inner, store, tenant="acme", ttl_s=60)
    await turn(model)
    hit = await turn(model)
    assert len(hit) == 1 and result_of(hit).cached


async def test_calls_above_temperature_zero_are_never_cached(store: SpyStore) -> None:
    inner = CountingModel()
    model = CachedModel(inner, store, tenant="acme", ttl_s=60)
    warm = TIER.model_copy(update={"temperature": 0.7})
    await turn(model, tier=warm)
    again = await turn(model, tier=warm)
    assert inner.calls == 2 and result_of(again).cached is False
    assert store.reads == 0 and store.writes == 0


async def test_another_tenant_misses(store: SpyStore) -> None:
    inner = CountingModel()
    await turn(CachedModel(inner, store, tenant="acme", ttl_s=60))
    other = await turn(CachedModel(inner, store, tenant="globex", ttl_s=60))
    assert inner.calls == 2 and result_of(other).cached is False


@pytest.mark.parametrize(
    "change",
    [
        {"messages": (*MESSAGES, Message(role="user", content="And order 1002?"))},
        {"messages": (MESSAGES[0], Message(role="user", content="Where is order 1002?"))},
        {"tools": ()},
        {"tools": (TOOLS[0].model_copy(update={"description": "Look up an order."}),)},
        {"tier": TIER.model_copy(update={"max_output_tokens": 256})},
        {"tier": TierSpec(chain=(ModelRef(provider="sim-anthropic", model="sim-strong"),))},
    ],
    ids=["more-messages", "other-message", "no-tools", "other-tool", "max-tokens", "chain"],
)
async def test_a_different_request_misses(store: SpyStore, change: dict[str, Any]) -> None:
    inner = CountingModel()
    model = CachedModel(inner, store, tenant="acme", ttl_s=60)
    await turn(model)
    other = await turn(model, **change)
    assert inner.calls == 2 and result_of(other).cached is False


async def test_a_stream_that_fails_stores_nothing(store: SpyStore) -> None:
    inner = CountingModel(fail_mid_stream=True)
    model = CachedModel(inner, store, tenant="acme", ttl_s=60)
    with pytest.raises(RuntimeError, match="the stream broke"):
        await turn(model)
    assert store.writes == 0


async def test_a_model_entry_expires_after_its_ttl(store: SpyStore) -> None:
    inner = CountingModel()
    model = CachedModel(inner, store, tenant="acme", ttl_s=0.05)
    await turn(model)
    await asyncio.sleep(0.2)
    assert result_of(await turn(model)).cached is False
    assert inner.calls == 2


# --- a failing disk is a miss ---------------------------------------------------------------


async def test_a_disk_error_is_a_miss_and_a_warning(
    store: SpyStore, caplog: pytest.LogCaptureFixture
) -> None:
    store._cache = BrokenDisk()  # type: ignore[assignment]
    tools = CachedTools(inner := CountingTools(), store)
    model = CachedModel(counting := CountingModel(), store, tenant="acme", ttl_s=60)
    with caplog.at_level(logging.WARNING, logger="rayfleet"):
        for _ in range(2):
            assert (await call(tools, lookup_tool(), order())).ok
            assert result_of(await turn(model)).cached is False
    assert len(inner.calls) == 2 and counting.calls == 2
    warnings = [r.getMessage() for r in caplog.records if r.name == "rayfleet"]
    # Throttled: one line for a run of failures, naming the error, not the data.
    assert len(warnings) == 1
    assert "OperationalError: disk I/O error" in warnings[0]
    assert "1001" not in warnings[0] and "acme" not in warnings[0]


async def test_a_cache_directory_that_cannot_be_opened_is_a_miss(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("x")
    broken = CacheStore(str(blocker / "cache"))
    inner = CountingTools()
    tools = CachedTools(inner, broken)
    with caplog.at_level(logging.WARNING, logger="rayfleet"):
        first = await call(tools, lookup_tool(), order())
        second = await call(tools, lookup_tool(), order())
    assert first.ok and second.ok and not second.cached
    assert len(inner.calls) == 2
    assert any("cache open failed" in r.getMessage() for r in caplog.records)


async def test_a_garbled_entry_is_a_miss(store: SpyStore) -> None:
    inner = CountingTools()
    tools = CachedTools(inner, store)
    tool = lookup_tool()
    key = cache_key("tool", "acme", tool.name, tool.function, order().arguments)
    store.set(key, '{"not": "an outcome"}', 60)
    outcome = await call(tools, tool, order())
    assert outcome.cached is False and len(inner.calls) == 1


async def test_processes_sharing_a_directory_share_entries(tmp_path: Path) -> None:
    # Two stores on one directory stand for two run-host processes on one node.
    one, two = CacheStore(str(tmp_path / "c")), CacheStore(str(tmp_path / "c"))
    inner = CountingTools()
    await call(CachedTools(inner, one), lookup_tool(), order())
    hit = await call(CachedTools(inner, two), lookup_tool(), order())
    assert hit.cached is True and len(inner.calls) == 1
    one.close()
    two.close()
