"""Approvals in the loop: a call that needs a person pauses the run (no terminal event);
a decision on its log resumes it, and the tool runs as decided: approved, edited, or never."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from actors.tool_pool import ToolPool
from agents.approvals import ApprovalRule, compile_condition, decision_fields, paused_s, waiting
from agents.errors import NotPending, RequestInvalid
from agents.eventlog import EventLog
from agents.events import ApprovalDecided, ApprovalRequested, Event, ModelCompleted
from agents.examples import example_specs, support_tools
from agents.loop import Ports, RunInput, execute_run
from agents.messages import ToolCall
from agents.spec import AgentSpec, ToolSpec
from agents.summary import summarize
from tests.scripted import Reply, ScriptedModel

REQUEST = RunInput(run_id="run-1", input="refund order 1003, it is late", tenant="acme")
REFUND = ToolCall(id="c1", name="issue_refund", arguments={"order_id": 1003, "reason": "late"})
SCRIPT = [
    Reply("Refunding it.", (REFUND,)),
    Reply("Done."),
]


@pytest.fixture(autouse=True)
def _clean_ledger() -> Iterator[None]:
    support_tools.reset_refunds()
    yield
    support_tools.reset_refunds()


def guarded(**rule: Any) -> AgentSpec:
    """The support agent with issue_refund waiting for a person."""
    spec = next(s for s in example_specs() if s.name == "support")
    tools = tuple(
        t.model_copy(update={"approval": ApprovalRule(**rule)}) if t.name == "issue_refund" else t
        for t in spec.tools
    )
    return spec.model_copy(update={"tools": tools})


async def run(
    spec: AgentSpec, events: list[Event], script: list[Reply], request: RunInput = REQUEST
) -> list[Event]:
    model = ScriptedModel(script)
    log = EventLog(request.run_id, events)
    await execute_run(spec, request, Ports(model=model, tools=ToolPool()), log)
    model.check()
    return log.events()


def decide(events: list[Event], decision: Any, **more: Any) -> list[Event]:
    log = EventLog(REQUEST.run_id, events)
    log.emit(ApprovalDecided, **decision_fields(events, "c1", decision, "tenant:acme", **more))
    return log.events()


async def paused() -> list[Event]:
    events = await run(guarded(), [], SCRIPT[:1])
    asked = events[-1]
    assert isinstance(asked, ApprovalRequested), asked
    assert asked.call_id == "c1" and asked.arguments == REFUND.arguments
    assert asked.deciders == ("tenant", "admin")
    assert summarize(events).status == "awaiting_approval"
    assert not support_tools.refunds()  # nothing ran
    return events


async def test_an_approved_call_runs_once_and_the_run_completes() -> None:
    events = decide(await paused(), "approve")
    done = await run(guarded(), events, SCRIPT[1:])
    assert done[-1].kind == "run.completed"
    assert [r["order_id"] for r in support_tools.refunds().values()] == [1003]
    result = next(e for e in done if e.kind == "tool.result")
    assert result.ok  # type: ignore[union-attr]


async def test_an_edited_call_runs_with_the_edited_arguments() -> None:
    edited = {"order_id": 1003, "reason": "late (approved by support lead)"}
    done = await run(guarded(), decide(await paused(), "edit", arguments=edited), SCRIPT[1:])
    assert done[-1].kind == "run.completed"
    assert [r["reason"] for r in support_tools.refunds().values()] == [edited["reason"]]


async def test_a_rejected_call_never_runs_and_the_model_hears_why() -> None:
    events = decide(await paused(), "reject", message="refunds over 50 need a manager")
    model = ScriptedModel(SCRIPT[1:])
    log = EventLog(REQUEST.run_id, events)
    await execute_run(guarded(), REQUEST, Ports(model=model, tools=ToolPool()), log)
    assert log.events()[-1].kind == "run.completed"
    assert not support_tools.refunds()
    told = model.requests[-1][-1]
    assert (
        told.role == "tool"
        and "refunds over 50 need a manager" in json.loads(told.content)["error"]
    )


async def test_a_resumed_paused_run_waits_again_without_asking_twice() -> None:
    events = await paused()
    again = await run(guarded(), events, [])
    assert again == events  # no second request, no terminal event
    assert not support_tools.refunds()


async def test_a_timeout_rejects_or_fails_as_the_tool_declares() -> None:
    rejected = decide(await paused(), "timeout")
    done = await run(guarded(), rejected, SCRIPT[1:])
    assert done[-1].kind == "run.completed" and not support_tools.refunds()

    strict = guarded(on_timeout="fail")
    events = await run(strict, [], SCRIPT[:1])
    failed = await run(strict, decide(events, "timeout"), [])
    end = failed[-1]
    assert end.kind == "run.failed" and end.code == "approval_timeout"  # type: ignore[union-attr]
    assert not support_tools.refunds()


async def test_only_calls_the_rule_picks_wait() -> None:
    small = guarded(when="args.order_id > 5000")  # 1003: not picked
    done = await run(small, [], SCRIPT)
    assert done[-1].kind == "run.completed" and len(support_tools.refunds()) == 1
    support_tools.reset_refunds()
    elsewhere = guarded(tenants=("globex",))  # acme's runs do not ask
    done = await run(elsewhere, [], SCRIPT)
    assert not any(isinstance(e, ApprovalRequested) for e in done)


async def test_a_shadow_never_asks() -> None:
    # Its side-effecting calls go to the shadow's tool port, which replays the primary's
    # recorded result and never runs the tool (actors/run_host.py _ShadowTools); a
    # read-only tool that needs a person is not run at all.
    shadow = REQUEST.model_copy(update={"assignment": "shadow", "primary_run_id": "run-0"})
    done = await run(guarded(), [], SCRIPT, shadow)
    assert done[-1].kind == "run.completed"
    assert not any(isinstance(e, ApprovalRequested) for e in done)

    spec = guarded()
    looked_up = spec.model_copy(
        update={
            "tools": tuple(
                t.model_copy(update={"approval": ApprovalRule()}) if t.name == "lookup_order" else t
                for t in spec.tools
            )
        }
    )
    lookup = ToolCall(id="c1", name="lookup_order", arguments={"order_id": 1003})
    done = await run(looked_up, [], [Reply("Looking.", (lookup,)), Reply("Done.")], shadow)
    result = next(e for e in done if e.kind == "tool.result")
    assert not result.ok and "not run in a shadow" in (result.error or "")  # type: ignore[union-attr]


async def test_deciding_what_does_not_wait_is_not_pending() -> None:
    events = await paused()
    with pytest.raises(NotPending):
        decision_fields(events, "c9", "approve", "admin")
    decided = decide(events, "approve")
    with pytest.raises(NotPending):  # twice
        decision_fields(decided, "c1", "reject", "admin")
    with pytest.raises(RequestInvalid):
        decision_fields(events, "c1", "edit", "admin")  # an edit without arguments
    with pytest.raises(RequestInvalid):
        decision_fields(events, "c1", "approve", "admin", arguments={"order_id": 1})


async def test_time_spent_waiting_is_not_the_runs() -> None:
    events = await paused()
    asked = events[-1]
    assert waiting(events) == asked
    assert paused_s(events, asked.ts + 30) == pytest.approx(30)
    decided = decide(events, "approve")
    end = decided[-1].ts
    assert paused_s(decided, end + 1000) == pytest.approx(end - asked.ts)
    assert waiting(decided) is None
    assert not any(isinstance(e, ModelCompleted) for e in decided[len(events) :])


@pytest.mark.parametrize(
    ("source", "arguments", "matches"),
    [
        ("args.amount > 100", {"amount": 150}, True),
        ("args.amount > 100", {"amount": 100}, False),
        ("args.amount > 100", {}, False),  # missing: no match
        ("args.amount > 100", {"amount": "lots"}, False),  # not comparable: no match
        ("args['order-id'] == 7 and not args.test", {"order-id": 7, "test": False}, True),
        ("args.country in ['DE', 'FR'] or args.amount >= 1000", {"country": "US"}, False),
        ("10 < args.amount <= 20", {"amount": 20}, True),
    ],
)
def test_the_rule_language(source: str, arguments: dict[str, Any], matches: bool) -> None:
    assert compile_condition(source)(arguments) is matches


@pytest.mark.parametrize(
    "source",
    [
        "__import__('os').system('true')",
        "args.amount.__class__",
        "len(args)",
        "args.amount + 1 > 2",
        "[x for x in args]",
        "args.amount >",
        "lambda: 1",
    ],
)
def test_anything_else_is_refused_at_load(source: str) -> None:
    with pytest.raises(ValueError, match=r"approval\.when"):
        ApprovalRule(when=source)


def test_required_is_a_rule_with_every_default() -> None:
    tool = ToolSpec(name="refund", description="refunds", function="a:b", approval="required")
    assert tool.approval == ApprovalRule()
    with pytest.raises(ValueError, match="approval"):
        ToolSpec(name="refund", description="refunds", function="a:b", approval="sometimes")
