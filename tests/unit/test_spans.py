"""The spans of a run, in-process, through the SDK's in-memory exporter: the span tree of a
run with a fallback, a discarded attempt, a tool retry, a response-cache hit and sub-agents
(the real router, caches and limiter against the simulator on loopback); a resumed run
re-opening the same run span; no message content unless the agent opts in."""

from __future__ import annotations

import asyncio
import json
import pickle
import tempfile
from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from contextlib import aclosing
from pathlib import Path

import httpx2
import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

import tests.tools_for_tests as flaky_tools
from actors.caches import CacheSettings
from actors.credentials import TenantContext
from actors.limiter import TenantLimiter, TenantLimits
from actors.router import ModelRouter, RouterSettings
from actors.run_host import RunHost, new_run_id
from actors.settings import RuntimeSettings, simulator_providers
from actors.state import State
from actors.tenant_model import TenantModel
from actors.tool_pool import ToolPool, ToolRetrySettings
from agents.errors import TenantLimited
from agents.eventlog import EventLog
from agents.events import Event, RunCompleted, RunCreated, SubagentEvent, ToolResulted
from agents.examples import example_specs
from agents.loop import Ports, RunInput, execute_run
from agents.messages import Message, TextDelta, ToolCall
from agents.ports import Discard, ToolOutcome
from agents.spans import derived_span_id
from agents.spec import AgentSpec, ContextSpec, ModelRef, TierSpec, ToolSpec
from agents.tracing import RunTrace, tracer
from tests.fixtures_sim import Sim
from tests.scripted import PRICES, Reply, Script, ScriptedModel
from tests.unit.test_pruning import Thread

CALLER = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
TASK = "Where is order 7?"

CLERK = AgentSpec(
    name="clerk",
    system_prompt="You look orders up.",
    tiers={"fast": TierSpec(chain=(ModelRef(provider="sim-anthropic", model="sim-fast"),))},
    loop_tier="fast",
    response_cache_ttl_s=600,
)
BOSS = AgentSpec(
    name="boss",
    version="v7",
    system_prompt="You hand questions to the desk.",
    tiers={
        "strong": TierSpec(
            chain=(
                ModelRef(provider="sim-openai", model="sim-strong"),
                ModelRef(provider="sim-anthropic", model="sim-fast"),
            )
        )
    },
    loop_tier="strong",
    tools=(
        ToolSpec(
            name="flaky", description="Works the second time.", function=f"{flaky_tools.HERE}:flaky"
        ),
        ToolSpec(
            name="desk",
            description="Hand a question to the clerk.",
            agent=CLERK,
            parameters={"type": "object", "properties": {"task": {"type": "string"}}},
        ),
    ),
)


@pytest.fixture
async def host(sim: Sim) -> AsyncIterator[RunHost]:
    flaky_tools.reset()
    runtime = RuntimeSettings(
        providers=simulator_providers(sim.base_url),
        cache=CacheSettings(directory=tempfile.mkdtemp(prefix="rayfleet-test-cache-")),
        router=RouterSettings(attempts_per_provider=1),  # a failed attempt falls back at once
    )
    no_wait = ToolRetrySettings(initial_backoff_s=0, max_backoff_s=0)
    built = RunHost("h1", runtime, ToolPool(retry=no_wait), limiter=TenantLimiter({}))
    try:
        yield built
    finally:
        await built.aclose()
        flaky_tools.reset()


async def follow(host: RunHost, run_id: str) -> list[Event]:
    events: list[Event] = []
    async with asyncio.timeout(20):
        async for batch in host.events(run_id, 0):
            events.extend(batch.events())
    return events


def named(spans: Sequence[ReadableSpan], name: str) -> list[ReadableSpan]:
    return [s for s in spans if s.name == name]


def hex_id(span_id: int) -> str:
    return format(span_id, "016x")


