"""Starting a run from a cached view of the pool (actors.host_view) on a real local Ray: a
host at `runs_per_actor` refuses and the run lands on a new host; a cached host killed with
kill -9 is found dead and the run starts on another host, once."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest

from actors.run_host import host_of
from actors.runs_client import Runs
from actors.runtime import ensure_runtime
from actors.services import HOST_PREFIX
from actors.settings import RuntimeSettings
from actors.state import open_state
from tests.actors.test_durability import ANSWER, LOOKUP, collect, support
from tests.actors.test_restarts import kill_9
from tests.fixtures_sim import Sim
from tests.helpers import eventually, taken

pytestmark = pytest.mark.ray

Settings = Callable[..., RuntimeSettings]
HANG = {"type": "text", "text": "x", "delay_ms": 60_000}


async def test_a_full_host_refuses_and_the_run_lands_on_a_new_host(
    settings_for: Settings, namespace: str, sim: Sim
) -> None:
    settings = settings_for(runs_per_actor=2, warm_run_hosts=0)
    pool = await ensure_runtime(settings)
    first, second = Runs(settings, pool), Runs(settings, pool)
    sim.script(HANG, HANG, HANG)
    one = await second.start(support(), "one")  # `second` caches h0 with one run
    two = await first.start(support(), "two")  # h0 is now full; `second` cannot know
    assert host_of(one) == host_of(two) == "h0"

    # `second`'s view still says h0 has room: h0 refuses, the pool makes a host for it.
    three = await second.start(support(), "three")
    assert host_of(three) != "h0"
    stats = await pool.stats.remote()
    assert stats["hosts"] == 2, stats

    await eventually(lambda: taken(sim), timeout_s=30)
    for run_id in (one, two, three):
        assert await first.cancel(run_id) is True
        assert (await collect(first, run_id))[-1].kind == "run.cancelled"


async def test_a_cached_host_killed_with_kill_9_is_skipped_and_the_start_lands_elsewhere(
    settings_for: Settings, namespace: str, sim: Sim
) -> None:
    settings = settings_for(runs_per_actor=2, warm_run_hosts=0)
    runs = Runs(settings, await ensure_runtime(settings))
    sim.script({**LOOKUP, "delay_ms": 60_000}, LOOKUP, ANSWER, ANSWER)
    hanging = await runs.start(support(), "Where is order 1003?")
    await eventually(lambda: asyncio.to_thread(lambda: len(sim.requests()) == 1), timeout_s=30)
    dead = host_of(hanging)
    await kill_9(HOST_PREFIX + dead, namespace)

    # The view still offers the dead host (it has room). No record of the run exists and
    # Ray says the host is dead, so nothing started there: another host takes the run.
    later = await runs.start(support(), "Hello")
    assert host_of(later) != dead
    state = open_state(settings.state_url)
    try:
        # The start left no run on the dead host (`hanging` may have moved on by now).
        assert set(await state.runs.live_runs_on(dead)) <= {hanging}
    finally:
        await state.close()

    # The run on the dead host resumes elsewhere; both end as they would have.
    assert (await collect(runs, hanging))[-1].kind == "run.completed"
    assert (await collect(runs, later))[-1].kind == "run.completed"
