"""The event union: published kinds, JSON round trips, and following an EventLog."""

from __future__ import annotations

import asyncio
import typing

import pytest
from pydantic import BaseModel

from agents.eventlog import EventLog
from agents.events import (
    TERMINAL_KINDS,
    ApprovalDecided,
    ApprovalRequested,
    BudgetExceededEvent,
    BudgetProgress,
    ContextPruned,
    Event,
    MemoryDegraded,
    ModelCompleted,
    ModelDelta,
    ModelDiscarded,
    RunCancelled,
    RunCompleted,
    RunCreated,
    RunFailed,
    StepStarted,
    SubagentEvent,
    ToolCalled,
    ToolResulted,
    is_terminal,
    parse_event,
)
from agents.messages import Usage

PUBLISHED_KINDS = {
    "run.created",
    "step.started",
    "model.delta",
    "model.discarded",
    "model.completed",
    "tool.call",
    "tool.result",
    "approval.requested",
    "approval.decided",
    "memory.degraded",
    "budget.exceeded",
    "budget.progress",
    "context.pruned",
    "subagent.event",
    "run.completed",
    "run.failed",
    "run.cancelled",
}

USAGE = Usage(input_tokens=10, cached_input_tokens=5, cache_write_tokens=2, output_tokens=7)

SAMPLES: list[Event] = [
    RunCreated(run_id="r", seq=1, ts=1.5, agent="support", version="v1", input="hi", thread_id="t"),
    StepStarted(run_id="r", seq=2, step=1),
    ModelDelta(run_id="r", seq=3, step=1, text="Hel"),
    ModelDiscarded(run_id="r", seq=3, step=1, reason="provider failed mid-stream", provider="p"),
    ModelCompleted(
        run_id="r",
        seq=4,
        step=1,
        tier="strong",
        provider="sim-openai",
        model="sim-strong",
        text="Hello",
        tool_calls=1,
        usage=USAGE,
        cost_usd=0.0012,
        latency_ms=210.5,
        tried=("sim-openai/sim-strong",),
    ),
    ToolCalled(
        run_id="r",
        seq=5,
        step=1,
        call_id="c1",
        tool="lookup_order",
        arguments={"order_id": 1001, "nested": {"a": [1, None, "x"]}},
    ),
    ToolResulted(
        run_id="r",
        seq=6,
        step=1,
        call_id="c1",
        tool="lookup_order",
        ok=False,
        output="",
        error="boom",
        latency_ms=3.0,
    ),
    ApprovalRequested(
        run_id="r",
        seq=6,
        step=1,
        call_id="c2",
        tool="issue_refund",
        arguments={"order_id": 1001, "reason": "late"},
        deciders=("tenant", "admin"),
        deadline=86_401.5,
    ),
    ApprovalDecided(
        run_id="r",
        seq=7,
        step=1,
        call_id="c2",
        tool="issue_refund",
        decision="edit",
        arguments={"order_id": 1001, "reason": "late, approved"},
        by="tenant:acme",
    ),
    MemoryDegraded(run_id="r", seq=7, reason="thread recall failed: ConnectionError"),
    ContextPruned(
        run_id="r",
        seq=7,
        step=2,
        tokens_before=900,
        tokens_after=400,
        max_tokens=500,
        truncated=("c1",),
        summarized=4,
        dropped=1,
        summary="The customer asked about order 1001.",
        summary_upto=5,
        provider="sim-anthropic",
        model="sim-fast",
        usage=USAGE,
        cost_usd=0.0001,
    ),
    SubagentEvent(
        run_id="r",
        seq=7,
        step=2,
        call_id="d1",
        agent="concierge-orders",
        event={"kind": "step.started", "run_id": "x:2:d1", "seq": 2, "step": 1},
    ),
    BudgetProgress(
        run_id="r",
        seq=7,
        step=2,
        max_steps=8,
        tokens=1200,
        max_tokens=200_000,
        cost_usd=0.01,
        max_cost_usd=0.5,
        elapsed_s=1.5,
        time_left_s=298.5,
    ),
    BudgetExceededEvent(run_id="r", seq=8, limit="cost", used=1.25, cap=1.0),
    RunCompleted(
        run_id="r", seq=9, output="done", steps=2, usage=USAGE, cost_usd=0.5, degraded=True
    ),
    RunFailed(
        run_id="r",
        seq=10,
        code="budget_exceeded",
        message="cost",
        retryable=False,
        steps=2,
        usage=USAGE,
        cost_usd=1.25,
    ),
    RunCancelled(run_id="r", seq=11, reason="cancelled", steps=1, usage=USAGE, cost_usd=0.0),
]


