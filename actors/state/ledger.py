"""The effect ledger: what each side-effecting tool call did, by idempotency key.

`EffectLedger` implements `agents.ports.EffectLedger` on the state layer. The ToolPool asks
it before running a side-effecting tool and tells it the outcome after, so a retried or
resumed call with the same key is answered from here and the effect happens once, whichever
process or node the call lands on: every pool opens the same state.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from actors.state.db import Database, Schema, Transaction
from agents.ports import ToolOutcome


async def _v1(tx: Transaction) -> None:
    # The same table as the SQLite file of earlier rayfleets (effects.sqlite), where
    # `created_at REAL` is already 8 bytes: such a file is taken as it is.
    await tx.execute(
        """CREATE TABLE IF NOT EXISTS effects (
            key TEXT PRIMARY KEY,
            outcome TEXT NOT NULL,
            created_at DOUBLE PRECISION NOT NULL
        )"""
    )
    # Retention deletes by age.
    await tx.execute("CREATE INDEX IF NOT EXISTS effects_created_at ON effects (created_at)")


SCHEMA = Schema("ledger", (_v1,))


class EffectLedger:
    """Tool outcomes by idempotency key; the first outcome recorded for a key is kept.

    `clock` stamps `created_at` (unix seconds), for retention (`purge`)."""

    def __init__(self, db: Database, *, clock: Callable[[], float] = time.time) -> None:
        self._db = db
        self._clock = clock

    async def recall(self, key: str) -> ToolOutcome | None:
        """The outcome recorded for `key`, or None if no call with it has been recorded."""
        await self._db.ensure(SCHEMA)
        row = await self._db.fetchone("SELECT outcome FROM effects WHERE key = ?", (key,))
        return None if row is None else ToolOutcome.model_validate_json(str(row[0]))

    async def record(self, key: str, outcome: ToolOutcome) -> None:
        """Record `outcome` for `key`, unless one is recorded already (the first one stands:
        it is what any replay has been answered with)."""
        await self._db.ensure(SCHEMA)
        await self._db.execute(
            "INSERT INTO effects (key, outcome, created_at) VALUES (?, ?, ?) "
            "ON CONFLICT (key) DO NOTHING",
            (key, outcome.model_dump_json(), self._clock()),
        )

    async def purge(self, before: float) -> int:
        """Forget outcomes recorded before `before` (unix s): retention, once their runs are
        past resuming. Returns how many went."""
        await self._db.ensure(SCHEMA)
        return await self._db.execute("DELETE FROM effects WHERE created_at < ?", (before,))
