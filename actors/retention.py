"""Retention: runs that ended more than `retention_days` ago are deleted, with their events
and outcomes, effects recorded longer ago leave the effect ledger (a run that ended cannot
resume, so its keys are never asked again), and expired idempotency keys are forgotten.

The run pool (the one actor that outlives everything) sweeps every `SWEEP_EVERY_S`, on the
state it opened itself. A sweep deletes in bounded batches, each one transaction, so it
never holds the state for long; a run whose terminal event is not durable is never touched
(the run store only deletes ended runs). No Ray in here: the ports are the state's stores.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Protocol

from agents.logs import first_traceback

logger = logging.getLogger("rayfleet")

SWEEP_EVERY_S = 600.0
"""Between two sweeps (the first comes one interval after start)."""
DAY_S = 86_400.0


class PurgeRuns(Protocol):
    """The run store's deleting side (actors.state.runs.RunStore)."""

    async def purge_ended(self, before: float, limit: int = 500) -> list[str]: ...


class PurgeKeys(Protocol):
    """The idempotency keys' deleting side (actors.state.runs.IdempotencyKeys)."""

    async def purge_keys(self, before: float) -> None: ...


class ForgetOutcomes(Protocol):
    """The outcome store's deleting side (actors.state.outcomes.OutcomeStore)."""

    async def forget_runs(self, run_ids: list[str]) -> int: ...


class PurgeEffects(Protocol):
    """The effect ledger's deleting side (actors.state.ledger.EffectLedger)."""

    async def purge(self, before: float) -> int: ...


async def sweep(
    runs: PurgeRuns,
    keys: PurgeKeys,
    outcomes: ForgetOutcomes | None = None,
    effects: PurgeEffects | None = None,
    *,
    now: float,
    retention_days: float,
    key_ttl_s: float,
    batch_size: int = 500,
    max_batches: int = 200,
) -> int:
    """Delete what has expired at `now` (unix s); returns how many runs went. At most
    `max_batches` batches of `batch_size` runs: the rest waits for the next sweep."""
    before = now - retention_days * DAY_S
    deleted = 0
    for _ in range(max_batches):
        run_ids = await runs.purge_ended(before, batch_size)
        if run_ids and outcomes is not None:
            await outcomes.forget_runs(run_ids)
        deleted += len(run_ids)
        if len(run_ids) < batch_size:
            break
    if effects is not None:
        await effects.purge(before)
    await keys.purge_keys(now - key_ttl_s)
    return deleted


async def sweep_forever(
    runs: PurgeRuns,
    keys: PurgeKeys,
    outcomes: ForgetOutcomes | None = None,
    effects: PurgeEffects | None = None,
    *,
    retention_days: float | None,
    key_ttl_s: float,
    interval_s: float = SWEEP_EVERY_S,
    clock: Callable[[], float] = time.time,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
) -> None:
    """Sweep every `interval_s`, for ever; a failed sweep is logged and tried next time.
    With `retention_days` None runs are kept for ever (keys still expire)."""
    while True:
        await sleep(interval_s)
        try:
            if retention_days is None:
                await keys.purge_keys(clock() - key_ttl_s)
                continue
            deleted = await sweep(
                runs,
                keys,
                outcomes,
                effects,
                now=clock(),
                retention_days=retention_days,
                key_ttl_s=key_ttl_s,
            )
            if deleted:
                logger.info(
                    "retention: deleted %d runs ended over %g days ago", deleted, retention_days
                )
        except Exception as exc:
            logger.warning("retention sweep failed: %r", exc, exc_info=first_traceback(exc))