def union_members() -> list[type[BaseModel]]:
    union = typing.get_args(Event)[0]  # Annotated[Union[...], Field(...)]
    return list(typing.get_args(union))


def test_the_kinds_are_exactly_the_published_set() -> None:
    members = union_members()
    kinds = [cls.model_fields["kind"].default for cls in members]
    assert len(kinds) == len(set(kinds))
    assert set(kinds) == PUBLISHED_KINDS
    assert {type(sample) for sample in SAMPLES} == set(members)
    assert TERMINAL_KINDS == {"run.completed", "run.failed", "run.cancelled"}


@pytest.mark.parametrize("event", SAMPLES, ids=lambda e: e.kind)
def test_every_kind_round_trips_through_json(event: Event) -> None:
    parsed = parse_event(event.model_dump_json())
    assert type(parsed) is type(event)
    assert parsed == event
    assert parse_event(event.model_dump_json().encode()) == event


def test_unknown_fields_and_kinds_are_rejected_by_the_strict_parser() -> None:
    with pytest.raises(ValueError):
        parse_event('{"kind": "run.exploded", "run_id": "r", "seq": 1}')
    with pytest.raises(ValueError):
        parse_event('{"kind": "step.started", "run_id": "r", "seq": 1, "step": 1, "extra": 1}')


def test_terminal_kinds() -> None:
    assert [e.kind for e in SAMPLES if is_terminal(e)] == [
        "run.completed",
        "run.failed",
        "run.cancelled",
    ]


def filled_log(steps: int = 3) -> EventLog:
    log = EventLog("r", wall_clock=lambda: 100.0)
    log.emit(RunCreated, agent="support", version="v1", input="hi")
    for step in range(1, steps + 1):
        log.emit(StepStarted, step=step)
    return log


def test_emit_numbers_events_and_refuses_after_the_end() -> None:
    log = filled_log()
    log.emit(RunCancelled, reason="cancelled", steps=3, usage=Usage(), cost_usd=0.0)
    assert [e.seq for e in log.events()] == [1, 2, 3, 4, 5]
    assert {e.ts for e in log.events()} == {100.0}
    assert log.closed and log.last_seq == 5
    assert [e.seq for e in log.after(3)] == [4, 5]
    with pytest.raises(RuntimeError):
        log.emit(StepStarted, step=4)


async def collect(log: EventLog, after: int) -> list[int]:
    seqs: list[int] = []
    async for batch in log.follow(after):
        seqs.extend(e.seq for e in batch)
    return seqs


async def test_follow_from_the_middle_yields_the_rest_and_stops() -> None:
    log = filled_log()
    log.emit(RunCompleted, output="ok", steps=3, usage=Usage(), cost_usd=0.0)
    assert await asyncio.wait_for(collect(log, after=2), timeout=5) == [3, 4, 5]
    assert await asyncio.wait_for(collect(log, after=5), timeout=5) == []


async def test_a_live_follower_gets_new_events_until_the_terminal_one() -> None:
    log = filled_log(steps=1)
    follower = asyncio.create_task(collect(log, after=1))
    await asyncio.sleep(0)  # the follower reads seq 2 and waits
    assert not follower.done()
    log.emit(ModelDelta, step=1, text="Hi")
    await asyncio.sleep(0)
    log.emit(StepStarted, step=2)
    log.emit(RunFailed, code="x", message="m", retryable=False, steps=2, usage=Usage(), cost_usd=0)
    assert await asyncio.wait_for(follower, timeout=5) == [2, 3, 4, 5]
