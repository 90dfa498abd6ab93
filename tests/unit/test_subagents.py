"""The supervisor pattern: an agent used as a tool, its events nested, its cost the caller's,
resumed from its nested events. A scripted model and a real ToolPool; no Ray."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from actors.tool_pool import ToolPool
from agents.errors import AgentSpecError
from agents.eventlog import EventLog
from agents.events import Event, ModelCompleted, SubagentEvent, ToolResulted, parse_event
from agents.examples import example_specs
from agents.loop import Ports, RunInput, execute_run
from agents.messages import ToolCall
from agents.spec import AgentSpec
from tests.scripted import PRICES, Reply, ScriptedModel

QUESTION = "Where is order 1001?"


def concierge() -> AgentSpec:
    return next(s for s in example_specs() if s.name == "concierge")


def script() -> list[Reply]:
    to_orders = ToolCall(id="d1", name="orders_desk", arguments={"task": QUESTION})
    lookup = ToolCall(id="c1", name="lookup_order", arguments={"order_id": 1001})
    return [
        Reply("", (to_orders,)),  # the supervisor routes
        Reply("", (lookup,)),  # the orders agent looks the order up
        Reply("Order 1001 is in transit."),  # ... and answers
        Reply("The orders desk says: order 1001 is in transit."),  # the supervisor relays
    ]


async def run(log: EventLog, replies: list[Reply]) -> ScriptedModel:
    model = ScriptedModel(replies)
    await execute_run(
        concierge(),
        RunInput(run_id="run-1", input=QUESTION),
        Ports(model=model, tools=ToolPool(), prices=PRICES),
        log,
    )
    model.check()
    return model


def nested(events: list[Event]) -> list[Event]:
    return [parse_event(json.dumps(e.event)) for e in events if isinstance(e, SubagentEvent)]


async def test_the_supervisor_hands_the_task_to_a_sub_agent_on_its_own_tier() -> None:
    log = EventLog("run-1")
    model = await run(log, script())
    events = log.events()
    spec = concierge()
    orders = spec.tools[0].agent
    assert orders is not None
    assert orders.tiers[orders.loop_tier] != spec.tiers[spec.loop_tier]
    assert model.tiers == [
        spec.tiers[spec.loop_tier],
        orders.tiers[orders.loop_tier],
        orders.tiers[orders.loop_tier],
        spec.tiers[spec.loop_tier],
    ]
    inner = nested(events)
    assert [e.kind for e in inner if e.kind != "model.delta"] == [
        "run.created",
        "step.started",
        "model.completed",
        "tool.call",
        "tool.result",
        "budget.progress",
        "step.started",
        "model.completed",
        "budget.progress",
        "run.completed",
    ]
    assert inner[0].run_id == "run-1:1:d1" and inner[0].input == QUESTION  # type: ignore[union-attr]
    result = next(e for e in events if isinstance(e, ToolResulted))
    assert result.ok and result.output == "Order 1001 is in transit."
    # Every model call is paid for by the run: the supervisor's and the sub-agent's.
    every_call = sum(e.cost_usd for e in events + inner if isinstance(e, ModelCompleted))
    assert result.cost_usd == pytest.approx(inner[-1].cost_usd)  # type: ignore[union-attr]
    assert events[-1].cost_usd == pytest.approx(every_call)  # type: ignore[union-attr]
    tokens = sum(e.usage.total_tokens for e in events + inner if isinstance(e, ModelCompleted))
    assert result.usage == inner[-1].usage  # type: ignore[union-attr]
    assert events[-1].usage.total_tokens == tokens  # type: ignore[union-attr]


async def test_a_resumed_supervisor_resumes_its_sub_agent_from_the_nested_events() -> None:
    first = EventLog("run-1")
    await run(first, script())
    events = first.events()
    # The host died right after the sub-agent's tool result was stored.
    cut = next(
        i
        for i, e in enumerate(events)
        if isinstance(e, SubagentEvent) and e.event["kind"] == "tool.result"
    )
    resumed = EventLog("run-1", events[: cut + 1])
    model = await run(resumed, script()[2:])  # only the sub-agent's answer and the relay left
    again = resumed.events()
    assert again[-1].kind == "run.completed"
    inner = nested(again)
    assert [e.seq for e in inner] == list(range(1, len(inner) + 1))  # no gap, no duplicate
    assert len(model.requests) == 2


def test_sub_agent_paths_are_resolved_and_cycles_refused(tmp_path: Path) -> None:
    body = """
name: {name}
system_prompt: hi
tiers: {{fast: {{chain: [{{provider: p, model: m}}]}}}}
loop_tier: fast
tools:
  - name: ask
    description: ask the other
    agent: {other}
"""
    (tmp_path / "a.yaml").write_text(body.format(name="a", other="b.yaml"))
    (tmp_path / "b.yaml").write_text(body.format(name="b", other="a.yaml"))
    with pytest.raises(AgentSpecError, match="cycle"):
        AgentSpec.from_yaml(tmp_path / "a.yaml")


def test_a_tool_is_a_function_or_an_agent_never_both() -> None:
    spec = concierge().model_dump()
    spec["tools"][0]["function"] = "agents.examples.support_tools:lookup_order"
    with pytest.raises(AgentSpecError, match="exactly one of 'function' and 'agent'"):
        AgentSpec.from_mapping(spec)
