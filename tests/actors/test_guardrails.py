"""Guardrails through real Ray hosts and the shared tool-pool actor: a call whose arguments
fail its tool's schema never reaches the tool (counted at the tool), the run's end user
reaches a tool in the pool beside the tenant, and `max_side_effects` holds across a
`kill -9` of the run's host and the resume that follows (the replayed effect counts once).
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from actors.runs_client import Runs
from actors.runtime import ensure_runtime
from actors.settings import RuntimeSettings
from agents.events import RunFailed, ToolResulted, is_terminal
from agents.examples import example_specs
from agents.spec import AgentSpec, ToolSpec
from tests import tools_for_tests
from tests.actors.test_exactly_once import Settings, collect, kill_9_host_of, lines
from tests.fixtures_sim import Sim
from tests.helpers import wait_for

pytestmark = pytest.mark.ray

PAY = ToolSpec(
    name="pay",
    description="pays an amount",
    parameters={
        "type": "object",
        "properties": {"counter": {"type": "string"}, "amount": {"type": "integer"}},
        "required": ["counter", "amount"],
        "additionalProperties": False,
    },
    function=f"{tools_for_tests.HERE}:pay",
    side_effects=True,  # runs in the shared tool-pool actor
)
WHOAMI = ToolSpec(
    name="whoami",
    description="who the run acts for",
    parameters={"type": "object", "properties": {"counter": {"type": "string"}}},
    function=f"{tools_for_tests.HERE}:whoami",
    isolation="process",  # in the tool-pool actor: the user crosses Ray to it
)


def agent(max_side_effects: int = 10) -> AgentSpec:
    support = next(spec for spec in example_specs() if spec.name == "support")
    budgets = support.budgets.model_copy(update={"max_side_effects": max_side_effects})
    return support.model_copy(update={"tools": (PAY, WHOAMI), "budgets": budgets})


def pay(counter: Path, amount: Any, *more: dict[str, Any]) -> dict[str, Any]:
    arguments = {"counter": str(counter), "amount": amount}
    return {"type": "tool_call", "name": "pay", "arguments": arguments, "more": list(more)}


def results(events: list[Any], tool: str) -> list[ToolResulted]:
    return [e for e in events if isinstance(e, ToolResulted) and e.tool == tool]


async def test_schema_invalid_arguments_never_reach_the_tool_in_the_pool(
    settings_for: Settings, sim: Sim, tmp_path: Path
) -> None:
    settings: RuntimeSettings = settings_for()
    runs = Runs(settings, await ensure_runtime(settings))
    counter, users = tmp_path / "paid", tmp_path / "users"
    whoami = {"name": "whoami", "arguments": {"counter": str(users), "user": "mallory"}}
    sim.script(
        pay(counter, "all of it"),  # a string: fails the schema
        pay(counter, 42, whoami),
        {"type": "text", "text": "Paid 42."},
    )
    run_id = await runs.start(agent(), "pay 42", user="cust-7")
    events = await collect(runs, run_id)
    assert events[-1].kind == "run.completed", events[-1]
    assert len(lines(counter)) == 1  # the invalid call never reached the tool
    first, second = results(events, "pay")
    assert not first.ok and first.error_code == "tool_arguments_invalid"
    assert "'amount': must be of type integer, not string" in (first.error or "")
    assert "all of it" not in (first.error or "")
    assert second.ok
    # The tool in the pool got the run's user, not the one the model named.
    assert lines(users) == ["cust-7"]


async def test_max_side_effects_holds_across_a_host_kill_and_resume(
    settings_for: Settings, namespace: str, sim: Sim, tmp_path: Path
) -> None:
    settings: RuntimeSettings = settings_for()
    runs = Runs(settings, await ensure_runtime(settings))
    counter, users = tmp_path / "paid", tmp_path / "users"
    whoami = {"name": "whoami", "arguments": {"counter": str(users)}}
    # Two effects allowed. The first is acting when its host dies; the resumed run replays
    # it from the effect ledger (one effect, counted once), so the second may still run;
    # a third is refused and fails the run.
    sim.script(pay(counter, 1), pay(counter, 2, whoami), pay(counter, 3))
    await asyncio.to_thread(Path(f"{counter}.hold").touch)
    run_id = await runs.start(agent(max_side_effects=2), "pay thrice", user="cust-7")
    reader = asyncio.create_task(collect(runs, run_id))  # a client attached across the kill
    await asyncio.to_thread(wait_for, lambda: lines(counter), 30)  # the tool is acting
    await kill_9_host_of(run_id, namespace)
    await asyncio.to_thread(Path(f"{counter}.hold").unlink)

    events = await reader
    assert [e.seq for e in events] == list(range(1, len(events) + 1))
    assert [is_terminal(e) for e in events].count(True) == 1
    end = events[-1]
    assert isinstance(end, RunFailed) and end.code == "side_effects_exceeded", end
    assert "3 side-effecting tool calls in this run (pay x3)" in end.message
    assert len(lines(counter)) == 2, lines(counter)  # 1 and 2, each once; 3 never
    assert [r.ok for r in results(events, "pay")] == [True, True]
    # The resumed run still acts for the run's user.
    assert lines(users) == ["cust-7"]
