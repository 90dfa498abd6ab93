"""A run that waits for a person, through Ray: its host is killed with `kill -9` while it
waits, the decision afterwards still resumes it exactly once (counted at the tool), and each
decision leads to its own execution count."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from actors.runs_client import Runs
from actors.runtime import ensure_runtime
from agents.approvals import ApprovalRule
from agents.errors import NotPending
from agents.events import Event, is_terminal
from agents.examples import example_specs
from agents.spec import AgentSpec, ToolSpec
from agents.summary import RunSummary
from tests import tools_for_tests
from tests.actors.test_exactly_once import Settings, collect, kill_9_host_of, lines
from tests.fixtures_sim import Sim

pytestmark = pytest.mark.ray


def agent(rule: ApprovalRule | None = None) -> AgentSpec:
    pay = ToolSpec(
        name="pay",
        description="pays",
        parameters={
            "type": "object",
            "properties": {"counter": {"type": "string"}, "amount": {"type": "integer"}},
        },
        function=f"{tools_for_tests.HERE}:pay",
        side_effects=True,
        approval=rule or ApprovalRule(),
    )
    support = next(spec for spec in example_specs() if spec.name == "support")
    return support.model_copy(update={"tools": (pay,)})


async def paused(runs: Runs, run_id: str) -> RunSummary:
    for _ in range(600):  # bounded: 60 s
        summary = await runs.summary(run_id)
        if summary.status == "awaiting_approval":
            return summary
        assert summary.status == "running", summary
        await asyncio.sleep(0.1)
    raise AssertionError("the run never paused")


@pytest.mark.parametrize(
    ("decision", "more", "paid", "output"),
    [
        ("approve", {}, 1, '{"paid":42}'),
        ("edit", {"arguments": {"amount": 7}}, 1, '{"paid":7}'),
        ("reject", {"message": "not today"}, 0, None),
    ],
)
async def test_a_paused_run_outlives_its_host_and_a_decision_resumes_it_once(
    settings_for: Settings,
    namespace: str,
    sim: Sim,
    tmp_path: Path,
    decision: Any,
    more: dict[str, Any],
    paid: int,
    output: str | None,
) -> None:
    settings = settings_for()
    runs = Runs(settings, await ensure_runtime(settings))
    counter = tmp_path / "paid"
    arguments = {"counter": str(counter), "amount": 42}
    sim.script(
        {"type": "tool_call", "name": "pay", "arguments": arguments},
        {"type": "text", "text": "Done."},
    )
    run_id = await runs.start(agent(), "pay 42")
    await paused(runs, run_id)
    await kill_9_host_of(run_id, namespace)  # the host holding the paused run dies

    asked = (await paused(runs, run_id)).approval  # found on another host, still waiting
    assert asked is not None and asked.tool == "pay" and lines(counter) == []
    if "arguments" in more:
        more = {"arguments": {**arguments, **more["arguments"]}}
    await runs.decide(run_id, asked.call_id, decision, "tenant:default", **more)
    with pytest.raises(NotPending):  # deciding twice
        await runs.decide(run_id, asked.call_id, "approve", "tenant:default")

    events: list[Event] = await collect(runs, run_id)
    assert [e.seq for e in events] == list(range(1, len(events) + 1))
    assert [is_terminal(e) for e in events].count(True) == 1
    assert events[-1].kind == "run.completed", events[-1]
    assert [e.kind for e in events].count("approval.requested") == 1
    assert len(lines(counter)) == paid, lines(counter)  # counted at the tool
    result = next(e for e in events if e.kind == "tool.result")
    if output is None:
        assert not result.ok and "not today" in (result.error or "")  # type: ignore[union-attr]
    else:
        assert result.ok and result.output == output  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("on_timeout", "end"), [("reject", "run.completed"), ("fail", "run.failed")]
)
async def test_a_call_nobody_decides_gets_its_declared_outcome_after_the_deadline(
    settings_for: Settings, sim: Sim, tmp_path: Path, on_timeout: Any, end: str
) -> None:
    settings = settings_for(approval_sweep_s=0.2)  # the run pool's deadline sweep
    runs = Runs(settings, await ensure_runtime(settings))
    counter = tmp_path / "paid"
    pay = {"type": "tool_call", "name": "pay", "arguments": {"counter": str(counter), "amount": 1}}
    answer = [{"type": "text", "text": "Not paid."}] if end == "run.completed" else []
    sim.script(pay, *answer)
    run_id = await runs.start(agent(ApprovalRule(timeout_s=1, on_timeout=on_timeout)), "pay 1")

    events = await collect(runs, run_id)  # nobody decides: the deadline does
    assert events[-1].kind == end, events[-1]
    decided = [e for e in events if e.kind == "approval.decided"]
    assert [(d.decision, d.by) for d in decided] == [("timeout", "deadline")]  # type: ignore[union-attr]
    assert lines(counter) == []  # never paid
    if end == "run.failed":
        assert events[-1].code == "approval_timeout"  # type: ignore[union-attr]
