"""Resuming a run from any prefix of its durable event log: the same final state, each side
effect once, and a log with no gap and no duplicate."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from actors.tool_pool import ToolPool
from agents.calls import idempotency_key
from agents.eventlog import EventLog
from agents.events import Event, ModelCompleted, is_terminal
from agents.examples import example_specs, support_tools
from agents.loop import Ports, RunInput, execute_run
from agents.messages import ToolCall
from agents.spec import AgentSpec
from tests.scripted import Reply, ScriptedModel

REQUEST = RunInput(run_id="run-1", input="refund order 1003, it is late")
SCRIPT = [
    Reply(
        "Let me check the order.",
        (ToolCall(id="c1", name="lookup_order", arguments={"order_id": 1003}),),
    ),
    Reply(
        "Refunding it now.",
        (ToolCall(id="c2", name="issue_refund", arguments={"order_id": 1003, "reason": "late"}),),
    ),
    Reply("Order 1003 is refunded; the money is back within 5 days."),
]
REFUND_KEY = idempotency_key("run-1", 2, 0, "issue_refund", {"order_id": 1003, "reason": "late"})


@pytest.fixture(autouse=True)
def _clean_ledger() -> Iterator[None]:
    support_tools.reset_refunds()
    yield
    support_tools.reset_refunds()


def support() -> AgentSpec:
    return next(s for s in example_specs() if s.name == "support")


async def run_from(prefix: list[Event]) -> tuple[list[Event], ScriptedModel]:
    done_calls = sum(isinstance(e, ModelCompleted) for e in prefix)
    model = ScriptedModel(SCRIPT[done_calls:])
    log = EventLog(REQUEST.run_id, prefix)
    await execute_run(support(), REQUEST, Ports(model=model, tools=ToolPool()), log)
    model.check()
    return log.events(), model


def comparable(event: Event) -> dict[str, object]:
    return event.model_dump(exclude={"ts", "latency_ms"})


async def test_resuming_from_every_prefix_reaches_the_same_end_with_one_refund() -> None:
    reference, _ = await run_from([])
    assert reference[-1].kind == "run.completed"
    assert len(support_tools.refunds()) == 1
    for cut in range(1, len(reference)):
        if reference[cut].kind == "tool.call":
            # The loop emits a model.completed and its tool.call events in one go (no await
            # between them), so a durable log never ends between them.
            continue
        support_tools.reset_refunds()
        prefix = reference[:cut]
        if any(e.kind == "tool.result" and e.tool == "issue_refund" for e in prefix):  # type: ignore[union-attr]
            # The refund happened before the host died: its key is already in the ledger.
            await support_tools.issue_refund(1003, "late", REFUND_KEY)
        events, _ = await run_from(prefix)
        assert [e.seq for e in events] == list(range(1, len(events) + 1)), cut
        assert events[:cut] == prefix
        assert [is_terminal(e) for e in events].count(True) == 1
        final = events[-1]
        assert final.kind == "run.completed", (cut, final)
        assert final.output == reference[-1].output  # type: ignore[union-attr]
        assert final.steps == reference[-1].steps  # type: ignore[union-attr]
        assert final.cost_usd == pytest.approx(reference[-1].cost_usd)  # type: ignore[union-attr]
        assert len(support_tools.refunds()) == 1, cut


async def test_a_model_call_cut_mid_stream_is_discarded_then_redone() -> None:
    reference, _ = await run_from([])
    first_delta = next(i for i, e in enumerate(reference) if e.kind == "model.delta")
    events, model = await run_from(reference[: first_delta + 1])
    discarded = events[first_delta + 1]
    assert discarded.kind == "model.discarded" and discarded.step == 1  # type: ignore[union-attr]
    # The redone call streams the whole turn again after the discard.
    redone = "".join(
        e.text
        for e in events[first_delta + 2 :]
        if e.kind == "model.delta" and e.step == 1  # type: ignore[union-attr]
    )
    assert redone == SCRIPT[0].text
    assert len(model.requests) == len(SCRIPT)


async def test_a_resumed_run_redoes_only_the_missing_tool_calls() -> None:
    reference, _ = await run_from([])
    calls = [i for i, e in enumerate(reference) if e.kind == "tool.call"]
    second_call = calls[1]  # the refund was announced but had no result yet
    events, model = await run_from(reference[: second_call + 1])
    results = [e for e in events if e.kind == "tool.result"]
    assert [r.call_id for r in results] == ["c1", "c2"]  # type: ignore[union-attr]
    assert len(model.requests) == 1  # only the final answer was asked for again
    assert len(support_tools.refunds()) == 1


async def test_a_finished_run_is_left_alone() -> None:
    reference, _ = await run_from([])
    events, model = await run_from(reference)
    assert events == reference and model.requests == []


async def test_a_log_missing_announced_tool_calls_redoes_the_model_call() -> None:
    reference, _ = await run_from([])
    completed = next(i for i, e in enumerate(reference) if e.kind == "model.completed")
    prefix = reference[: completed + 1]  # damaged: the step's tool.call event is missing
    model = ScriptedModel(SCRIPT)
    log = EventLog(REQUEST.run_id, prefix)
    await execute_run(support(), REQUEST, Ports(model=model, tools=ToolPool()), log)
    model.check()
    events = log.events()
    assert events[completed + 1].kind == "model.discarded"
    assert events[-1].kind == "run.completed"
