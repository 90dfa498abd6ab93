"""Context pruning (agents.pruning) and the dollar budget's pre-call check, through the loop
with a scripted model and a real ToolPool."""

from __future__ import annotations

import json
from typing import Any

import pytest

from actors.tool_pool import ToolPool
from agents.eventlog import EventLog
from agents.events import BudgetProgress, ContextPruned, Event, ModelCompleted, ToolResulted
from agents.examples import example_specs
from agents.loop import Ports, RunInput, execute_run
from agents.messages import Message, TextDelta, ToolCall, Usage
from agents.ports import Discard
from agents.pruning import Summary, build_view, truncate_output
from agents.replay import replay
from agents.spec import AgentSpec, ContextSpec
from agents.tokens import estimate_tokens, message_tokens
from tests.scripted import PRICES, Reply, ScriptedModel

LONG = "word " * 2000  # ~2,500 tokens


def support(**context: Any) -> AgentSpec:
    base = next(s for s in example_specs() if s.name == "support")
    return base.model_copy(update={"context": ContextSpec(**context)})


class Thread:
    """A memory port holding one long earlier conversation."""

    def __init__(self, turns: int) -> None:
        self.messages = []
        for i in range(turns):
            self.messages.append(Message(role="user", content=f"question {i}: " + "x" * 400))
            self.messages.append(Message(role="assistant", content=f"answer {i}: " + "y" * 400))

    async def load_thread(self, namespace: str, thread_id: str) -> list[Message]:
        return list(self.messages)

    async def append_thread(self, namespace: str, thread_id: str, messages: list[Message]) -> None:
        self.messages.extend(messages)


async def run(
    spec: AgentSpec, script: list[Reply], *, memory: Any = None, prices: bool = True
) -> tuple[list[Event], ScriptedModel]:
    model = ScriptedModel(script)
    log = EventLog("run-1")
    await execute_run(
        spec,
        RunInput(run_id="run-1", input="where is my order 1001?", thread_id="t1"),
        Ports(model=model, tools=ToolPool(), memory=memory, prices=PRICES if prices else None),
        log,
    )
    model.check()
    return log.events(), model


def lookup(call_id: str = "c1") -> ToolCall:
    return ToolCall(id=call_id, name="lookup_order", arguments={"order_id": 1001})


# -- the view --------------------------------------------------------------------------------


def test_a_large_output_keeps_head_and_tail_and_says_it_was_cut() -> None:
    text = "HEAD" + "m" * 10_000 + "TAIL"
    short = truncate_output(text, 100)
    assert short.startswith("HEAD") and short.endswith("TAIL")
    assert "characters truncated by rayfleet" in short
    assert len(short) < 600
    assert truncate_output("small", 100) == "small"


def test_the_view_cuts_tool_outputs_but_never_the_system_prompt_or_request() -> None:
    messages = [
        Message(role="system", content="S" * 4000),
        Message(role="user", content="R" * 4000),
        Message(role="assistant", tool_calls=(lookup(),)),
        Message(role="tool", content=LONG, tool_call_id="c1"),
    ]
    view = build_view(messages, 1, (), ContextSpec(tool_output_max_tokens=50), None)
    assert view.truncated == ("c1",)
    assert view.messages[0] == messages[0] and view.messages[1] == messages[1]
    assert message_tokens(view.messages[3]) < 100
    assert view.full_tokens == estimate_tokens(messages)


def test_dropping_keeps_a_tool_call_with_its_results_and_the_latest_turn() -> None:
    messages = [Message(role="system", content="s"), Message(role="user", content="request")]
    for i in range(5):
        messages.append(Message(role="assistant", tool_calls=(lookup(f"c{i}"),)))
        messages.append(Message(role="tool", content="z" * 400, tool_call_id=f"c{i}"))
    spec = ContextSpec(max_tokens=250, summarize=False, keep_recent_messages=2)
    view = build_view(messages, 1, (), spec, None)
    assert view.tokens <= 250
    assert view.dropped == 6  # three whole turns
    sent = view.messages
    assert [m.role for m in sent[:2]] == ["system", "user"]
    for i, m in enumerate(sent):  # every tool result follows the call it answers
        if m.role == "tool":
            assert sent[i - 1].tool_calls[0].id == m.tool_call_id


