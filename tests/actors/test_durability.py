"""Kill a run's host mid-run: the run resumes on another host from its durable log and ends
as an unfaulted run would, with each side effect once and a stream without gap or dup."""

from __future__ import annotations

import asyncio
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
from agents.spec import AgentSpec
from tests.fixtures_sim import Sim
from tests.helpers import wait_for

pytestmark = pytest.mark.ray

Settings = Callable[..., RuntimeSettings]

LOOKUP = {"type": "tool_call", "name": "lookup_order", "arguments": {"order_id": 1003}}
ANSWER = {"type": "text", "text": "Your order was refunded; the money is back within 5 days."}


def refund(order_id: int) -> dict[str, Any]:
    # Each run refunds its own order: the shop refuses a second refund of one order.
    args = {"order_id": order_id, "reason": "late"}
    return {"type": "tool_call", "name": "issue_refund", "arguments": args}


def support() -> AgentSpec:
    return next(spec for spec in example_specs() if spec.name == "support")


async def collect(runs: Runs, run_id: str, after: int = 0) -> list[Event]:
    events: list[Event] = []
    async with asyncio.timeout(60):
        async for event in runs.events(run_id, after):
            events.append(event)
    return events


def assert_one_clean_stream(events: list[Event]) -> None:
    assert [e.seq for e in events] == list(range(1, len(events) + 1))
    assert [is_terminal(e) for e in events].count(True) == 1 and is_terminal(events[-1])


async def stored_tool_results(settings: RuntimeSettings, run_id: str, count: int) -> None:
    """Wait (bounded) until the run store holds `count` tool results of the run."""
    state = open_state(settings.state_url)
    try:
        for _ in range(300):
            record = await state.runs.load_run(run_id)
            events = record.events if record is not None else []
            if sum(e.kind == "tool.result" for e in events) >= count:
                return
            await asyncio.sleep(0.1)
        raise AssertionError(f"the store did not get {count} tool results of {run_id}")
    finally:
        await state.close()


@pytest.mark.parametrize("kill_during_call", [1, 2, 3])
async def test_killing_the_host_mid_run_resumes_it_to_the_same_end(
    settings_for: Settings, namespace: str, sim: Sim, kill_during_call: int
) -> None:
    runs = Runs(settings := settings_for(), await ensure_runtime(settings))
    # Unfaulted reference run.
    sim.script(LOOKUP, refund(2001), ANSWER)
    reference = await collect(runs, await runs.start(support(), "refund order 1003"))
    assert reference[-1].kind == "run.completed"

    # The same run; model call `kill_during_call` hangs until its host is killed, and the
    # resumed run redoes that call (the script repeats it, without the delay).
    script: list[dict[str, Any]] = [LOOKUP, refund(2002), ANSWER]
    script.insert(kill_during_call - 1, {**script[kill_during_call - 1], "delay_ms": 60_000})
    sim.reset()
    sim.script(*script)
    run_id = await runs.start(support(), "refund order 1003")
    reader = asyncio.create_task(collect(runs, run_id))  # a client attached across the kill
    await asyncio.to_thread(wait_for, lambda: len(sim.requests()) == kill_during_call, 30)
    # The steps before the hanging call are stored (model calls do not wait for the store;
    # a step not stored yet would be redone, and the run would take another path).
    await stored_tool_results(settings, run_id, kill_during_call - 1)
    host = ray.get_actor(HOST_PREFIX + host_of(run_id), namespace=namespace)
    ray.kill(host, no_restart=True)

    events = await reader
    assert_one_clean_stream(events)
    final, expected = events[-1], reference[-1]
    assert final.kind == "run.completed", final
    assert final.output == expected.output  # type: ignore[union-attr]
    assert final.steps == expected.steps  # type: ignore[union-attr]
    refunds = [e for e in events if e.kind == "tool.result" and e.tool == "issue_refund"]  # type: ignore[union-attr]
    assert len(refunds) == 1 and refunds[0].ok  # type: ignore[union-attr]
    # A reader arriving later sees the same log, served by the run's new host.
    assert await collect(Runs(settings, await ensure_runtime(settings)), run_id) == events
    summary = await runs.summary(run_id)
    assert summary.status == "completed" and summary.last_seq == events[-1].seq


async def test_a_run_without_readers_is_resumed_by_the_pool(
    settings_for: Settings, namespace: str, sim: Sim
) -> None:
    runs = Runs(settings := settings_for(), await ensure_runtime(settings))
    sim.script({**LOOKUP, "delay_ms": 60_000}, LOOKUP, refund(2003), ANSWER)
    run_id = await runs.start(support(), "refund order 1003")
    await asyncio.to_thread(wait_for, lambda: len(sim.requests()) == 1, 30)
    ray.kill(ray.get_actor(HOST_PREFIX + host_of(run_id), namespace=namespace), no_restart=True)

    async def completed() -> bool:
        try:
            return (await runs.summary(run_id)).status == "completed"
        except Exception:
            return False

    for _ in range(300):  # nobody reads the stream: the pool's watch alone resumes the run
        if len(sim.requests()) >= 4 and await completed():
            break
        await asyncio.sleep(0.1)
    assert (await runs.summary(run_id)).status == "completed"


async def test_with_the_memory_store_down_the_run_completes_degraded(
    settings_for: Settings, sim: Sim, tmp_path: Path
) -> None:
    # A directory where the memory database should be: it cannot open, the rest of the
    # state (in the same directory) can.
    (tmp_path / "memory.sqlite").mkdir()
    runs = Runs(settings := settings_for(), await ensure_runtime(settings))
    sim.script(ANSWER)
    run_id = await runs.start(support(), "hello again", thread_id="thread-1")
    events = await collect(runs, run_id)
    assert_one_clean_stream(events)
    kinds = [e.kind for e in events]
    assert "memory.degraded" in kinds
    assert events[-1].kind == "run.completed" and events[-1].degraded  # type: ignore[union-attr]
