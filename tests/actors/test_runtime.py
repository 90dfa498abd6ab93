"""The Ray side on a real local Ray: the named pool, run hosts as processes, runs by id."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from typing import Any

import pytest
import ray

from actors.run_host import host_of, new_run_id
from actors.runs_client import Runs
from actors.runtime import ensure_runtime
from actors.services import HOST_PREFIX, POOL_ACTOR, TOOLS_ACTOR
from actors.settings import RuntimeSettings
from agents.errors import UnknownRun
from agents.events import TERMINAL_KINDS, Event
from agents.examples import example_specs
from agents.spec import AgentSpec
from tests.fixtures_sim import Sim
from tests.helpers import eventually, taken

pytestmark = pytest.mark.ray

Settings = Callable[..., RuntimeSettings]


@pytest.fixture
def support() -> AgentSpec:
    return next(spec for spec in example_specs() if spec.name == "support")


async def collect(runs: Runs, run_id: str, after: int = 0) -> list[Event]:
    events: list[Event] = []
    async with asyncio.timeout(30):
        async for event in runs.events(run_id, after):
            events.append(event)
    return events


async def host_pid(run_id: str, namespace: str) -> int:
    host = ray.get_actor(HOST_PREFIX + host_of(run_id), namespace=namespace)
    pid: int = await host.__ray_call__.remote(lambda _self: os.getpid())
    return pid


def actor_info(name: str, namespace: str) -> dict[str, Any]:
    actor_id = ray.get_actor(name, namespace=namespace)._actor_id.hex()
    info: dict[str, Any] = ray._private.state.actors(actor_id=actor_id)
    return info


async def test_ensure_runtime_twice_returns_the_same_named_detached_pool(
    settings_for: Settings, namespace: str
) -> None:
    settings = settings_for()
    first = await ensure_runtime(settings)
    second = await ensure_runtime(settings)
    assert first._actor_id == second._actor_id
    assert ray.get_actor(POOL_ACTOR, namespace=namespace)._actor_id == first._actor_id
    for name in (POOL_ACTOR, TOOLS_ACTOR, HOST_PREFIX + "h0"):
        info = actor_info(name, namespace)
        assert info["IsDetached"] is True, name
        assert info["State"] == "ALIVE", name
    stats = await first.stats.remote()
    assert stats == {"hosts": 1, "runs": 0, "free_slots": settings.runs_per_actor}


async def test_one_run_per_actor_puts_concurrent_runs_in_different_processes(
    settings_for: Settings, namespace: str, sim: Sim, support: AgentSpec
) -> None:
    settings = settings_for(runs_per_actor=1, warm_run_hosts=1)
    runs = Runs(settings, await ensure_runtime(settings))
    hang = {"type": "text", "text": "x", "delay_ms": 60000}
    sim.script(hang, hang)  # both runs stay in flight until cancelled
    run_ids = await asyncio.gather(
        runs.start(support, "Where is order 1?"), runs.start(support, "Where is order 2?")
    )
    await eventually(lambda: taken(sim), timeout_s=20)

    assert host_of(run_ids[0]) != host_of(run_ids[1])
    pids = {await host_pid(run_id, namespace) for run_id in run_ids}
    assert len(pids) == 2 and os.getpid() not in pids

    assert await asyncio.gather(*(runs.cancel(run_id) for run_id in run_ids)) == [True, True]
    for run_id in run_ids:
        assert (await collect(runs, run_id))[-1].kind == "run.cancelled"


async def test_packing_puts_concurrent_runs_in_one_process(
    settings_for: Settings, namespace: str, sim: Sim, support: AgentSpec
) -> None:
    # The default runs_per_actor packs; warm_run_hosts=0 because with a warm spare the pool
    # picks the least-loaded host, so a second concurrent run goes to the (idle) spare.
    settings = settings_for(warm_run_hosts=0)
    assert settings.runs_per_actor == RuntimeSettings().runs_per_actor > 2
    runs = Runs(settings, await ensure_runtime(settings))
    run_ids = await asyncio.gather(
        runs.start(support, "Where is order 1?"), runs.start(support, "Where is order 2?")
    )
    assert host_of(run_ids[0]) == host_of(run_ids[1])
    assert await host_pid(run_ids[0], namespace) == await host_pid(run_ids[1], namespace)
    for run_id in run_ids:
        assert (await collect(runs, run_id))[-1].kind == "run.completed"


async def test_a_run_is_found_by_id_from_another_client_and_streams_from_the_middle(
    settings_for: Settings, namespace: str, sim: Sim, support: AgentSpec
) -> None:
    settings = settings_for()
    starter = Runs(settings, await ensure_runtime(settings))
    run_id = await starter.start(support, "Where is order 1234?")

    # Another replica: its own client, the pool found by name, no state shared with `starter`.
    other = Runs(settings, ray.get_actor(POOL_ACTOR, namespace=namespace))
    events = await collect(other, run_id)
    kinds = [e.kind for e in events]
    assert kinds[0] == "run.created" and kinds[-1] == "run.completed"
    assert sum(kind in TERMINAL_KINDS for kind in kinds) == 1
    assert [e.seq for e in events] == list(range(1, len(events) + 1))

    summary = await other.summary(run_id)
    assert summary.status == "completed"
    assert summary.last_seq == len(events)
    assert summary.output == events[-1].output  # type: ignore[union-attr]

    for after in (1, 3, len(events) - 1, len(events)):
        assert await collect(other, run_id, after=after) == events[after:]
    assert await other.cancel(run_id) is False  # already ended


async def test_unknown_runs_are_unknown_run(
    settings_for: Settings, namespace: str, support: AgentSpec
) -> None:
    settings = settings_for()
    runs = Runs(settings, await ensure_runtime(settings))
    with pytest.raises(UnknownRun):
        await runs.summary("not-a-run-id")
    with pytest.raises(UnknownRun):
        await runs.summary(new_run_id("ffff"))  # a host that never existed
    with pytest.raises(UnknownRun):
        await runs.summary(new_run_id("h0"))  # the host exists; the run does not
