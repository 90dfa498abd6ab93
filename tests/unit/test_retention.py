"""Deleting runs: one at a time (DELETE /v1/runs/{id}) and by age (retention_days), in
bounded batches, never a running run; with their events and outcomes."""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from actors.credentials import TenantContext
from actors.outcomes import RunOutcome
from actors.retention import DAY_S, sweep, sweep_forever
from actors.state import State
from actors.state.db import SqliteDatabase
from actors.state.runs import RunStore
from agents.events import RunCompleted, RunCreated
from agents.examples import example_specs
from agents.loop import RunInput
from agents.messages import Usage
from agents.ports import ToolOutcome


class Clock:
    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def run_id(n: int) -> str:
    return f"run-h0-{n:020d}"


async def start(store: RunStore, n: int, tenant: str = "acme") -> str:
    request = RunInput(run_id=run_id(n), input="hi", tenant=tenant)
    await store.create_run(example_specs()[0], request, TenantContext(tenant=tenant), "h0")
    created = RunCreated(run_id=request.run_id, seq=1, agent="support", version="v1", input="hi")
    await store.append_events({request.run_id: [created]})
    return request.run_id


async def end(store: RunStore, run: str) -> None:
    done = RunCompleted(run_id=run, seq=2, output="ok", steps=1, usage=Usage(), cost_usd=0.01)
    await store.append_events({run: [done]})


def outcome(run: str) -> RunOutcome:
    return RunOutcome(
        run_id=run,
        agent="support",
        version="v1",
        tenant="acme",
        assignment="stable",
        status="completed",
        cost_usd=0.01,
        run_s=1.0,
        ended_at=1.0,
    )


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
async def state(tmp_path: Path, clock: Clock) -> AsyncIterator[State]:
    opened = State(f"sqlite://{tmp_path}", clock=clock)
    try:
        yield opened
    finally:
        await opened.close()


@pytest.fixture
def store(state: State) -> RunStore:
    return state.runs


async def test_delete_takes_an_ended_run_and_its_events_only_for_its_tenant(
    store: RunStore,
) -> None:
    done, running = await start(store, 1), await start(store, 2)
    await end(store, done)

    assert await store.delete_run(done, tenant="globex") == "unknown"  # not theirs
    assert await store.delete_run(running, tenant="acme") == "running"
    assert await store.load_run(running) is not None  # untouched
    assert await store.delete_run(done, tenant="acme") == "deleted"
    assert await store.load_run(done) is None
    assert await store.delete_run(done) == "unknown"  # a second delete finds nothing
    assert await store.delete_run(run_id(99)) == "unknown"
    await end(store, running)
    assert await store.delete_run(running) == "deleted"  # no tenant: the admin's delete


async def test_purge_takes_runs_ended_before_the_cutoff_oldest_first_in_batches(
    store: RunStore, clock: Clock
) -> None:
    runs = [await start(store, n) for n in range(5)]
    for run in runs[:4]:
        await end(store, run)
        clock.now += 10
    # Ended at +0, +10, +20, +30; runs[4] is still running.
    assert await store.purge_ended(clock.now - 25, limit=1) == [runs[0]]
    assert await store.purge_ended(clock.now - 25, limit=10) == [runs[1]]
    assert await store.purge_ended(clock.now + 1_000, limit=10) == runs[2:4]
    assert await store.load_run(runs[4]) is not None  # never a running run
    assert await store.purge_ended(clock.now + 10**9) == []


