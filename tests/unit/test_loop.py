"""The step loop over a scripted fake model and a real ToolPool: events, budgets, failures."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator, Sequence
from typing import Any

import pytest

from actors.tool_pool import ToolPool
from agents.calls import idempotency_key
from agents.errors import ProviderUnavailable
from agents.eventlog import EventLog
from agents.events import Event, is_terminal
from agents.examples import example_specs, support_tools
from agents.loop import Coalescing, Ports, RunInput, execute_run
from agents.messages import Message, ToolCall, Usage
from agents.spec import AgentSpec
from tests.scripted import MODEL, PRICES, Hang, Reply, Script, ScriptedModel

DEFAULT_COALESCING = Coalescing()


@pytest.fixture
def scripted() -> Iterator[list[ScriptedModel]]:
    """Makes ScriptedModels; every one is checked for unused or missing replies at teardown."""
    made: list[ScriptedModel] = []
    yield made
    for model in made:
        model.check()


class BrokenMemory:
    async def load_thread(self, namespace: str, thread_id: str) -> list[Message]:
        raise ConnectionError("memory store down")

    async def append_thread(self, namespace: str, thread_id: str, messages: list[Message]) -> None:
        raise ConnectionError("memory store down")


@pytest.fixture(autouse=True)
def _clean_ledger() -> Iterator[None]:
    support_tools.reset_refunds()
    yield
    support_tools.reset_refunds()


def support(**budgets: Any) -> AgentSpec:
    base = next(s for s in example_specs() if s.name == "support")
    if not budgets:
        return base
    return base.model_copy(update={"budgets": base.budgets.model_copy(update=budgets)})


def lookup(call_id: str = "c1", order_id: Any = 1001, name: str = "lookup_order") -> ToolCall:
    return ToolCall(id=call_id, name=name, arguments={"order_id": order_id})


async def run(
    spec: AgentSpec,
    script: Sequence[Script],
    made: list[ScriptedModel],
    *,
    memory: Any = None,
    thread_id: str | None = None,
    coalescing: Coalescing = DEFAULT_COALESCING,
    clock: Any = None,
) -> tuple[list[Event], ScriptedModel]:
    model = ScriptedModel(script)
    made.append(model)
    log = EventLog("run-1")
    extra = {"clock": clock} if clock is not None else {}
    await execute_run(
        spec,
        RunInput(run_id="run-1", input="where is my order 1001?", thread_id=thread_id),
        Ports(model=model, tools=ToolPool(), memory=memory),
        log,
        coalescing=coalescing,
        **extra,
    )
    return log.events(), model


def kinds(events: list[Event]) -> list[str]:
    return [e.kind for e in events]


def assert_well_formed(events: list[Event]) -> None:
    assert [e.seq for e in events] == list(range(1, len(events) + 1))
    assert {e.run_id for e in events} == {"run-1"}
    terminal = [e for e in events if is_terminal(e)]
    assert len(terminal) == 1 and terminal[0] is events[-1]


def collapse_deltas(names: list[str]) -> list[str]:
    out: list[str] = []
    for name in names:
        if not (name == "model.delta" and out and out[-1] == "model.delta"):
            out.append(name)
    return out


# --- tests --------------------------------------------------------------------------------


async def test_tool_call_round_trip(scripted: list[ScriptedModel]) -> None:
    events, model = await run(
        support(),
        [Reply("Let me look that up.", (lookup(),)), Reply("Order 1001 has shipped.")],
        scripted,
    )
    assert_well_formed(events)
    assert collapse_deltas(kinds(events)) == [
        "run.created",
        "step.started",
        "model.delta",
        "model.completed",
        "tool.call",
        "tool.result",
        "budget.progress",
        "step.started",
        "model.delta",
        "model.completed",
        "budget.progress",
        "run.completed",
    ]
    result = next(e for e in events if e.kind == "tool.result")
    assert result.ok and json.loads(result.output)["status"] == "shipped"
    assert result.call_id == "c1" and result.tool == "lookup_order"
    done = events[-1]
    assert done.kind == "run.completed"
    assert done.output == "Order 1001 has shipped." and done.steps == 2 and not done.degraded

    # The second model call saw the tool's answer, tied to its call id.
    tool_message = model.requests[1][-1]
    assert tool_message.role == "tool" and tool_message.tool_call_id == "c1"
    assert json.loads(tool_message.content)["order_id"] == 1001
    assert model.requests[0][0] == Message(role="system", content=support().system_prompt)


async def test_side_effecting_tool_gets_a_stable_idempotency_key(
    scripted: list[ScriptedModel],
) -> None:
    refund = ToolCall(id="c9", name="issue_refund", arguments={"order_id": 1003, "reason": "late"})
    events, _ = await run(support(), [Reply("", (refund,)), Reply("Refunded.")], scripted)
    assert events[-1].kind == "run.completed"
    # Named by what the log holds (run, step, position, tool, arguments), not the provider's id.
    key = idempotency_key("run-1", 1, 0, "issue_refund", {"reason": "late", "order_id": 1003})
    assert list(support_tools.refunds()) == [key]


async def test_step_cap_without_wrap_up_fails_the_run(scripted: list[ScriptedModel]) -> None:
    events, _ = await run(
        support(max_steps=2, wrap_up=False),
        [Reply("", (lookup("c1"),)), Reply("", (lookup("c2"),))],
        scripted,
    )
    assert_well_formed(events)
    assert kinds(events)[-2:] == ["budget.exceeded", "run.failed"]
    exceeded, failed = events[-2], events[-1]
    assert exceeded.kind == "budget.exceeded"
    assert (exceeded.limit, exceeded.used, exceeded.cap) == ("steps", 2, 2)
    assert failed.kind == "run.failed"
    assert failed.code == "budget_exceeded" and not failed.retryable and failed.steps == 2
    assert kinds(events).count("step.started") == 2


async def test_step_cap_wraps_up_with_one_cheap_call_without_tools(
    scripted: list[ScriptedModel],
) -> None:
    events, model = await run(
        support(max_steps=2),
        [Reply("", (lookup("c1"),)), Reply("", (lookup("c2"),)), Reply("Order 1001 shipped.")],
        scripted,
    )
    assert_well_formed(events)
    exceeded = next(e for e in events if e.kind == "budget.exceeded")
    assert (exceeded.limit, exceeded.used, exceeded.cap) == ("steps", 2, 2)
    done = events[-1]
    assert done.kind == "run.completed" and done.wrapped_up
    assert done.output == "Order 1001 shipped." and done.steps == 3
    wrap_up_call = model.requests[-1]
    assert model.offered[-1] == ()  # no tools in the wrap-up
    assert model.tiers[-1] == support().tiers["fast"]  # the cheap tier
    assert "budget is used up" in wrap_up_call[-1].content
    final = [e for e in events if e.kind == "model.completed"][-1]
    assert final.tier == "fast"


async def test_near_the_dollar_cap_the_run_wraps_up(scripted: list[ScriptedModel]) -> None:
    pricey = Usage(input_tokens=10_000, output_tokens=1_000)  # $0.045 at sim-strong
    events, _ = await run(
        support(max_cost_usd=0.049),
        [Reply("", (lookup(),), usage=pricey), Reply("What I found so far.")],
        scripted,
    )
    assert_well_formed(events)
    assert [e.limit for e in events if e.kind == "budget.exceeded"] == ["cost"]
    assert events[-1].kind == "run.completed" and events[-1].wrapped_up


async def test_dollar_cap(scripted: list[ScriptedModel]) -> None:
    pricey = Usage(input_tokens=10_000, output_tokens=1_000)  # 0.03 + 0.015 at sim-strong
    events, _ = await run(
        support(max_cost_usd=0.04),
        [Reply("", (lookup(),), usage=pricey)],
        scripted,
    )
    assert_well_formed(events)
    exceeded, failed = events[-2], events[-1]
    assert exceeded.kind == "budget.exceeded" and exceeded.limit == "cost"
    assert exceeded.used == pytest.approx(0.045) and exceeded.cap == 0.04
    assert failed.kind == "run.failed" and failed.code == "budget_exceeded"
    assert failed.cost_usd == pytest.approx(0.045)


async def test_token_cap(scripted: list[ScriptedModel]) -> None:
    events, _ = await run(
        support(max_tokens=500),
        [Reply("", (lookup(),), usage=Usage(input_tokens=450, output_tokens=60))],
        scripted,
    )
    assert events[-2].kind == "budget.exceeded" and events[-2].limit == "tokens"
    assert events[-1].kind == "run.failed" and events[-1].code == "budget_exceeded"


async def test_usage_and_cost_are_summed_across_steps(scripted: list[ScriptedModel]) -> None:
    first = Usage(input_tokens=1_000, cached_input_tokens=2_000, output_tokens=50)
    second = Usage(input_tokens=1_200, cache_write_tokens=300, output_tokens=80)
    events, _ = await run(
        support(), [Reply("", (lookup(),), usage=first), Reply("ok", usage=second)], scripted
    )
    done = events[-1]
    assert done.kind == "run.completed"
    assert done.usage == Usage(
        input_tokens=2_200, cached_input_tokens=2_000, cache_write_tokens=300, output_tokens=130
    )
    expected = PRICES.cost_usd(MODEL, first) + PRICES.cost_usd(MODEL, second)
    assert done.cost_usd == pytest.approx(expected)
    assert done.cost_usd == pytest.approx(
        (1_000 * 3.0 + 2_000 * 0.3 + 50 * 15.0 + 1_200 * 3.0 + 300 * 3.75 + 80 * 15.0) / 1e6
    )
    per_step = [e.cost_usd for e in events if e.kind == "model.completed"]
    assert sum(per_step) == pytest.approx(done.cost_usd)


async def test_deltas_are_coalesced(scripted: list[ScriptedModel]) -> None:
    text = "".join(f"word{i} " for i in range(40))
    assert len(text) == 270
    events, _ = await run(
        support(),
        [Reply(text, chunks=len(text))],  # one character per delta
        scripted,
        coalescing=Coalescing(max_chars=50, max_ms=1e9),
        clock=lambda: 0.0,  # time never moves: only the character count flushes
    )
    deltas = [e for e in events if e.kind == "model.delta"]
    # 270 one-character deltas -> 5 full batches of 50, then the 20-character tail.
    assert [len(d.text) for d in deltas] == [50, 50, 50, 50, 50, 20]
    assert "".join(d.text for d in deltas) == text
    completed = next(e for e in events if e.kind == "model.completed")
    assert completed.text == text


async def test_unknown_tool_is_reported_and_the_run_goes_on(scripted: list[ScriptedModel]) -> None:
    events, model = await run(
        support(),
        [Reply("", (lookup(name="cancel_order"),)), Reply("I cannot cancel orders.")],
        scripted,
    )
    result = next(e for e in events if e.kind == "tool.result")
    assert not result.ok and result.error is not None
    assert "unknown tool 'cancel_order'" in result.error and "lookup_order" in result.error
    assert events[-1].kind == "run.completed"
    assert json.loads(model.requests[1][-1].content) == {"error": result.error}


async def test_bad_tool_arguments_reach_the_model(scripted: list[ScriptedModel]) -> None:
    bad = ToolCall(id="c1", name="lookup_order", arguments={"order": 1001})
    events, _ = await run(support(), [Reply("", (bad,)), Reply("Which order?")], scripted)
    result = next(e for e in events if e.kind == "tool.result")
    assert not result.ok and result.error is not None
    assert result.error.startswith("invalid arguments for tool lookup_order")
    assert events[-1].kind == "run.completed"


async def test_provider_unavailable_fails_the_run(scripted: list[ScriptedModel]) -> None:
    error = ProviderUnavailable("sim-openai answered 503", "sim-openai", 503)
    events, _ = await run(support(), [error], scripted)
    assert_well_formed(events)
    failed = events[-1]
    assert failed.kind == "run.failed"
    assert failed.code == "provider_unavailable" and failed.retryable
    assert failed.message == "sim-openai answered 503"


async def test_a_stray_timeout_error_is_not_a_run_timeout(scripted: list[ScriptedModel]) -> None:
    events, _ = await run(support(), [TimeoutError("a port's own deadline")], scripted)
    failed = events[-1]
    assert failed.kind == "run.failed" and failed.code == "internal_error"


async def test_cancellation_ends_in_run_cancelled(scripted: list[ScriptedModel]) -> None:
    model = ScriptedModel([Hang()])
    scripted.append(model)
    log = EventLog("run-1")
    task = asyncio.create_task(
        execute_run(support(), RunInput(run_id="run-1", input="hi"), Ports(model, ToolPool()), log)
    )
    await asyncio.wait_for(model.hanging.wait(), timeout=5)
    task.cancel()
    try:
        await asyncio.wait_for(task, timeout=5)
    except asyncio.CancelledError:
        pass  # whether the task re-raises is the caller's concern; the log is what counts
    events = log.events()
    assert_well_formed(events)
    assert kinds(events) == ["run.created", "step.started", "run.cancelled"]
    assert events[-1].kind == "run.cancelled" and events[-1].steps == 1


async def test_run_timeout(scripted: list[ScriptedModel]) -> None:
    events, _ = await run(support(run_timeout_s=0.05), [Hang()], scripted)
    assert_well_formed(events)
    failed = events[-1]
    assert failed.kind == "run.failed" and failed.code == "run_timeout"
    assert "run_timeout_s=0.05" in failed.message


async def test_memory_down_degrades_the_run(scripted: list[ScriptedModel]) -> None:
    events, model = await run(
        support(), [Reply("Hello!")], scripted, memory=BrokenMemory(), thread_id="t1"
    )
    assert_well_formed(events)
    degraded = [e for e in events if e.kind == "memory.degraded"]
    assert len(degraded) == 2  # recall before the run, save after it
    assert all("ConnectionError" in e.reason for e in degraded)
    done = events[-1]
    assert done.kind == "run.completed" and done.degraded and done.output == "Hello!"
    assert [m.role for m in model.requests[0]] == ["system", "user"]
