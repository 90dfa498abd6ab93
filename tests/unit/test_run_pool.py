"""RunPool without Ray: a fake async spawn records which hosts were created."""

from __future__ import annotations

import asyncio

import pytest

from actors.run_pool import RunPool
from agents.errors import Overloaded


class FakeSpawn:
    """Records every host id it is asked to start; can fail or hold chosen hosts."""

    def __init__(self, fail: set[str] | None = None) -> None:
        self.spawned: list[str] = []
        self.fail = fail or set()
        self.gates: dict[str, asyncio.Event] = {}

    async def __call__(self, host_id: str) -> None:
        self.spawned.append(host_id)
        gate = self.gates.get(host_id)
        if gate is not None:
            await gate.wait()
        if host_id in self.fail:
            raise RuntimeError(f"host {host_id} could not start")


async def settle() -> None:
    """Let background spawn tasks and their done callbacks run."""
    for _ in range(5):
        await asyncio.sleep(0)


async def test_runs_are_packed_up_to_runs_per_actor() -> None:
    spawn = FakeSpawn()
    pool = RunPool(runs_per_actor=3, warm_hosts=0, spawn=spawn)
    hosts = [await pool.acquire() for _ in range(3)]
    assert hosts == ["h0", "h0", "h0"]
    assert pool.stats() == {"hosts": 1, "runs": 3, "free_slots": 0}
    assert await pool.acquire() == "h1"  # full: a new host
    assert spawn.spawned == ["h0", "h1"]
    assert pool.stats() == {"hosts": 2, "runs": 4, "free_slots": 2}


async def test_the_least_loaded_host_is_chosen() -> None:
    pool = RunPool(runs_per_actor=3, warm_hosts=1, spawn=FakeSpawn())
    await pool.warm_up()
    assert await pool.acquire() == "h0"  # h0 now 1/3, so a spare h1 is started
    await settle()
    assert await pool.acquire() == "h1"  # 0/3 beats 1/3
    assert await pool.acquire() == "h0"  # a tie goes to the older host
    assert await pool.acquire() == "h1"
    # 2 of 6 slots free is below one warm host's worth (3), so a third host is starting.
    assert pool.stats() == {"hosts": 3, "runs": 4, "free_slots": 5}


async def test_warm_spare_capacity_is_kept_with_one_run_per_actor() -> None:
    spawn = FakeSpawn()
    pool = RunPool(runs_per_actor=1, warm_hosts=2, spawn=spawn)
    await pool.warm_up()
    assert spawn.spawned == ["h0", "h1"]
    assert pool.stats() == {"hosts": 2, "runs": 0, "free_slots": 2}

    first = await pool.acquire()
    second = await pool.acquire()
    await settle()
    assert first != second  # one process per run
    stats = pool.stats()
    assert stats["runs"] == 2
    assert stats["free_slots"] == 2  # two idle hosts are always ready
    assert stats["hosts"] == 4


async def test_acquire_waits_until_its_host_is_ready() -> None:
    spawn = FakeSpawn()
    spawn.gates["h0"] = asyncio.Event()
    pool = RunPool(runs_per_actor=2, warm_hosts=0, spawn=spawn)
    waiting = asyncio.create_task(pool.acquire())
    await settle()
    assert not waiting.done()
    spawn.gates["h0"].set()
    assert await asyncio.wait_for(waiting, 5) == "h0"


async def test_release_frees_a_slot() -> None:
    spawn = FakeSpawn()
    pool = RunPool(runs_per_actor=1, warm_hosts=0, spawn=spawn)
    host = await pool.acquire()
    pool.release(host)
    assert pool.stats() == {"hosts": 1, "runs": 0, "free_slots": 1}
    assert await pool.acquire() == host  # reused, not a new process
    assert spawn.spawned == [host]
    pool.release("h-unknown")  # a release for a host we do not know is harmless
    pool.release(host)
    pool.release(host)  # ... and so is a second release: the load never goes negative
    assert pool.stats()["runs"] == 0


async def test_max_hosts_raises_overloaded_with_a_retry_hint() -> None:
    pool = RunPool(runs_per_actor=1, warm_hosts=0, spawn=FakeSpawn(), max_hosts=2)
    assert {await pool.acquire(), await pool.acquire()} == {"h0", "h1"}
    with pytest.raises(Overloaded) as raised:
        await pool.acquire()
    assert "max_hosts=2" in str(raised.value)
    assert raised.value.retry_after_s > 0
    assert pool.stats() == {"hosts": 2, "runs": 2, "free_slots": 0}


async def test_the_last_slot_below_max_hosts_is_handed_out_without_a_spare() -> None:
    # Warm spares stop at max_hosts; they must not turn a granted slot into Overloaded.
    pool = RunPool(runs_per_actor=1, warm_hosts=1, spawn=FakeSpawn(), max_hosts=2)
    await pool.warm_up()
    assert await pool.acquire() == "h0"
    await settle()
    assert await pool.acquire() == "h1"
    assert pool.stats() == {"hosts": 2, "runs": 2, "free_slots": 0}
    with pytest.raises(Overloaded):
        await pool.acquire()
    assert pool.stats()["runs"] == 2  # the refused acquire took no slot


async def test_a_host_that_failed_to_start_is_never_handed_out() -> None:
    spawn = FakeSpawn(fail={"h0"})
    pool = RunPool(runs_per_actor=4, warm_hosts=0, spawn=spawn)
    with pytest.raises(RuntimeError, match="h0 could not start"):
        await pool.acquire()
    await settle()
    assert pool.stats() == {"hosts": 0, "runs": 0, "free_slots": 0}
    assert await pool.acquire() == "h1"
    assert await pool.acquire() == "h1"
    assert spawn.spawned == ["h0", "h1"]


async def test_a_warm_spare_that_failed_to_start_is_dropped() -> None:
    spawn = FakeSpawn(fail={"h1"})
    pool = RunPool(runs_per_actor=2, warm_hosts=1, spawn=spawn)
    await pool.warm_up()
    assert await pool.acquire() == "h0"  # starts the spare h1 in the background; it fails
    await settle()
    assert "h1" in spawn.spawned
    handed_out = [await pool.acquire() for _ in range(3)]
    await settle()
    assert "h1" not in handed_out
    assert handed_out[0] == "h0"
    assert pool.stats()["runs"] == 4


async def test_concurrent_acquires_waiting_on_a_failing_host_all_fail_and_it_is_dropped() -> None:
    spawn = FakeSpawn(fail={"h0"})
    spawn.gates["h0"] = asyncio.Event()
    pool = RunPool(runs_per_actor=2, warm_hosts=0, spawn=spawn)
    waiting = [asyncio.create_task(pool.acquire()) for _ in range(2)]
    await settle()
    spawn.gates["h0"].set()
    results = await asyncio.gather(*waiting, return_exceptions=True)
    assert all(isinstance(r, RuntimeError) for r in results)
    assert await pool.acquire() == "h1"


async def test_a_restarted_pool_adopts_running_hosts_and_names_new_ones_apart() -> None:
    spawn = FakeSpawn()
    pool = RunPool(runs_per_actor=2, warm_hosts=0, spawn=spawn, id_prefix="e1h")
    pool.adopt({"h0": 2, "h1": 1})
    assert pool.stats() == {"hosts": 2, "runs": 3, "free_slots": 1}
    assert await pool.acquire() == "h1"  # the adopted host with a free slot
    assert await pool.acquire() == "e1h0"  # full: a new host, never an old host's id
    assert spawn.spawned == ["e1h0"]
    pool.release("h0")
    assert pool.stats()["runs"] == 4