def test_a_summary_replaces_the_turns_it_covers() -> None:
    messages = [Message(role="system", content="s")]
    messages += [Message(role="user", content=f"old {i} " + "q" * 200) for i in range(4)]
    messages.append(Message(role="user", content="request"))
    view = build_view(messages, 5, (), ContextSpec(max_tokens=100), Summary(5, "all about 1001"))
    assert [m.content.split("\n")[-1] for m in view.messages] == [
        "s",
        "all about 1001",
        "request",
    ]
    assert view.summarized == 4


# -- through the loop ------------------------------------------------------------------------


async def test_old_turns_are_summarised_by_the_cheap_tier_and_calls_fit_the_budget() -> None:
    spec = support(max_tokens=900, keep_recent_messages=2)
    events, model = await run(
        spec,
        [
            Reply("Summary: the customer asked many questions about orders."),  # the summary
            Reply("", (lookup(),)),
            Reply("Order 1001 has shipped."),
        ],
        memory=Thread(turns=6),
    )
    assert events[-1].kind == "run.completed"
    fast = spec.tiers["fast"]
    assert model.tiers[0] == fast  # the summary ran on the cheap tier ...
    assert model.offered[0] == ()
    assert all(t == spec.tiers["strong"] for t in model.tiers[1:])  # ... the steps did not
    tools = tuple(t.schema_for_model() for t in spec.tools)
    for sent, offered in zip(model.requests[1:], model.offered[1:], strict=True):
        assert offered == tools
        assert estimate_tokens(sent, offered) <= 900
    pruned = [e for e in events if isinstance(e, ContextPruned)]
    assert pruned[0].summary is not None and pruned[0].summary.startswith("Summary:")
    assert pruned[0].tokens_before > 900 >= pruned[0].tokens_after
    assert pruned[0].summarized == 11  # the thread but its last message (the recent window)
    assert pruned[0].cost_usd > 0
    # The summary's cost is part of the run's.
    calls = sum(e.cost_usd for e in events if isinstance(e, ModelCompleted))
    assert events[-1].cost_usd == pytest.approx(calls + pruned[0].cost_usd)  # type: ignore[union-attr]


async def test_a_resumed_run_keeps_its_summary() -> None:
    spec = support(max_tokens=900, keep_recent_messages=2)
    events, _ = await run(
        spec,
        [Reply("Summary: orders."), Reply("", (lookup(),)), Reply("Shipped.")],
        memory=Thread(turns=6),
    )
    thread = Thread(turns=6).messages
    request = Message(role="user", content="where is my order 1001?")
    prompt = [Message(role="system", content=spec.system_prompt), *thread, request]
    state = replay(prompt, events[:-1])
    pruned = next(e for e in events if isinstance(e, ContextPruned))
    assert pruned.summary_upto == -1  # all of the thread but its last message
    assert state.summary == Summary(len(thread), "Summary: orders.")
    # Resumed without the thread (memory down): the summary still ends before the request.
    bare = replay([prompt[0], request], events[:-1])
    assert bare.summary == Summary(1, "Summary: orders.")


async def test_a_large_tool_output_is_truncated_in_the_call_and_whole_in_the_log() -> None:
    spec = support(tool_output_max_tokens=20)
    events, model = await run(spec, [Reply("", (lookup(),)), Reply("Shipped.")])
    result = next(e for e in events if isinstance(e, ToolResulted))
    assert json.loads(result.output)["status"] == "shipped"  # whole in the log
    sent = model.requests[1][-1]
    assert sent.role == "tool" and "truncated by rayfleet" in sent.content
    pruned = next(e for e in events if isinstance(e, ContextPruned))
    assert pruned.truncated == ("c1",) and pruned.summary is None


# -- the dollar budget and progress ----------------------------------------------------------


# A first call that spends $0.015 of a $0.025 cap: the next strong call's worst case (a full
# 1,024-token output, ~$0.0166 with its input) does not fit; a wrap-up on the fast tier does.
CAP = 0.025
EXPENSIVE = Usage(input_tokens=100, output_tokens=980)