def children(spans: Sequence[ReadableSpan], parent: ReadableSpan) -> list[ReadableSpan]:
    assert parent.context is not None
    return [s for s in spans if s.parent is not None and s.parent.span_id == parent.context.span_id]


async def test_the_span_tree_of_a_run_with_a_fallback_a_retry_a_cache_hit_and_sub_agents(
    spans: InMemorySpanExporter, host: RunHost, sim: Sim
) -> None:
    sim.script(
        {"type": "status", "status": 503, "model": "sim-strong"},
        {
            "type": "tool_call",
            "model": "sim-fast",  # the fallback
            "name": "flaky",
            "more": [{"name": "desk", "arguments": {"task": TASK}}],
        },
        {"type": "text", "text": "Order 7 is in transit.", "model": "sim-fast"},  # the clerk
        {"type": "tool_call", "name": "desk", "arguments": {"task": TASK}, "model": "sim-strong"},
        {"type": "text", "text": "In transit, twice over.", "model": "sim-strong"},
    )
    flaky_tools.script.append(ConnectionResetError("reset once"))
    trace_of_run = RunTrace.start(CALLER)
    request = RunInput(
        run_id=new_run_id("h1"), input="Where is 7?", tenant="acme", trace=trace_of_run
    )
    run_id = await host.start_run(BOSS, request, TenantContext(tenant="acme", metered=True))
    events = await follow(host, run_id)
    assert events[-1].kind == "run.completed"
    assert flaky_tools.calls["flaky"] == 2
    got = spans.get_finished_spans()
    assert {s.context.trace_id for s in got if s.context} == {int(trace_of_run.trace_id, 16)}

    # The run: its stored ids, under the caller's span, from run.created to its end.
    (run,) = named(got, "invoke_agent boss")
    assert run.context is not None and run.parent is not None
    assert hex_id(run.context.span_id) == trace_of_run.span_id
    assert hex_id(run.parent.span_id) == CALLER.split("-")[2]
    assert run.start_time == int(events[0].ts * 1e9)
    assert run.kind == SpanKind.INTERNAL
    attributes = dict(run.attributes or {})
    assert attributes["gen_ai.operation.name"] == "invoke_agent"
    assert attributes["gen_ai.agent.name"] == "boss"
    assert attributes["gen_ai.agent.version"] == "v7"
    assert attributes["rayfleet.run_id"] == run_id
    assert attributes["rayfleet.tenant"] == "acme"
    assert attributes["rayfleet.assignment"] == "stable"
    assert attributes["rayfleet.steps"] == 3
    assert attributes["rayfleet.status"] == "completed"
    end = events[-1]
    assert isinstance(end, RunCompleted)
    assert attributes["rayfleet.cost_usd"] == pytest.approx(end.cost_usd)
    usage = end.usage
    assert attributes["gen_ai.usage.output_tokens"] == usage.output_tokens

    steps = sorted(children(got, run), key=lambda s: s.start_time or 0)
    assert [s.name for s in steps] == ["step", "step", "step"]
    assert [dict(s.attributes or {})["rayfleet.step"] for s in steps] == [1, 2, 3]
    one, two, three = steps

    # Step 1: a limiter wait, the failed attempt, the fallback, then two tool calls.
    assert [s.name for s in sorted(children(got, one), key=lambda s: s.start_time or 0)] == [
        "rayfleet.limiter.reserve",
        "chat sim-strong",
        "chat sim-fast",
        "execute_tool flaky",
        "execute_tool desk",
    ]
    first, fallback = named(children(got, one), "chat sim-strong") + named(
        children(got, one), "chat sim-fast"
    )
    assert first.kind == SpanKind.CLIENT and first.status.status_code == StatusCode.ERROR
    expected = {
        "gen_ai.operation.name": "chat",
        "gen_ai.provider.name": "openai",
        "gen_ai.request.model": "sim-strong",
        "rayfleet.provider": "sim-openai",
        "rayfleet.attempt": 1,
        "error.type": "503",
    }
    assert {k: (first.attributes or {}).get(k) for k in expected} == expected
    assert "rayfleet.fallback" not in (first.attributes or {})
    assert "rayfleet.discarded" not in (first.attributes or {})
    fell = dict(fallback.attributes or {})
    assert fell["gen_ai.provider.name"] == "anthropic"
    assert fell["gen_ai.response.model"] == "sim-fast"
    assert fell["rayfleet.fallback"] is True and fell["rayfleet.attempt"] == 2
    assert fell["gen_ai.usage.input_tokens"] and fell["gen_ai.usage.output_tokens"]
    assert "error.type" not in fell

    (retried,) = named(children(got, one), "execute_tool flaky")
    tool = dict(retried.attributes or {})
    assert tool["gen_ai.operation.name"] == "execute_tool"
    assert tool["gen_ai.tool.name"] == "flaky"
    call_ids = [e.call_id for e in events if isinstance(e, ToolResulted)]
    assert tool["gen_ai.tool.call.id"] == call_ids[0]
    assert tool["rayfleet.tool.attempts"] == 2
    assert tool["rayfleet.tool.replayed"] is False and tool["rayfleet.cache_hit"] is False
    assert "error.type" not in tool and "gen_ai.tool.call.arguments" not in tool

    # Each desk call is a sub-agent's run nested in its execute_tool span, with an id from
    # its run id (a resumed caller re-opens the same one).
    for step, call_id in ((one, call_ids[1]), (two, call_ids[2])):
        (desk,) = named(children(got, step), "execute_tool desk")
        (clerk,) = children(got, desk)
        assert clerk.name == "invoke_agent clerk" and clerk.context is not None
        sub_run_id = f"{run_id}:{dict(step.attributes or {})['rayfleet.step']}:{call_id}"
        assert hex_id(clerk.context.span_id) == derived_span_id(sub_run_id)
        assert dict(clerk.attributes or {})["rayfleet.run_id"] == sub_run_id
    # The first clerk asked the model; the second was answered by the response cache.
    (first_clerk,) = children(got, named(children(got, one), "execute_tool desk")[0])
    (second_clerk,) = children(got, named(children(got, two), "execute_tool desk")[0])
    (clerk_step,) = children(got, first_clerk)
    assert sorted(s.name for s in children(got, clerk_step)) == [
        "chat sim-fast",
        "rayfleet.limiter.reserve",
    ]
    (cached_step,) = children(got, second_clerk)
    (hit,) = children(got, cached_step)  # no limiter wait, no provider call
    assert hit.name == "chat sim-fast"
    cached = dict(hit.attributes or {})
    assert cached["rayfleet.cache_hit"] is True
    assert cached["gen_ai.provider.name"] == "rayfleet"
    assert cached["gen_ai.usage.input_tokens"] == 0

    # Step 3 answers from the first model, no fallback, no tools.
    assert sorted(s.name for s in children(got, three)) == [
        "chat sim-strong",
        "rayfleet.limiter.reserve",
    ]
    (reserve,) = named(children(got, three), "rayfleet.limiter.reserve")
    assert dict(reserve.attributes or {}) == {"rayfleet.tenant": "acme"}
    nested = [e for e in events if isinstance(e, SubagentEvent)]
    assert nested and all(e.trace_id == trace_of_run.trace_id for e in nested)
    assert all(e.event["trace_id"] == trace_of_run.trace_id for e in nested)


