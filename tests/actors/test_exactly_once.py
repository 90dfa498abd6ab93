"""`kill -9` a run's host at each point around a side-effecting call: the run resumes on
another host and completes, and the payment happened exactly once, counted at the tool.

The moments are picked by conditions, never by sleeping:
- call-not-durable: the run store refuses the pay call's `tool.call` (a SQLite trigger, as a
  store that is down would); a read-only `note` call made just before it in the same reply
  shows the host has reached the pay call. The resumed run asks the model again.
- tool-acting: the tool has paid and is still working (it waits while a hold file exists).
- result-not-durable: the tool has paid and the effect ledger holds its outcome, but the run
  store refuses the call's `tool.result`.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import ray

from actors.run_host import host_of
from actors.runs_client import Runs
from actors.runtime import ensure_runtime
from actors.services import HOST_PREFIX
from actors.settings import RuntimeSettings
from actors.state import open_state
from agents.events import Event, is_terminal
from agents.examples import example_specs
from agents.spec import AgentSpec, ToolSpec
from tests import tools_for_tests
from tests.fixtures_sim import Sim
from tests.helpers import wait_for

pytestmark = pytest.mark.ray

Settings = Callable[..., RuntimeSettings]
FIRST_PAY_ID = "pay-first"
"""The provider's id for the pay call; a redone model call gets another one."""


def agent() -> AgentSpec:
    def tool(name: str, side_effects: bool) -> ToolSpec:
        return ToolSpec(
            name=name,
            description=f"{name}s",
            parameters={"type": "object", "properties": {"counter": {"type": "string"}}},
            function=f"{tools_for_tests.HERE}:{name}",
            side_effects=side_effects,
        )

    support = next(spec for spec in example_specs() if spec.name == "support")
    return support.model_copy(update={"tools": (tool("note", False), tool("pay", True))})


def reply(counter: Path, pay_id: str) -> dict[str, Any]:
    """One model turn calling `note` (read-only), then `pay` (side-effecting)."""
    pay = {"name": "pay", "arguments": {"counter": str(counter), "amount": 42}, "id": pay_id}
    return {
        "type": "tool_call",
        "name": "note",
        "arguments": {"counter": str(counter)},
        "more": [pay],
    }


async def create_run_store(settings: RuntimeSettings) -> None:
    """Open the run store once, so its tables exist before a trigger is put on them."""
    state = open_state(settings.state_url)
    try:
        await state.runs.host_of("none")
    finally:
        await state.close()


def refuse(store_path: str, kind: str) -> Callable[[], None]:
    """Make the run store refuse to take the pay call's event of `kind` (its group commit
    fails and the host keeps retrying); returns what lifts the refusal."""
    with sqlite3.connect(store_path, timeout=10) as db:
        db.execute(
            f"""CREATE TRIGGER refuse_pay BEFORE INSERT ON events
            WHEN json_extract(NEW.event, '$.kind') = '{kind}'
             AND json_extract(NEW.event, '$.call_id') = '{FIRST_PAY_ID}'
            BEGIN SELECT RAISE(ABORT, 'the test holds this event back'); END"""
        )
    db.close()

    def lift() -> None:
        with sqlite3.connect(store_path, timeout=10) as db:
            db.execute("DROP TRIGGER refuse_pay")
        db.close()

    return lift


def lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


def ledger_holds_a_record(ledger_file: str) -> bool:
    if not Path(ledger_file).exists():
        return False
    db = sqlite3.connect(ledger_file, timeout=10)
    try:
        # The ledger creates its table on first use.
        if not db.execute("SELECT 1 FROM sqlite_master WHERE name = 'effects'").fetchone():
            return False
        return bool(db.execute("SELECT count(*) FROM effects").fetchone()[0])
    finally:
        db.close()


async def collect(runs: Runs, run_id: str) -> list[Event]:
    events: list[Event] = []
    async with asyncio.timeout(90):
        async for event in runs.events(run_id):
            events.append(event)
    return events


async def kill_9_host_of(run_id: str, namespace: str) -> None:
    """SIGKILL the process of the run's host actor (not ray.kill: a crash, not a shutdown)."""
    host = ray.get_actor(HOST_PREFIX + host_of(run_id), namespace=namespace)
    pid: int = await host.__ray_call__.remote(lambda _self: os.getpid())
    os.kill(pid, signal.SIGKILL)


@pytest.mark.parametrize("moment", ["call-not-durable", "tool-acting", "result-not-durable"])
async def test_killing_the_host_around_a_side_effect_pays_exactly_once(
    settings_for: Settings, namespace: str, sim: Sim, tmp_path: Path, moment: str
) -> None:
    settings = settings_for()
    # In the state directory, settings.state_url:
    ledger_file, runs_file = str(tmp_path / "effects.sqlite"), str(tmp_path / "runs.sqlite")
    runs = Runs(settings, await ensure_runtime(settings))
    await create_run_store(settings)
    counter = tmp_path / "paid"
    notes = Path(f"{counter}.notes")
    answer = {"type": "text", "text": "Paid."}
    lift: Callable[[], None] | None = None
    if moment == "call-not-durable":
        # The call never reaches the log, so the resumed run asks the model again (and gets
        # a new provider id, as from a real provider).
        sim.script(reply(counter, FIRST_PAY_ID), reply(counter, "pay-redone"), answer)
        refuse(runs_file, "tool.call")  # for the first call's id, for ever
    else:
        # The call is in the log: the resumed run re-issues it; the model is not asked again
        # (the sim fixture fails the test if a scripted reply is left unused).
        sim.script(reply(counter, FIRST_PAY_ID), answer)
        if moment == "tool-acting":
            await asyncio.to_thread(Path(f"{counter}.hold").touch)
        else:
            lift = refuse(runs_file, "tool.result")

    run_id = await runs.start(agent(), "pay 42")
    reader = asyncio.create_task(collect(runs, run_id))  # a client attached across the kill
    if moment == "call-not-durable":
        await asyncio.to_thread(wait_for, lambda: lines(notes), 30)
    elif moment == "tool-acting":
        await asyncio.to_thread(wait_for, lambda: lines(counter), 30)
    else:
        await asyncio.to_thread(wait_for, lambda: ledger_holds_a_record(ledger_file), 30)
    await kill_9_host_of(run_id, namespace)
    await asyncio.to_thread(Path(f"{counter}.hold").unlink, missing_ok=True)
    if lift is not None:
        lift()

    events = await reader
    assert [e.seq for e in events] == list(range(1, len(events) + 1))
    assert [is_terminal(e) for e in events].count(True) == 1
    assert events[-1].kind == "run.completed", events[-1]
    assert len(lines(counter)) == 1, lines(counter)  # paid once, counted at the tool
    paid = [e for e in events if e.kind == "tool.result" and e.tool == "pay"]  # type: ignore[union-attr]
    assert len(paid) == 1 and paid[0].ok, paid  # type: ignore[union-attr]
    # A read-only call is repeated only when its step's model call is redone: that is the
    # price of not waiting for the store before it.
    assert len(lines(notes)) == (2 if moment == "call-not-durable" else 1)
