"""The batch journal is written before an item starts, or the item does not start.

A real store object that fails writes (no mocks): while it fails, no run starts and the item
says why; a write that fails a few times and then succeeds is retried, with bounded backoff.
"""

from __future__ import annotations

import asyncio
import json

from actors.batches import JOURNAL_FAILED, BatchRunner, BatchView
from tests.serve.test_batches import FakeLimiter, FakeRuns, FakeStore, job


class FailingStore(FakeStore):
    """Settings in memory; writes to a batch's journal fail while `failures` > 0."""

    def __init__(self, failures: int) -> None:
        super().__init__()
        self.failures = failures
        self.journal_writes = 0

    async def put_setting(self, key: str, value: str | None) -> None:
        if key.endswith("/runs"):
            self.journal_writes += 1
            if self.failures > 0:
                self.failures -= 1
                raise OSError("disk I/O error")
        await super().put_setting(key, value)


class Sleeps:
    """Records the backoff instead of waiting it."""

    def __init__(self) -> None:
        self.delays: list[float] = []

    async def __call__(self, delay_s: float) -> None:
        self.delays.append(delay_s)
        await asyncio.sleep(0)


async def run_batch(store: FailingStore, runs: FakeRuns, limiter: FakeLimiter) -> BatchView:
    sleeps = Sleeps()
    batches = BatchRunner(
        runs, limiter, store, switches_ttl_s=0.0, journal_attempts=4, sleep=sleeps
    )
    submitted = job(["one"], concurrency=1)
    await batches.submit(submitted)
    view = await asyncio.wait_for(batches.wait(submitted.batch_id), 10)
    assert view is not None
    assert all(delay <= 2.0 for delay in sleeps.delays)
    assert sleeps.delays == sorted(sleeps.delays)  # backing off, never faster
    return view


async def test_an_item_whose_journal_cannot_be_stored_does_not_start() -> None:
    runs, limiter, store = FakeRuns(), FakeLimiter(), FailingStore(failures=10**6)
    view = await run_batch(store, runs, limiter)

    assert runs.started == []  # the run was never started
    assert store.journal_writes == 4  # bounded: the attempts allowed, no more
    item = view.items[0]
    assert item.status == "failed" and item.run_id is None
    assert item.error is not None and item.error["code"] == JOURNAL_FAILED
    assert "journal could not be stored" in item.error["message"]
    assert "OSError: disk I/O error" in item.error["message"]
    assert "not started" in item.error["message"]
    assert view.failed == 1 and view.status == "completed"
    assert limiter.released == limiter.leases == ["lease-1"]  # its run slot was given back


async def test_a_journal_write_that_fails_a_few_times_is_retried_and_the_item_runs() -> None:
    runs, limiter, store = FakeRuns(), FakeLimiter(), FailingStore(failures=2)
    view = await run_batch(store, runs, limiter)

    assert runs.started == ["one"]
    assert view.items[0].status == "completed"
    stored = json.loads(store.data[f"batch/{view.batch_id}/runs"])
    assert stored == {"0": "run-0"}