def support() -> AgentSpec:
    return next(s for s in example_specs() if s.name == "support")


SECRET_INPUT = "my card is 4111-1111-1111-1111"
SECRET_ANSWER = "order 1234 ships to 22 Acacia Avenue"


def script() -> list[Reply]:
    lookup = ToolCall(id="c1", name="lookup_order", arguments={"order_id": 987654})
    return [Reply("", (lookup,)), Reply(SECRET_ANSWER)]


async def run_scripted(
    spec: AgentSpec, log: EventLog, replies: Sequence[Script], trace_of_run: RunTrace | None
) -> None:
    model = ScriptedModel(replies)
    request = RunInput(run_id="run-1", input=SECRET_INPUT, trace=trace_of_run)
    ports = Ports(model=model, tools=ToolPool(), prices=PRICES)
    await execute_run(spec, request, ports, log)
    model.check()


def texts(spans: Sequence[ReadableSpan]) -> str:
    """Every attribute and span-event attribute value of `spans`, as one text."""
    values: list[object] = []
    for span in spans:
        values.extend((span.attributes or {}).values())
        values.append(span.status.description)
        for event in span.events:
            values.extend((event.attributes or {}).values())
    return json.dumps(values, default=str)


async def test_a_resumed_run_re_opens_the_same_run_span_from_its_creation(
    spans: InMemorySpanExporter,
) -> None:
    trace_of_run = RunTrace.start()
    first = EventLog("run-1")
    await run_scripted(support(), first, script(), trace_of_run)
    events = first.events()
    before = spans.get_finished_spans()
    spans.clear()
    # The host died after step 1's tool result was stored: another host resumes the run.
    cut = next(i for i, e in enumerate(events) if isinstance(e, ToolResulted))
    resumed = EventLog("run-1", events[: cut + 1])
    await run_scripted(support(), resumed, script()[1:], trace_of_run)
    assert resumed.events()[-1].kind == "run.completed"
    again = spans.get_finished_spans()
    (run,) = named(again, "invoke_agent support")
    assert run.context is not None and run.parent is None  # a root run: no caller
    assert format(run.context.trace_id, "032x") == trace_of_run.trace_id
    assert hex_id(run.context.span_id) == trace_of_run.span_id
    assert isinstance(events[0], RunCreated)
    assert run.start_time == int(events[0].ts * 1e9)
    assert [e.name for e in run.events] == ["rayfleet.run.resumed"]
    # Step 1, cut short by the death, is re-opened under its own id from its step.started.
    ids = {hex_id(s.context.span_id) for s in named(before, "step") if s.context}
    steps = named(again, "step")
    assert [dict(s.attributes or {})["rayfleet.step"] for s in steps] == [1, 2]
    assert all(s.context is not None and hex_id(s.context.span_id) in ids for s in steps)
    assert steps[0].start_time == int(events[1].ts * 1e9)
    assert steps[0].end_time == int(events[cut].ts * 1e9)  # its work was done
    assert all(s.parent is not None and s.parent.span_id == run.context.span_id for s in steps)


