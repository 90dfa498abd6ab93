"""The effect ledger: what each side-effecting tool call did, by idempotency key, in SQLite.

`SqliteEffectLedger` implements `agents.ports.EffectLedger` on a local file; the ToolPool asks
it before running a side-effecting tool and tells it the outcome after, so a retried or
resumed call with the same key is answered from here and the effect happens once. Several
processes on one node may share the file (WAL, a busy timeout); `EffectLedgerActor` is the
thin Ray shell for pools on other nodes, reached through `RemoteEffectLedger`.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from typing import Any

import ray

from actors.sqlite_file import connect
from agents.ports import ToolOutcome

_SCHEMA = """
CREATE TABLE IF NOT EXISTS effects (
    key TEXT PRIMARY KEY,
    outcome TEXT NOT NULL,
    created_at REAL NOT NULL
)
"""


class SqliteEffectLedger:
    """Tool outcomes by idempotency key; the first outcome recorded for a key is kept.

    SQLite calls run in a worker thread, one at a time. `clock` stamps `created_at` (unix
    seconds), for a later clean-up of old keys."""

    def __init__(
        self, path: str, *, busy_timeout_s: float = 5.0, clock: Callable[[], float] = time.time
    ) -> None:
        # A recorded effect must survive a power cut, not only a process crash.
        self._db = connect(
            path, synchronous="FULL", schema=[_SCHEMA], busy_timeout_s=busy_timeout_s
        )
        self._lock = threading.Lock()
        self._clock = clock

    async def recall(self, key: str) -> ToolOutcome | None:
        """The outcome recorded for `key`, or None if no call with it has been recorded."""
        text = await asyncio.to_thread(self._recall, key)
        return None if text is None else ToolOutcome.model_validate_json(text)

    async def record(self, key: str, outcome: ToolOutcome) -> None:
        """Record `outcome` for `key`, unless one is recorded already (the first one stands:
        it is what any replay has been answered with)."""
        await asyncio.to_thread(self._record, key, outcome.model_dump_json(), self._clock())

    async def purge(self, before: float) -> int:
        """Forget outcomes recorded before `before` (unix s): retention, once their runs are
        past resuming. Returns how many went."""
        return await asyncio.to_thread(self._purge, before)

    def _purge(self, before: float) -> int:
        with self._lock:
            return self._db.execute("DELETE FROM effects WHERE created_at < ?", (before,)).rowcount

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def _recall(self, key: str) -> str | None:
        with self._lock:
            row = self._db.execute("SELECT outcome FROM effects WHERE key = ?", (key,)).fetchone()
        return None if row is None else str(row[0])

    def _record(self, key: str, outcome: str, created_at: float) -> None:
        with self._lock:
            self._db.execute(
                "INSERT OR IGNORE INTO effects (key, outcome, created_at) VALUES (?, ?, ?)",
                (key, outcome, created_at),
            )


class RemoteEffectLedger:
    """An `EffectLedger` over an `EffectLedgerActor` handle: what a ToolPool on another node
    is given. Any Ray error (the actor died) reaches the pool as an exception, which it
    treats as the ledger being down."""

    def __init__(self, actor: Any) -> None:
        self._actor = actor

    async def recall(self, key: str) -> ToolOutcome | None:
        outcome: ToolOutcome | None = await self._actor.recall.remote(key)
        return outcome

    async def record(self, key: str, outcome: ToolOutcome) -> None:
        await self._actor.record.remote(key, outcome)


# Ray's stubs lack actor options (max_concurrency) in the keyword overload of `remote`.
EffectLedgerActor = ray.remote(num_cpus=0, max_concurrency=64)(SqliteEffectLedger)  # type: ignore[call-overload]
