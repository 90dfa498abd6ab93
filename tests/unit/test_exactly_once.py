"""Exactly-once side effects across crashes, without Ray: idempotency keys come from what the
durable log holds (run, step, position, tool, arguments), a side effect waits for its
`tool.call` to be durable, provider ids that are empty or repeated are made unique, and a
resumed run re-issues a durable call instead of asking the model again."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest

from actors.state import State
from actors.tool_pool import ToolPool
from agents.calls import idempotency_key, with_stable_ids
from agents.eventlog import EventLog
from agents.events import (
    Event,
    ModelCompleted,
    RunCreated,
    StepStarted,
    ToolCalled,
    ToolResulted,
)
from agents.examples import example_specs, support_tools
from agents.loop import Ports, RunInput, execute_run
from agents.messages import Message, ToolCall, Usage
from agents.replay import replay
from agents.spec import AgentSpec, ToolSpec
from tests import tools_for_tests as tools
from tests.helpers import eventually
from tests.scripted import Hang, Reply, Script, ScriptedModel

REQUEST = RunInput(run_id="run-1", input="ship my things")
SHIP = ToolSpec(
    name="ship",
    description="ships an item",
    parameters={"type": "object", "properties": {"item": {"type": "string"}}},
    function=f"{tools.HERE}:flaky_effect",
    side_effects=True,
)


@pytest.fixture(autouse=True)
def _clean() -> Iterator[None]:
    tools.reset()
    support_tools.reset_refunds()
    yield
    tools.reset()
    support_tools.reset_refunds()


def support(**timeouts: float) -> AgentSpec:
    base = next(s for s in example_specs() if s.name == "support")
    update: dict[str, object] = {"tools": (*base.tools, SHIP)}
    if timeouts:
        update["timeouts"] = base.timeouts.model_copy(update=timeouts)
    return base.model_copy(update=update)


def ship(call_id: str, item: str) -> ToolCall:
    return ToolCall(id=call_id, name="ship", arguments={"item": item})


def refund(call_id: str, order_id: int) -> ToolCall:
    return ToolCall(
        id=call_id, name="issue_refund", arguments={"order_id": order_id, "reason": "late"}
    )


async def run(
    script: list[Script],
    events: list[Event] | None = None,
    *,
    pool: ToolPool | None = None,
    spec: AgentSpec | None = None,
    durable: object = None,
) -> tuple[list[Event], ScriptedModel]:
    model = ScriptedModel(script)
    log = EventLog(REQUEST.run_id, events)
    ports = Ports(model=model, tools=pool or ToolPool(), durable=durable)  # type: ignore[arg-type]
    await execute_run(spec or support(), REQUEST, ports, log)
    model.check()
    return log.events(), model


def of_kind(events: list[Event], kind: str) -> list[Event]:
    return [e for e in events if e.kind == kind]


# Keys and ids


def test_the_key_names_the_run_step_position_tool_and_canonical_arguments() -> None:
    key = idempotency_key("run-1", 2, 0, "ship", {"item": "kettle", "n": 1})
    assert key == idempotency_key("run-1", 2, 0, "ship", {"n": 1, "item": "kettle"})
    assert key.startswith("run-1:2:0:ship:")
    others = {
        idempotency_key("run-2", 2, 0, "ship", {"item": "kettle", "n": 1}),
        idempotency_key("run-1", 3, 0, "ship", {"item": "kettle", "n": 1}),
        idempotency_key("run-1", 2, 1, "ship", {"item": "kettle", "n": 1}),
        idempotency_key("run-1", 2, 0, "send", {"item": "kettle", "n": 1}),
        idempotency_key("run-1", 2, 0, "ship", {"item": "kettle", "n": 2}),
    }
    assert key not in others and len(others) == 5


def test_provider_ids_are_kept_unless_empty_or_repeated() -> None:
    calls = [ship("a", "x"), ship("", "y"), ship("a", "z"), ship("rf-1-3", "w"), ship("", "v")]
    ids = [c.id for c in with_stable_ids(calls, 1)]
    assert ids == ["a", "rf-1-1", "rf-1-2", "rf-1-3", "rf-1-4"]
    # A generated id never takes one the provider gave to another call of the step.
    assert [c.id for c in with_stable_ids([ship("", "x"), ship("rf-2-0", "y")], 2)] == [
        "rf-2-0x",
        "rf-2-0",
    ]
    assert [c.arguments for c in with_stable_ids(calls, 1)] == [c.arguments for c in calls]


@pytest.mark.parametrize("provider_ids", [("", ""), ("c1", "c1")])
async def test_calls_with_empty_or_repeated_ids_each_act_once_with_their_own_result(
    provider_ids: tuple[str, str],
) -> None:
    first, second = refund(provider_ids[0], 1003), refund(provider_ids[1], 1002)
    events, model = await run([Reply("", (first, second)), Reply("Both refunded.")])
    assert events[-1].kind == "run.completed"
    # Two calls, two refunds: one shared key would have answered the second with the first.
    assert len(support_tools.refunds()) == 2
    calls, results = of_kind(events, "tool.call"), of_kind(events, "tool.result")
    call_ids = [c.call_id for c in calls]  # type: ignore[attr-defined]
    assert len(set(call_ids)) == 2 and all(call_ids)
    assert [r.call_id for r in results] == call_ids  # type: ignore[attr-defined]
    assert all(r.ok for r in results)  # type: ignore[attr-defined]
    # The model sees each result tied to its own call, under the ids the log holds.
    assistant, *answers = model.requests[1][-3:]
    assert [c.id for c in assistant.tool_calls] == call_ids
    assert [m.tool_call_id for m in answers] == call_ids
    assert [json.loads(m.content)["order_id"] for m in answers] == [1003, 1002]


# Durability before a side effect


class Durability:
    """A durable port that holds every wait until released, recording what was asked."""

    def __init__(self) -> None:
        self.asked: list[int] = []
        self.released = asyncio.Event()

    async def __call__(self, seq: int) -> None:
        self.asked.append(seq)
        await self.released.wait()

    async def waiting(self) -> bool:
        return bool(self.asked)


async def test_a_side_effect_runs_only_once_its_tool_call_is_durable() -> None:
    durable = Durability()
    script: list[Script] = [
        Reply("", (ToolCall(id="c1", name="lookup_order", arguments={"order_id": 1003}),)),
        Reply("", (refund("c2", 1003),)),
        Reply("Refunded."),
    ]
    task = asyncio.create_task(run(script, durable=durable))
    await eventually(durable.waiting)
    # The read-only lookup did not wait; the refund waits, and has not acted.
    assert len(durable.asked) == 1 and support_tools.refunds() == {}
    durable.released.set()
    events, _ = await task
    assert events[-1].kind == "run.completed" and len(support_tools.refunds()) == 1
    refund_call = next(e for e in of_kind(events, "tool.call") if e.tool == "issue_refund")  # type: ignore[attr-defined]
    assert durable.asked[0] >= refund_call.seq  # what it waited for includes its tool.call


async def test_a_store_that_never_records_the_call_means_the_tool_is_not_called() -> None:
    durable = Durability()  # never released: the run store is down
    script: list[Script] = [Reply("", (refund("c1", 1003),)), Reply("The refund did not go.")]
    events, _ = await run(script, spec=support(tool_call_timeout_s=0.05), durable=durable)
    assert support_tools.refunds() == {}
    result = of_kind(events, "tool.result")[0]
    assert not result.ok and "not called" in (result.error or "")  # type: ignore[attr-defined]
    assert events[-1].kind == "run.completed"


# Resuming from the durable log


LedgerPool = Callable[[], ToolPool]


@pytest.fixture
async def ledger_pool(tmp_path: Path) -> AsyncIterator[LedgerPool]:
    """New tool pools on one effect ledger, each with its own connections (as after a
    restart of the pool's process)."""
    opened: list[State] = []

    def pool() -> ToolPool:
        opened.append(State(f"sqlite://{tmp_path / 'state'}"))
        return ToolPool(ledger=opened[-1].ledger)

    yield pool
    for state in opened:
        await state.close()


async def first_run_until_hang(pool: ToolPool, reply: Reply) -> list[Event]:
    """A run whose tools act, then whose next model call hangs: the host dies there."""
    model = ScriptedModel([reply, Hang()])
    log = EventLog(REQUEST.run_id)
    ports = Ports(model=model, tools=pool)
    task = asyncio.create_task(execute_run(support(), REQUEST, ports, log))
    await asyncio.wait_for(model.hanging.wait(), 10)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    return log.events()


async def test_a_resumed_run_re_issues_the_durable_calls_with_the_same_keys(
    ledger_pool: LedgerPool,
) -> None:
    # Empty provider ids: the two calls of the step must still be two effects, once each.
    reply = Reply("", (ship("", "kettle"), ship("", "lamp")))
    events = await first_run_until_hang(ledger_pool(), reply)
    assert len(tools.effects) == 2 and len(set(tools.effects)) == 2
    # The host died after both acted, with only the first result durable.
    first_result = next(i for i, e in enumerate(events) if e.kind == "tool.result")
    durable_log = events[: first_result + 1]
    resumed, model = await run([Reply("Both shipped.")], durable_log, pool=ledger_pool())
    assert len(tools.effects) == 2  # the second call was answered by the ledger
    assert len(model.requests) == 1  # no model call was redone for step 1
    results = of_kind(resumed, "tool.result")
    assert [json.loads(r.output)["done"] for r in results] == ["kettle", "lamp"]  # type: ignore[attr-defined]
    assert [r.call_id for r in results] == [c.call_id for c in of_kind(resumed, "tool.call")]  # type: ignore[attr-defined]
    assert resumed[-1].kind == "run.completed"


async def test_a_redone_model_call_with_new_provider_ids_does_not_repeat_an_effect(
    ledger_pool: LedgerPool,
) -> None:
    # Defence in depth: even if the log lost the tool.call of an effect that happened, the
    # same call at the same place has the same key, whatever id the provider gives it now.
    events = await first_run_until_hang(
        ledger_pool(), Reply("", (ship("provider-id-1", "kettle"),))
    )
    assert len(tools.effects) == 1
    step_started = next(i for i, e in enumerate(events) if e.kind == "step.started")
    resumed, _ = await run(
        [Reply("", (ship("provider-id-2", "kettle"),)), Reply("Shipped.")],
        events[: step_started + 1],
        pool=ledger_pool(),
    )
    assert resumed[-1].kind == "run.completed"
    assert len(tools.effects) == 1


def test_replay_matches_results_to_calls_by_position_even_with_repeated_ids() -> None:
    # A log written before ids were made unique: both calls of step 1 have the id "".
    def event(cls: type[Event], seq: int, **fields: object) -> Event:
        return cls(run_id="run-1", seq=seq, ts=0.0, **fields)  # type: ignore[call-arg]

    log = [
        event(RunCreated, 1, agent="support", version="1", input="x"),
        event(StepStarted, 2, step=1),
        event(
            ModelCompleted,
            3,
            step=1,
            tier="strong",
            provider="p",
            model="m",
            text="",
            tool_calls=2,
            usage=Usage(),
            cost_usd=0.0,
            latency_ms=1.0,
        ),
        event(ToolCalled, 4, step=1, call_id="", tool="ship", arguments={"item": "kettle"}),
        event(ToolCalled, 5, step=1, call_id="", tool="ship", arguments={"item": "lamp"}),
        event(ToolResulted, 6, step=1, call_id="", tool="ship", ok=True, output="shipped"),
    ]
    state = replay([Message(role="user", content="x")], log)
    assert state.phase == "tools"
    assert [c.arguments for c in state.pending] == [{"item": "lamp"}]
    assert len(state.calls) - len(state.pending) == 1  # its position: the key it had


async def test_a_sub_agents_side_effect_waits_for_the_callers_log_to_be_durable() -> None:
    # The sub-agent's events are stored as the caller's (nested): its durability is theirs.
    durable = Durability()
    concierge = next(s for s in example_specs() if s.name == "concierge")
    to_refunds = ToolCall(id="d1", name="refunds_desk", arguments={"task": "refund order 1003"})
    model = ScriptedModel(
        [
            Reply("", (to_refunds,)),
            Reply("", (refund("c1", 1003),)),
            Reply("Refunded order 1003."),
            Reply("The refunds desk refunded order 1003."),
        ]
    )
    log = EventLog(REQUEST.run_id)
    ports = Ports(model=model, tools=ToolPool(), durable=durable)
    task = asyncio.create_task(execute_run(concierge, REQUEST, ports, log))
    await eventually(durable.waiting)
    assert support_tools.refunds() == {}
    # It waited for the caller's seq, which covers the nested tool.call.
    nested_call = [e for e in log.events() if e.kind == "subagent.event"][-1]
    assert durable.asked == [log.last_seq] and nested_call.event["kind"] == "tool.call"  # type: ignore[attr-defined]
    durable.released.set()
    await task
    model.check()
    assert log.events()[-1].kind == "run.completed" and len(support_tools.refunds()) == 1