async def test_no_message_content_in_spans_unless_the_agent_opts_in(
    spans: InMemorySpanExporter,
) -> None:
    await run_scripted(support(), EventLog("run-1"), script(), RunTrace.start())
    recorded = texts(spans.get_finished_spans())
    for content in (SECRET_INPUT, SECRET_ANSWER, "987654"):
        assert content not in recorded
    spans.clear()

    opted_in = support().model_copy(update={"trace_content": True})
    await run_scripted(opted_in, EventLog("run-1"), script(), RunTrace.start())
    got = spans.get_finished_spans()
    (run,) = named(got, "invoke_agent support")
    attributes = dict(run.attributes or {})
    said = json.loads(str(attributes["gen_ai.input.messages"]))
    assert said == [{"role": "user", "parts": [{"type": "text", "content": SECRET_INPUT}]}]
    answered = json.loads(str(attributes["gen_ai.output.messages"]))
    assert answered[0]["role"] == "assistant"
    assert answered[0]["parts"][0]["content"] == SECRET_ANSWER
    (tool,) = named(got, "execute_tool lookup_order")
    assert json.loads(str(dict(tool.attributes or {})["gen_ai.tool.call.arguments"])) == {
        "order_id": 987654
    }


async def test_a_failed_run_s_span_carries_its_code(spans: InMemorySpanExporter) -> None:
    log = EventLog("run-1")
    await run_scripted(support(), log, [RuntimeError("boom")], None)
    assert log.events()[-1].kind == "run.failed"
    (run,) = named(spans.get_finished_spans(), "invoke_agent support")
    assert run.status.status_code == StatusCode.ERROR
    attributes = dict(run.attributes or {})
    assert attributes["error.type"] == "internal_error"
    assert attributes["rayfleet.status"] == "failed"
    (step,) = named(spans.get_finished_spans(), "step")
    assert step.status.status_code == StatusCode.ERROR