async def test_a_sweep_deletes_past_retention_with_outcomes_and_expires_keys(
    state: State, store: RunStore, clock: Clock
) -> None:
    outcomes, keys = state.outcomes, state.keys
    old = [await start(store, n) for n in range(7)]
    for run in old:
        await end(store, run)
        await outcomes.record_run(outcome(run))
    await keys.claim_key("old-key", "f", None, clock.now, 60, 60)
    clock.now += 31 * DAY_S
    recent = await start(store, 100)
    await end(store, recent)
    await outcomes.record_run(outcome(recent))
    running = await start(store, 101)
    await keys.claim_key("new-key", "f", None, clock.now, 60, 60)

    deleted = await sweep(
        store, keys, outcomes, now=clock.now, retention_days=30, key_ttl_s=60, batch_size=3
    )

    assert deleted == 7  # three batches: 3, 3, 1
    assert all([await store.load_run(run) is None for run in old])
    assert await store.load_run(recent) is not None
    assert await store.load_run(running) is not None
    assert (await outcomes.version_stats("support", "v1")).runs == 1  # only the recent one
    assert (await keys.claim_key("old-key", "g", None, clock.now, 60, 60)).state == "claimed"
    assert (await keys.claim_key("new-key", "g", None, clock.now, 60, 60)).state == "mismatch"


async def test_a_sweep_is_bounded_per_round(state: State, store: RunStore, clock: Clock) -> None:
    for n in range(5):
        await end(store, await start(store, n))
    clock.now += 2 * DAY_S
    kwargs = {"now": clock.now, "retention_days": 1, "key_ttl_s": 60, "batch_size": 2}
    assert await sweep(store, state.keys, max_batches=1, **kwargs) == 2
    assert await sweep(store, state.keys, max_batches=10, **kwargs) == 3


async def test_the_sweeper_runs_on_its_interval_and_survives_a_failed_sweep(
    state: State, store: RunStore, clock: Clock
) -> None:
    await end(store, await start(store, 1))
    clock.now += 2 * DAY_S
    sleeps: list[float] = []

    class Broken(Exception):
        pass

    class FlakyStore:
        """The real store, whose first purge fails."""

        failed = False

        async def purge_ended(self, before: float, limit: int = 500) -> list[str]:
            if not self.failed:
                self.failed = True
                raise Broken("disk I/O error")
            return await store.purge_ended(before, limit)

    async def sleep(delay_s: float) -> None:
        sleeps.append(delay_s)
        if len(sleeps) > 2:
            raise Broken("stop")  # end the test's loop

    with pytest.raises(Broken, match="stop"):
        await sweep_forever(
            FlakyStore(),
            state.keys,
            retention_days=1,
            key_ttl_s=60,
            interval_s=7.0,
            clock=clock,
            sleep=sleep,
        )
    assert sleeps == [7.0, 7.0, 7.0]
    assert await store.load_run(run_id(1)) is None  # the second sweep did it


async def test_a_store_from_before_retention_gets_end_times(tmp_path: Path) -> None:
    path = tmp_path / "old.sqlite"
    old = sqlite3.connect(path)
    old.execute(
        "CREATE TABLE runs (run_id TEXT PRIMARY KEY, spec TEXT NOT NULL, request TEXT NOT NULL,"
        " context TEXT NOT NULL, host_id TEXT NOT NULL, ended INTEGER NOT NULL DEFAULT 0)"
    )
    old.execute("INSERT INTO runs VALUES ('r1', '{}', '{}', '{}', 'h0', 1)")
    old.commit()
    old.close()
    db = SqliteDatabase(path)
    store = RunStore(db)
    try:
        # Ended before the upgrade: counted from the upgrade, so kept a full retention period.
        assert await store.purge_ended(1.0) == []
        assert len(await store.purge_ended(10.0**12)) == 1
    finally:
        await db.close()


async def test_a_sweep_forgets_effects_recorded_before_the_cutoff(
    state: State, store: RunStore, clock: Clock
) -> None:
    ledger = state.ledger
    await ledger.record("run-old:1:0", ToolOutcome(ok=True, output="refunded"))
    clock.now += 31 * DAY_S
    await ledger.record("run-new:1:0", ToolOutcome(ok=True, output="refunded"))
    await sweep(store, state.keys, effects=ledger, now=clock.now, retention_days=30, key_ttl_s=60)
    assert await ledger.recall("run-old:1:0") is None
    assert await ledger.recall("run-new:1:0") is not None
