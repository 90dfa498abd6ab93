"""Where a run starts, without Ray: the starter's cached view of the pool, the pool's
loads as the hosts report them, and a host refusing what it has no room for."""

from __future__ import annotations

import asyncio
import tempfile

import pytest

from actors.caches import CacheSettings
from actors.host_view import HostView
from actors.run_host import RunHost, new_run_id
from actors.run_pool import RunPool
from actors.settings import RuntimeSettings, simulator_providers
from actors.tool_pool import ToolPool
from agents.errors import HostFull
from agents.examples import example_specs
from agents.loop import RunInput
from agents.spec import AgentSpec
from serve_app.detached import nothing_started
from tests.fixtures_sim import Sim
from tests.helpers import eventually, taken
from tests.unit.test_run_pool import FakeSpawn, settle


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_a_view_picks_the_least_loaded_host_with_room_and_counts_its_own_starts() -> None:
    view = HostView(capacity=2)
    assert view.pick() is None  # nothing fetched yet: the pool is asked
    view.update({"h0": 1, "h1": 0})
    assert view.pick() == "h1"
    assert view.pick() in {"h0", "h1"}
    assert view.pick() in {"h0", "h1"}
    assert view.pick() is None  # all full by its own count
    assert view.loads() == {"h0": 2, "h1": 2}


def test_a_refusing_host_counts_full_until_the_next_fetch() -> None:
    view = HostView(capacity=3)
    view.update({"h0": 0, "h1": 1})
    view.full("h0")
    assert view.pick() == "h1"
    view.update({"h0": 0, "h1": 2})
    assert view.pick() == "h0"


def test_a_dead_host_is_never_picked_again_even_from_an_older_pool_view() -> None:
    view = HostView(capacity=3)
    view.update({"h0": 0, "h1": 2})
    view.drop("h0")
    view.full("h0")  # a late refusal does not bring it back
    view.took("h0")
    assert view.pick() == "h1"
    view.update({"h0": 0, "h1": 0})  # fetched before the pool saw h0 die
    assert view.loads() == {"h1": 0}


def test_the_view_goes_stale_after_its_max_age() -> None:
    clock = Clock()
    view = HostView(capacity=3, max_age_s=1.0, clock=clock)
    assert not view.fetched and view.stale()
    view.update({"h0": 0})
    assert view.fetched and not view.stale()
    clock.now = 1.0
    assert view.stale()


async def test_the_pool_takes_the_loads_hosts_report_and_keeps_spares_by_them() -> None:
    spawn = FakeSpawn()
    pool = RunPool(runs_per_actor=2, warm_hosts=1, spawn=spawn)
    await pool.warm_up()
    assert pool.loads() == {"h0": 0}
    # Runs were started on h0 without the pool: its report fills it, so a spare is made.
    pool.report("h0", 2)
    await settle()
    assert pool.loads() == {"h0": 2, "h1": 0}
    pool.report("h0", 1)
    pool.report("gone", 1)  # a host the pool does not have is not taken back
    assert pool.loads() == {"h0": 1, "h1": 0}
    assert pool.stats() == {"hosts": 2, "runs": 1, "free_slots": 3}


async def test_acquire_skips_hosts_the_caller_found_full() -> None:
    spawn = FakeSpawn()
    pool = RunPool(runs_per_actor=2, warm_hosts=0, spawn=spawn)
    assert await pool.acquire() == "h0"
    # h0 refused a start (runs were started on it from a cached view): a new host.
    assert await pool.acquire(full=["h0"]) == "h1"
    assert pool.loads() == {"h0": 2, "h1": 1}


async def test_a_host_that_is_not_ready_is_not_in_the_view() -> None:
    spawn = FakeSpawn()
    spawn.gates["h0"] = gate = asyncio.Event()
    pool = RunPool(runs_per_actor=2, warm_hosts=1, spawn=spawn)
    warming = asyncio.create_task(pool.warm_up())
    await settle()
    assert pool.loads() == {}
    gate.set()
    await warming
    assert pool.loads() == {"h0": 0}


def test_a_refusal_proves_nothing_started() -> None:
    # The agent deployment then releases the run's slot with the tenant limiter.
    assert nothing_started(HostFull("run host 'h0' holds runs_per_actor=1 runs", 0))


@pytest.fixture
def support() -> AgentSpec:
    return next(spec for spec in example_specs() if spec.name == "support")


async def test_a_host_at_runs_per_actor_refuses_a_start_until_a_run_ends(
    sim: Sim, support: AgentSpec
) -> None:
    changes: list[str] = []
    settings = RuntimeSettings(
        providers=simulator_providers(sim.base_url),
        runs_per_actor=1,
        cache=CacheSettings(directory=tempfile.mkdtemp(prefix="rayfleet-test-cache-")),
    )
    host = RunHost(
        "h3", settings, ToolPool(), on_run_start=changes.append, on_run_end=changes.append
    )
    try:
        sim.script({"type": "text", "text": "x", "delay_ms": 60000})
        first = await host.start_run(support, RunInput(run_id=new_run_id("h3"), input="hi"))
        await eventually(lambda: taken(sim), timeout_s=10)
        assert changes == ["h3"]  # told so the pool's count follows
        refused = RunInput(run_id=new_run_id("h3"), input="hi")
        with pytest.raises(HostFull, match="runs_per_actor=1"):
            await host.start_run(support, refused)
        assert host.load() == 1  # nothing started

        assert await host.cancel(first) is True

        async def idle() -> bool:
            return host.load() == 0

        await eventually(idle)
        assert changes == ["h3", "h3"]
        assert await host.start_run(support, refused) == refused.run_id
    finally:
        await host.aclose()