async def test_with_tracing_off_a_run_makes_no_spans() -> None:
    log = EventLog("run-1")
    await run_scripted(support(), log, script(), RunTrace.start())
    assert log.events()[-1].kind == "run.completed"
    assert not trace.get_current_span().get_span_context().is_valid


async def test_a_discarded_attempt_and_a_stream_stopped_early_end_their_chat_spans(
    spans: InMemorySpanExporter, sim: Sim
) -> None:
    sim.script(
        {"type": "drop", "after_chunks": 3, "model": "sim-strong"},  # streams text, then drops
        {"type": "text", "text": "the whole answer", "model": "sim-fast"},
        {"type": "text", "text": "never read to its end", "model": "sim-strong"},
    )
    tier = BOSS.tiers["strong"]
    messages = (Message(role="user", content="hello"),)
    settings = RouterSettings(attempts_per_provider=1)
    async with httpx2.AsyncClient() as http:
        router = ModelRouter(simulator_providers(sim.base_url), PRICES, http, settings=settings)
        with tracer().start_as_current_span("caller") as caller:
            items = [i async for i in router.stream(tier, messages, (), timeout_s=10)]
            stream = router.stream(tier, messages, (), timeout_s=10)
            assert isinstance(stream, AsyncGenerator)
            async with aclosing(stream):  # a consumer that stops after the first delta
                assert isinstance(await anext(stream), TextDelta)
    assert any(isinstance(i, Discard) for i in items)
    got = spans.get_finished_spans()
    (parent,) = named(got, "caller")
    assert parent is not None and parent.context == caller.get_span_context()
    cut, fallback, stopped = sorted(children(got, parent), key=lambda s: s.start_time or 0)
    assert dict(cut.attributes or {})["rayfleet.discarded"] is True
    assert dict(cut.attributes or {})["error.type"] == "provider_unavailable"
    assert dict(fallback.attributes or {})["rayfleet.fallback"] is True
    assert "rayfleet.discarded" not in (fallback.attributes or {})
    assert dict(stopped.attributes or {})["rayfleet.cancelled"] is True
    assert stopped.status.status_code == StatusCode.UNSET


async def test_a_summary_is_a_span_with_its_chat_span_and_pruning_a_step_event(
    spans: InMemorySpanExporter, sim: Sim
) -> None:
    sim.script(
        {"type": "text", "text": "Summary: questions about orders.", "model": "sim-fast"},
        {"type": "text", "text": "It shipped.", "model": "sim-strong"},
    )
    spec = BOSS.model_copy(
        update={
            "tiers": {
                **BOSS.tiers,
                "fast": TierSpec(chain=(ModelRef(provider="sim-anthropic", model="sim-fast"),)),
            },
            "tools": (),
            "context": ContextSpec(max_tokens=900, keep_recent_messages=2),
            "response_cache_ttl_s": None,
        }
    )
    runtime = RuntimeSettings(
        providers=simulator_providers(sim.base_url),
        cache=CacheSettings(directory=tempfile.mkdtemp(prefix="rayfleet-test-cache-")),
    )
    host = RunHost("h1", runtime, ToolPool(), memory=Thread(turns=6))
    try:
        request = RunInput(run_id=new_run_id("h1"), input="Has it shipped?", thread_id="t1")
        events = await follow(host, await host.start_run(spec, request))
    finally:
        await host.aclose()
    assert events[-1].kind == "run.completed"
    got = spans.get_finished_spans()
    (run,) = named(got, "invoke_agent boss")
    assert dict(run.attributes or {})["gen_ai.conversation.id"] == "t1"
    (step,) = children(got, run)
    (summarize,) = named(children(got, step), "rayfleet.context.summarize")
    assert dict(summarize.attributes or {})["rayfleet.context.summary_made"] is True
    assert [s.name for s in children(got, summarize)] == ["chat sim-fast"]
    assert [s.name for s in children(got, step) if s.name.startswith("chat")] == ["chat sim-strong"]
    (pruned,) = [e for e in step.events if e.name == "rayfleet.context.pruned"]
    assert dict(pruned.attributes or {})["rayfleet.context.summarized"] == 11
    assert "Summary:" not in texts(got)


