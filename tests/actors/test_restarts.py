"""kill -9 a shared actor's process: Ray restarts it, callers find it again, runs go on.

(tests/slow/test_chaos.py does this to every process under load, over HTTP.)"""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Callable
from typing import Any

import pytest
import ray

from actors.run_host import host_of
from actors.runs_client import Runs
from actors.runtime import ensure_runtime
from actors.services import HOST_PREFIX, POOL_ACTOR, TOOLS_ACTOR
from actors.settings import RuntimeSettings
from actors.state import open_state
from agents.events import is_terminal
from tests.actors.test_durability import (
    ANSWER,
    LOOKUP,
    assert_one_clean_stream,
    collect,
    support,
)
from tests.fixtures_sim import Sim
from tests.helpers import wait_for

pytestmark = pytest.mark.ray

Settings = Callable[..., RuntimeSettings]


async def kill_9(name: str, namespace: str) -> int:
    """SIGKILL the actor's process (as a crash would), not ray.kill; returns its pid."""
    actor = ray.get_actor(name, namespace=namespace)
    pid: int = await actor.__ray_call__.remote(lambda _self: os.getpid())
    os.kill(pid, signal.SIGKILL)
    return pid


async def pid_of(name: str, namespace: str) -> int:
    actor = ray.get_actor(name, namespace=namespace)
    pid: int = await actor.__ray_call__.remote(lambda _self: os.getpid())
    return pid


async def test_a_run_goes_on_across_a_crash_of_the_tool_pool(
    settings_for: Settings, namespace: str, sim: Sim
) -> None:
    runs = Runs(settings := settings_for(), await ensure_runtime(settings))
    # The first model call waits while the tool pool dies; the run's tool call goes to the
    # restarted pool (the host's call waits for it and asks again), and new runs start.
    # `lookup_order` would run in the host: this run asks for it in the pool.
    in_pool = support().model_copy(
        update={
            "tools": tuple(
                t.model_copy(update={"isolation": "process"}) if t.name == "lookup_order" else t
                for t in support().tools
            )
        }
    )
    sim.script({**LOOKUP, "delay_ms": 1500}, ANSWER, ANSWER)
    run_id = await runs.start(in_pool, "Where is order 1003?")
    reader = asyncio.create_task(collect(runs, run_id))
    await asyncio.to_thread(wait_for, lambda: len(sim.requests()) == 1, 30)
    killed = await kill_9(TOOLS_ACTOR, namespace)

    events = await reader
    assert_one_clean_stream(events)
    assert events[-1].kind == "run.completed", events[-1]
    results = [e for e in events if e.kind == "tool.result"]
    assert results and all(e.ok for e in results), results  # type: ignore[attr-defined]
    assert await pid_of(TOOLS_ACTOR, namespace) != killed
    later = await collect(runs, await runs.start(support(), "Hello"))
    assert later[-1].kind == "run.completed"


async def test_a_restarted_pool_adopts_its_hosts_and_resumes_runs_of_a_host_lost_meanwhile(
    settings_for: Settings, namespace: str, sim: Sim
) -> None:
    settings = settings_for(runs_per_actor=1, warm_run_hosts=1)
    runs = Runs(settings, await ensure_runtime(settings))
    sim.script({**LOOKUP, "delay_ms": 60_000}, LOOKUP, ANSWER, ANSWER)
    run_id = await runs.start(support(), "Where is order 1003?")
    await asyncio.to_thread(wait_for, lambda: len(sim.requests()) == 1, 30)

    # The pool dies, then the run's host, before the pool is back: nobody is watching it
    # and nobody reads the run, so only the restarted pool can resume it.
    await kill_9(POOL_ACTOR, namespace)
    await kill_9(HOST_PREFIX + host_of(run_id), namespace)
    state = open_state(settings.state_url)  # read the state directly: never via the pool
    store = state.runs

    async def ended() -> Any:
        record = await store.load_run(run_id)
        return record is not None and record.events and is_terminal(record.events[-1])

    try:
        for _ in range(600):
            if await ended():
                break
            await asyncio.sleep(0.1)
        record = await store.load_run(run_id)
    finally:
        await state.close()
    assert record is not None
    assert_one_clean_stream(record.events)
    assert record.events[-1].kind == "run.completed", record.events[-1]
    assert record.host_id != host_of(run_id)

    pool = ray.get_actor(POOL_ACTOR, namespace=namespace)
    # The host hands its slot back after the terminal event is stored (a message that may
    # still be on its way): wait for it, bounded.
    for _ in range(300):
        stats = await pool.stats.remote()
        if stats["runs"] == 0:
            break
        await asyncio.sleep(0.1)
    assert stats["hosts"] >= 1 and stats["runs"] == 0, stats
    # Hosts it makes now are named apart from every host of the pool before it.
    later = await runs.start(support(), "Hello")
    assert (await collect(runs, later))[-1].kind == "run.completed"
    assert host_of(later) == record.host_id or host_of(later).startswith("e1h")
