"""Runs.batches: a run's events as the host encoded them, followed across a host kill with
contiguous seqs, each once, no event decoded on the way."""

from __future__ import annotations

import asyncio

import pytest
import ray

from actors.run_host import host_of
from actors.runs_client import Runs
from actors.runtime import ensure_runtime
from actors.services import HOST_PREFIX
from agents.encoded import EncodedEvent, EventBatch
from tests.actors.test_durability import (
    ANSWER,
    LOOKUP,
    Settings,
    assert_one_clean_stream,
    refund,
    support,
)
from tests.fixtures_sim import Sim
from tests.helpers import wait_for

pytestmark = pytest.mark.ray


async def batches_of(runs: Runs, run_id: str, after: int = 0) -> list[EventBatch]:
    batches: list[EventBatch] = []
    async with asyncio.timeout(60):
        async for batch in runs.batches(run_id, after):
            batches.append(batch)
    return batches


def assert_contiguous(batches: list[EventBatch], after: int = 0) -> None:
    """Each batch starts where the one before ended; only the last one ends the run."""
    starts = [b.first_seq for b in batches]
    assert starts == [after + 1] + [b.last_seq + 1 for b in batches[:-1]]
    assert [b.ended for b in batches] == [False] * (len(batches) - 1) + [True]


async def test_batches_survive_a_host_kill_with_each_seq_once(
    settings_for: Settings, namespace: str, sim: Sim
) -> None:
    runs = Runs(settings := settings_for(), await ensure_runtime(settings))
    sim.script({**LOOKUP, "delay_ms": 60_000}, LOOKUP, refund(2004), ANSWER)
    run_id = await runs.start(support(), "refund order 1003")
    reader = asyncio.create_task(batches_of(runs, run_id))  # attached across the kill
    await asyncio.to_thread(wait_for, lambda: len(sim.requests()) == 1, 30)
    ray.kill(ray.get_actor(HOST_PREFIX + host_of(run_id), namespace=namespace), no_restart=True)

    batches = await reader
    assert_contiguous(batches)
    events = [event for batch in batches for event in batch.events()]
    assert_one_clean_stream(events)
    assert events[-1].kind == "run.completed"
    # The bytes are the per-event frames; a later reader from the middle gets the rest.
    frames = b"".join(batch.frames for batch in batches)
    assert frames == "".join(EncodedEvent.of(e).frame() for e in events).encode()
    rest = await batches_of(runs, run_id, after=3)
    assert_contiguous(rest, after=3)
    assert [e for b in rest for e in b.events()] == events[3:]