async def test_the_run_stops_before_a_call_that_could_break_the_dollar_cap() -> None:
    base = support()
    spec = base.model_copy(
        update={"budgets": base.budgets.model_copy(update={"max_cost_usd": CAP, "wrap_up": False})}
    )
    events, model = await run(spec, [Reply("", (lookup(),), usage=EXPENSIVE)])
    assert len(model.requests) == 1  # the second call was never made
    assert [e.kind for e in events][-2:] == ["budget.exceeded", "run.failed"]
    failed = events[-1]
    assert failed.code == "budget_exceeded"  # type: ignore[union-attr]
    assert failed.cost_usd <= CAP  # type: ignore[union-attr]


async def test_near_the_dollar_cap_the_run_wraps_up_on_the_cheap_tier() -> None:
    base = support()
    spec = base.model_copy(
        update={"budgets": base.budgets.model_copy(update={"max_cost_usd": CAP})}
    )
    script = [Reply("", (lookup(),), usage=EXPENSIVE), Reply("Order 1001 shipped.")]
    events, model = await run(spec, script)
    assert model.tiers[1] == spec.tiers["fast"] and model.offered[1] == ()
    done = events[-1]
    assert done.kind == "run.completed" and done.wrapped_up  # type: ignore[union-attr]
    assert done.cost_usd <= CAP  # type: ignore[union-attr]


async def test_a_budget_progress_event_closes_every_step() -> None:
    spec = support()
    events, _ = await run(spec, [Reply("", (lookup(),)), Reply("Shipped.")], prices=False)
    progress = [e for e in events if isinstance(e, BudgetProgress)]
    assert [p.step for p in progress] == [1, 2]
    assert progress[-1].max_steps == spec.budgets.max_steps
    assert progress[-1].max_cost_usd == spec.budgets.max_cost_usd
    assert progress[0].cost_usd < progress[1].cost_usd == events[-1].cost_usd  # type: ignore[union-attr]
    assert 0 < progress[-1].time_left_s <= spec.budgets.run_timeout_s


async def test_the_pre_call_check_prices_the_dearest_model_a_tier_may_fall_back_to() -> None:
    base = support()
    cheap_first = base.tiers["strong"].model_copy(
        update={"chain": (base.tiers["fast"].chain[0], *base.tiers["strong"].chain)}
    )
    spec = base.model_copy(
        update={
            "tiers": {**base.tiers, "strong": cheap_first},
            # Room for a full sim-fast call, not for a full sim-strong one.
            "budgets": base.budgets.model_copy(update={"max_cost_usd": 0.005, "wrap_up": False}),
        }
    )
    events, model = await run(spec, [])
    assert model.requests == []  # stopped before spending anything
    assert [e.kind for e in events][-2:] == ["budget.exceeded", "run.failed"]


class DiscardingModel:
    """A first attempt that streams, fails (billed 0.01) and is discarded; then an answer."""

    async def stream(self, tier: Any, messages: Any, tools: Any, *, timeout_s: float) -> Any:
        yield TextDelta(text="half an ans")
        yield Discard(reason="stream cut", provider="sim-openai", cost_usd=0.01)
        for item in Reply("A whole answer.").items():
            yield item


async def test_a_discarded_attempt_is_booked_apart_and_counts_in_the_run_cost() -> None:
    log = EventLog("run-1")
    ports = Ports(model=DiscardingModel(), tools=ToolPool(), prices=PRICES)
    await execute_run(support(), RunInput(run_id="run-1", input="hello"), ports, log)
    events = log.events()
    discarded = next(e for e in events if e.kind == "model.discarded")
    completed = next(e for e in events if isinstance(e, ModelCompleted))
    assert discarded.cost_usd == 0.01  # type: ignore[union-attr]
    assert events[-1].cost_usd == pytest.approx(0.01 + completed.cost_usd)  # type: ignore[union-attr]
    assert replay([], events[:-1]).cost_usd == pytest.approx(events[-1].cost_usd)  # type: ignore[union-attr]
