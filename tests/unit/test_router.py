"""The model router against the real simulator with the real clients: fallback, Retry-After,
backoff, breakers, the discard contract, deadlines. Request counts are read at the simulator,
so a retry anywhere else (stacked retries) would show."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx2
import pytest
from pydantic import ValidationError

from actors.breaker import Breakers
from actors.router import ModelRouter, RouterSettings
from actors.settings import ProviderConfig
from agents.errors import AllProvidersFailed, ConfigError, ProviderRejected
from agents.messages import Message, TextDelta, ToolSchema
from agents.ports import Discard, ModelResult
from agents.pricing import DEFAULT_PRICES, PriceTable
from agents.spec import ModelRef, TierSpec
from tests.fixtures_sim import Sim

A, B, C = "model-a", "model-b", "model-c"
TIER = TierSpec(
    chain=(ModelRef(provider="oa", model=A), ModelRef(provider="an", model=B)),
)
MESSAGES = (Message(role="system", content="You help."), Message(role="user", content="hello"))
LOOKUP = ToolSchema(
    name="lookup_order",
    description="Look up an order's status by order id",
    parameters={
        "type": "object",
        "properties": {"order_id": {"type": "integer"}},
        "required": ["order_id"],
    },
)


class Clock:
    """Real time plus whatever a test skips ahead (for breaker timeouts)."""

    def __init__(self) -> None:
        self.skipped = 0.0

    def __call__(self) -> float:
        return time.monotonic() + self.skipped


class RecordingSleep:
    """Records the waits the router asks for and returns at once."""

    def __init__(self) -> None:
        self.waits: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.waits.append(seconds)
        await asyncio.sleep(0)


@pytest.fixture
async def http() -> AsyncIterator[httpx2.AsyncClient]:
    async with httpx2.AsyncClient() as client:
        yield client


def _router(
    sim: Sim,
    http: httpx2.AsyncClient,
    sleep: RecordingSleep | None = None,
    clock: Clock | None = None,
    **settings: Any,
) -> ModelRouter:
    providers = {
        "oa": ProviderConfig(kind="openai", base_url=sim.openai_base_url),
        "an": ProviderConfig(kind="anthropic", base_url=sim.base_url),
        "oa2": ProviderConfig(kind="openai", base_url=sim.openai_base_url),
    }
    return ModelRouter(
        providers,
        PriceTable(dict(DEFAULT_PRICES)),
        http,
        clock or Clock(),
        settings=RouterSettings(**settings),
        sleep=sleep or RecordingSleep(),
    )


async def _call(
    router: ModelRouter,
    tier: TierSpec = TIER,
    timeout_s: float = 10.0,
    tools: tuple[ToolSchema, ...] = (),
) -> list[TextDelta | Discard | ModelResult]:
    return [item async for item in router.stream(tier, MESSAGES, tools, timeout_s=timeout_s)]


def _result(items: list[TextDelta | Discard | ModelResult]) -> ModelResult:
    last = items[-1]
    assert isinstance(last, ModelResult)
    assert sum(isinstance(i, ModelResult) for i in items) == 1
    return last


def _models(sim: Sim) -> list[str]:
    return [str(r["model"]) for r in sim.requests()]


async def test_healthy_first_provider_answers(sim: Sim, http: httpx2.AsyncClient) -> None:
    sim.script({"type": "text", "text": "from a", "model": A})
    result = _result(await _call(_router(sim, http)))
    assert (result.provider, result.response.model, result.tried) == ("oa", A, ())
    assert result.response.message.content == "from a"
    assert _models(sim) == [A]


async def test_429_retry_after_beyond_cap_falls_back_at_once(
    sim: Sim, http: httpx2.AsyncClient
) -> None:
    sim.script(
        {"type": "status", "status": 429, "retry_after_s": 30, "model": A},
        {"type": "text", "text": "from b", "model": B},
    )
    sleep = RecordingSleep()
    router = _router(sim, http, sleep)
    result = _result(await _call(router))
    assert (result.provider, result.tried) == ("an", ("oa/model-a",))
    assert result.response.message.content == "from b"
    assert sleep.waits == []
    assert _models(sim) == [A, B]
    # The breaker remembers the provider is away until its Retry-After: the next call goes
    # straight to the fallback.
    assert router.breakers["oa"].state == "open"
    assert router.breakers["oa"].open_for_s() == pytest.approx(30, abs=1)
    sim.script({"type": "text", "text": "b again", "model": B})
    result = _result(await _call(router))
    assert (result.provider, result.tried) == ("an", ())
    assert _models(sim) == [A, B, B]


async def test_429_retry_after_under_cap_waits_then_retries_the_same_provider(
    sim: Sim, http: httpx2.AsyncClient
) -> None:
    sim.script(
        {"type": "status", "status": 429, "retry_after_s": 1.5, "model": A},
        {"type": "text", "text": "a, second try", "model": A},
    )
    sleep = RecordingSleep()
    result = _result(await _call(_router(sim, http, sleep)))
    assert sleep.waits == [1.5]
    assert (result.provider, result.tried) == ("oa", ("oa/model-a",))
    assert result.response.message.content == "a, second try"
    assert _models(sim) == [A, A]


async def test_retry_after_is_waited_once_then_fallback(sim: Sim, http: httpx2.AsyncClient) -> None:
    sim.script(
        {"type": "status", "status": 429, "retry_after_s": 1, "model": A},
        {"type": "status", "status": 429, "retry_after_s": 1, "model": A},
        {"type": "text", "text": "from b", "model": B},
    )
    sleep = RecordingSleep()
    result = _result(await _call(_router(sim, http, sleep, attempts_per_provider=3)))
    assert sleep.waits == [1.0]
    assert result.tried == ("oa/model-a", "oa/model-a")
    assert _models(sim) == [A, A, B]


async def test_a_wait_that_does_not_fit_the_deadline_falls_back_now(
    sim: Sim, http: httpx2.AsyncClient
) -> None:
    sim.script(
        {"type": "status", "status": 429, "retry_after_s": 2, "model": A},
        {"type": "text", "text": "from b", "model": B},
    )
    sleep = RecordingSleep()
    result = _result(await _call(_router(sim, http, sleep), timeout_s=1.0))
    assert sleep.waits == []
    assert result.provider == "an"


async def test_5xx_backs_off_with_jitter_then_falls_back(
    sim: Sim, http: httpx2.AsyncClient
) -> None:
    sim.script(
        {"type": "status", "status": 503, "model": A},
        {"type": "status", "status": 500, "model": A},
        {"type": "text", "text": "from b", "model": B},
    )
    sleep = RecordingSleep()
    router = _router(sim, http, sleep, backoff_initial_s=0.2, backoff_max_s=5)
    result = _result(await _call(router))
    assert len(sleep.waits) == 1 and 0.2 <= sleep.waits[0] <= 0.4  # initial + up to initial
    assert result.tried == ("oa/model-a", "oa/model-a")
    assert _models(sim) == [A, A, B]


@pytest.mark.parametrize("status", [400, 401, 404, 422])
async def test_other_4xx_fails_at_once_without_retry_or_fallback(
    sim: Sim, http: httpx2.AsyncClient, status: int
) -> None:
    sim.script({"type": "status", "status": status, "message": "bad field", "model": A})
    sleep = RecordingSleep()
    router = _router(sim, http, sleep)
    with pytest.raises(ProviderRejected, match=f"HTTP {status}") as caught:
        await _call(router)
    assert caught.value.provider == "oa"
    assert _models(sim) == [A]
    assert sleep.waits == []
    assert router.breakers["oa"].state == "closed"


async def test_no_stacked_retries_and_the_attempts_in_the_error(
    sim: Sim, http: httpx2.AsyncClient
) -> None:
    sim.script(
        {"type": "status", "status": 502, "model": A},
        {"type": "status", "status": 503, "model": A},
        {"type": "status", "status": 500, "model": B},
        {"type": "status", "status": 529, "model": B},
    )
    with pytest.raises(AllProvidersFailed) as caught:
        await _call(_router(sim, http))
    # Two attempts per provider, one request each: exactly four requests, no more.
    assert _models(sim) == [A, A, B, B]
    message = str(caught.value)
    assert message.count("oa/model-a: ") == 2 and message.count("an/model-b: ") == 2
    assert "4 failed attempts" in message and "HTTP 529" in message
    assert caught.value.provider == "an"


async def test_total_attempts_per_call_are_bounded(sim: Sim, http: httpx2.AsyncClient) -> None:
    tier = TierSpec(chain=(*TIER.chain, ModelRef(provider="oa2", model=C)))
    sim.script(
        {"type": "status", "status": 500, "model": A},
        {"type": "status", "status": 500, "model": A},
        {"type": "status", "status": 500, "model": B},
    )
    with pytest.raises(AllProvidersFailed, match="3 attempts per call are used up"):
        await _call(_router(sim, http, max_attempts_per_call=3), tier)
    assert _models(sim) == [A, A, B]


async def test_breaker_opens_after_n_failures_then_no_request_reaches_the_provider(
    sim: Sim, http: httpx2.AsyncClient
) -> None:
    clock = Clock()
    router = _router(
        sim, http, clock=clock, attempts_per_provider=1, breaker_failures=3, breaker_open_s=30
    )
    sim.script(*[{"type": "status", "status": 500, "model": A}] * 3)
    for _ in range(3):
        assert _result(await _call(router)).provider == "an"
    assert router.breakers["oa"].state == "open"
    for _ in range(5):
        result = _result(await _call(router))
        assert (result.provider, result.tried) == ("an", ())
    assert _models(sim).count(A) == 3
    # After open_s one probe goes through; it succeeds and the breaker closes.
    clock.skipped += 30
    sim.script({"type": "text", "text": "a is back", "model": A})
    assert _result(await _call(router)).provider == "oa"
    assert router.breakers["oa"].state == "closed"
    assert _models(sim).count(A) == 4


async def test_half_open_admits_exactly_one_probe_under_concurrency(
    sim: Sim, http: httpx2.AsyncClient
) -> None:
    clock = Clock()
    router = _router(sim, http, clock=clock, breaker_failures=1, attempts_per_provider=1)
    sim.script({"type": "status", "status": 503, "model": A})
    assert _result(await _call(router)).provider == "an"
    clock.skipped += 30
    sim.script({"type": "text", "text": "slow probe", "model": A, "delay_ms": 300})
    results = [_result(r) for r in await asyncio.gather(*(_call(router) for _ in range(6)))]
    assert sorted(r.provider for r in results) == ["an"] * 5 + ["oa"]
    assert _models(sim).count(A) == 2  # the failure that opened it, and the one probe
    assert router.breakers["oa"].state == "closed"


async def test_a_failed_probe_reopens_the_breaker(sim: Sim, http: httpx2.AsyncClient) -> None:
    clock = Clock()
    router = _router(sim, http, clock=clock, breaker_failures=1, attempts_per_provider=2)
    sim.script(
        {"type": "status", "status": 503, "model": A},
        {"type": "status", "status": 503, "model": A},
    )
    assert _result(await _call(router)).tried == ("oa/model-a",)  # open after one: no retry
    clock.skipped += 30
    assert _result(await _call(router)).tried == ("oa/model-a",)
    assert router.breakers["oa"].state == "open"
    assert _models(sim).count(A) == 2


async def test_every_provider_skipped_by_open_breakers_says_so(
    sim: Sim, http: httpx2.AsyncClient
) -> None:
    breakers = Breakers(failure_threshold=1)
    for name in ("oa", "an"):
        permit = breakers[name].acquire()
        assert permit is not None
        breakers[name].failed(permit)
    router = ModelRouter(
        {
            "oa": ProviderConfig(kind="openai", base_url=sim.openai_base_url),
            "an": ProviderConfig(kind="anthropic", base_url=sim.base_url),
        },
        PriceTable(dict(DEFAULT_PRICES)),
        http,
        breakers=breakers,
    )
    with pytest.raises(AllProvidersFailed, match="skipped: circuit breaker open for oa") as caught:
        await _call(router)
    assert "an (30.0 s left)" in str(caught.value)
    assert sim.requests() == []


async def test_mid_stream_drop_discards_then_the_fallback_answers_in_full(
    sim: Sim, http: httpx2.AsyncClient
) -> None:
    sim.script(
        {"type": "drop", "after_chunks": 3, "model": A},
        {"type": "text", "text": "the fallback's whole answer", "model": B},
    )
    items = await _call(_router(sim, http, attempts_per_provider=1))
    kinds = [type(i).__name__ for i in items]
    cut = kinds.index("Discard")
    assert cut > 0 and set(kinds[:cut]) == {"TextDelta"}  # a's text streamed, then void
    discard = items[cut]
    assert isinstance(discard, Discard) and discard.provider == "oa"
    assert "ended before" in discard.reason or "connection" in discard.reason
    after = "".join(i.text for i in items[cut + 1 :] if isinstance(i, TextDelta))
    result = _result(items)
    assert after == result.response.message.content == "the fallback's whole answer"
    assert (result.provider, result.tried) == ("an", ("oa/model-a",))
    assert _models(sim) == [A, B]


async def test_in_band_stream_error_discards_then_falls_back(
    sim: Sim, http: httpx2.AsyncClient
) -> None:
    sim.script(
        {"type": "stream_error", "after_chunks": 4, "error_type": "overloaded_error", "model": A},
        {"type": "text", "text": "clean answer", "model": B},
    )
    items = await _call(_router(sim, http, attempts_per_provider=1))
    discards = [i for i in items if isinstance(i, Discard)]
    assert len(discards) == 1 and "overloaded_error" in discards[0].reason
    assert isinstance(items[0], TextDelta)
    result = _result(items)
    assert result.response.message.content == "clean answer"
    assert result.provider == "an"


async def test_a_retry_on_the_same_provider_also_discards_and_redoes(
    sim: Sim, http: httpx2.AsyncClient
) -> None:
    sim.script(
        {"type": "drop", "after_chunks": 3, "model": A},
        {"type": "text", "text": "second attempt", "model": A},
    )
    items = await _call(_router(sim, http))
    cut = next(n for n, i in enumerate(items) if isinstance(i, Discard))
    after = "".join(i.text for i in items[cut + 1 :] if isinstance(i, TextDelta))
    assert after == _result(items).response.message.content == "second attempt"
    assert _result(items).provider == "oa"


async def test_a_half_streamed_tool_call_is_redone_from_scratch(
    sim: Sim, http: httpx2.AsyncClient
) -> None:
    """The policy answers 'order 1001' with a lookup_order call; a's stream is cut inside
    the call's arguments, b's call arrives whole and is the only one in the result."""
    sim.script({"type": "drop", "after_chunks": 3, "model": A})
    messages = (Message(role="user", content="Where is my order 1001?"),)
    router = _router(sim, http, attempts_per_provider=1)
    items = [i async for i in router.stream(TIER, messages, (LOOKUP,), timeout_s=10)]
    result = _result(items)
    assert result.provider == "an"
    (call,) = result.response.message.tool_calls
    assert (call.name, call.arguments) == ("lookup_order", {"order_id": 1001})
    assert _models(sim) == [A, B]


async def test_a_hanging_provider_falls_back_within_the_deadline(
    sim: Sim, http: httpx2.AsyncClient
) -> None:
    sim.script(
        {"type": "text", "text": "far too late", "model": A, "delay_ms": 2000},
        {"type": "text", "text": "from b", "model": B},
    )
    started = time.monotonic()
    items = await _call(_router(sim, http), timeout_s=1.0)
    elapsed = time.monotonic() - started
    result = _result(items)
    assert (result.provider, result.tried) == ("an", ("oa/model-a",))
    assert elapsed < 1.0
    assert _models(sim) == [A, B]  # a timed-out provider is not retried


async def test_the_deadline_bounds_the_whole_call(sim: Sim, http: httpx2.AsyncClient) -> None:
    sim.script(
        {"type": "text", "text": "late", "model": A, "delay_ms": 2000},
        {"type": "text", "text": "late too", "model": B, "delay_ms": 2000},
    )
    started = time.monotonic()
    with pytest.raises(AllProvidersFailed, match="deadline passed") as caught:
        await _call(_router(sim, http), timeout_s=0.6)
    assert time.monotonic() - started < 0.9
    assert "oa/model-a" in str(caught.value) and "an/model-b" in str(caught.value)


async def test_cancelling_a_probe_frees_the_slot(sim: Sim, http: httpx2.AsyncClient) -> None:
    clock = Clock()
    router = _router(sim, http, clock=clock, breaker_failures=1, attempts_per_provider=1)
    sim.script({"type": "status", "status": 503, "model": A})
    await _call(router)
    clock.skipped += 30
    sim.script({"type": "text", "text": "slow", "model": A, "delay_ms": 2000})
    task = asyncio.create_task(_call(router))
    for _ in range(200):  # bounded wait for the probe to reach the simulator
        if _models(sim).count(A) == 2:
            break
        await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert router.breakers["oa"].state == "half_open"
    assert router.breakers["oa"].acquire() is not None


async def test_unknown_provider_is_a_config_error(sim: Sim, http: httpx2.AsyncClient) -> None:
    tier = TierSpec(chain=(*TIER.chain, ModelRef(provider="nope", model=A)))
    with pytest.raises(ConfigError, match="unknown provider 'nope'"):
        await _call(_router(sim, http), tier)
    assert sim.requests() == []


def test_router_settings_are_validated() -> None:
    assert RouterSettings().retry_after_cap_s == 2.0
    assert RouterSettings().attempts_per_provider == 2
    assert RouterSettings().breaker_failures == 5
    assert RouterSettings().breaker_open_s == 30.0
    with pytest.raises(ValidationError, match="retry_after_cap"):
        RouterSettings(retry_after_cap=3)  # type: ignore[call-arg]
    with pytest.raises(ValidationError, match="backoff_max_s"):
        RouterSettings(backoff_initial_s=2, backoff_max_s=1)


async def test_a_cut_stream_is_booked_apart_at_an_estimated_cost(
    sim: Sim, http: httpx2.AsyncClient
) -> None:
    sim.script(
        {"type": "drop", "after_chunks": 3, "model": A},
        {"type": "text", "text": "the fallback's answer", "model": B},
    )
    items = await _call(_router(sim, http, attempts_per_provider=1))
    discard = next(i for i in items if isinstance(i, Discard))
    assert discard.cost_usd > 0  # the provider billed the cut attempt's tokens
    result = _result(items)
    assert result.cost_usd == PriceTable(dict(DEFAULT_PRICES)).cost_usd(
        B, result.response.usage
    )  # the answer's own cost is apart
    assert not result.usage_estimated


async def test_a_reply_without_usage_gets_an_estimated_flagged_cost(
    sim: Sim, http: httpx2.AsyncClient
) -> None:
    zero = {"input_tokens": 0, "cached_tokens": 0, "cache_write_tokens": 0, "output_tokens": 0}
    sim.script({"type": "text", "text": "twelve chars", "model": "sim-strong", "usage": zero})
    tier = TierSpec(chain=(ModelRef(provider="oa", model="sim-strong"),))
    result = _result(await _call(_router(sim, http), tier=tier))
    assert result.usage_estimated
    usage = result.response.usage
    assert usage.output_tokens == 3  # ceil(12 / 4)
    assert usage.input_tokens == 5  # ceil(9 / 4) for "You help." + ceil(5 / 4) for "hello"
    assert result.cost_usd > 0