async def test_a_side_effect_answered_by_the_ledger_is_a_replayed_tool_span(
    spans: InMemorySpanExporter, tmp_path: Path
) -> None:
    flaky_tools.reset()
    effect = ToolSpec(
        name="effect",
        description="Acts once.",
        function=f"{flaky_tools.HERE}:flaky_effect",
        side_effects=True,
        parameters={"type": "object", "properties": {"item": {"type": "string"}}},
    )
    spec = support().model_copy(update={"tools": (effect,)})
    act = ToolCall(id="c1", name="effect", arguments={"item": "x"})
    state = State(f"sqlite://{tmp_path / 'state'}")
    try:
        tools = ToolPool(ledger=state.ledger)
        first = EventLog("run-1")
        model = ScriptedModel([Reply("", (act,)), Reply("Done.")])
        await execute_run(spec, RunInput(run_id="run-1", input="act"), Ports(model, tools), first)
        # The host died after the effect, before its tool.result was stored.
        events = first.events()
        cut = next(i for i, e in enumerate(events) if isinstance(e, ToolResulted))
        spans.clear()
        again = EventLog("run-1", events[:cut])
        model = ScriptedModel([Reply("Done.")])
        await execute_run(spec, RunInput(run_id="run-1", input="act"), Ports(model, tools), again)
    finally:
        await state.close()
    assert again.events()[-1].kind == "run.completed"
    assert len(flaky_tools.effects) == 1  # once
    (tool,) = named(spans.get_finished_spans(), "execute_tool effect")
    attributes = dict(tool.attributes or {})
    assert attributes["rayfleet.tool.replayed"] is True
    assert attributes["rayfleet.tool.attempts"] == 0


def test_a_tool_outcome_carries_its_history_across_ray_but_never_stores_it() -> None:
    outcome = ToolOutcome(ok=True, output="x", attempts=2, replayed=True)
    copied = pickle.loads(pickle.dumps(outcome))
    assert (copied.attempts, copied.replayed) == (2, True)
    stored = json.loads(outcome.model_dump_json())
    assert "attempts" not in stored and "replayed" not in stored
    assert outcome == ToolOutcome(ok=True, output="x")  # the same answer


async def test_a_limiter_refusal_names_the_limit_on_its_span(
    spans: InMemorySpanExporter, sim: Sim
) -> None:
    limiter = TenantLimiter({"acme": TenantLimits(daily_budget_usd=1e-9)})
    async with httpx2.AsyncClient() as http:
        router = ModelRouter(simulator_providers(sim.base_url), PRICES, http)
        model = TenantModel(router, TenantContext(tenant="acme", metered=True), PRICES, limiter)
        messages = (Message(role="user", content="hello " * 50),)
        with pytest.raises(TenantLimited):
            async for _ in model.stream(BOSS.tiers["strong"], messages, (), timeout_s=5):
                pass
    (reserve,) = named(spans.get_finished_spans(), "rayfleet.limiter.reserve")
    attributes = dict(reserve.attributes or {})
    assert attributes["rayfleet.limiter.refused"] == "daily_budget_usd"
    assert attributes["error.type"] == "tenant_limited"
    assert attributes["rayfleet.tenant"] == "acme"
    assert not named(spans.get_finished_spans(), "chat sim-strong")  # no provider call
