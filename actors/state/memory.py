"""The memory store: conversation threads per namespace, on either state backend.

One namespace per tenant. A thread is addressed by (namespace, thread_id), so a thread id
guessed from another namespace finds nothing. Messages are numbered 1, 2, 3 ... per thread;
an append takes the thread's lock, so appends from several processes never collide on a
number and each append's messages stay together.
"""

from __future__ import annotations

from actors.state.db import Database, Schema, Transaction
from agents.messages import Message


async def _v1(tx: Transaction) -> None:
    # The same table and columns as the SQLite file of rayfleet before the state layer
    # (actors/memory.py), so that file is taken over as it is.
    await tx.execute(
        """CREATE TABLE IF NOT EXISTS thread_messages (
            namespace TEXT NOT NULL,
            thread_id TEXT NOT NULL,
            position BIGINT NOT NULL,
            message TEXT NOT NULL,
            PRIMARY KEY (namespace, thread_id, position)
        )"""
    )


_SCHEMA = Schema("memory", (_v1,))


class MemoryStore:
    """Threads of messages in `db`; each thread keeps every message, and a load recalls
    the last `max_messages`."""

    def __init__(self, db: Database, max_messages: int = 200) -> None:
        self._db = db
        self._max_messages = max_messages

    async def load_thread(self, namespace: str, thread_id: str) -> list[Message]:
        """The thread's last `max_messages` messages, oldest first ([] for no thread)."""
        await self._db.ensure(_SCHEMA)
        rows = await self._db.fetchall(
            "SELECT message FROM thread_messages WHERE namespace = ? AND thread_id = ? "
            "ORDER BY position DESC LIMIT ?",
            (namespace, thread_id, self._max_messages),
        )
        return [Message.model_validate_json(row[0]) for row in reversed(rows)]

    async def append_thread(self, namespace: str, thread_id: str, messages: list[Message]) -> None:
        """Add `messages` at the end of the thread (creating it), all or none."""
        await self._db.ensure(_SCHEMA)
        if not messages:
            return
        async with self._db.transaction() as tx:
            await tx.lock(f"thread:{namespace}:{thread_id}")
            row = await tx.fetchone(
                "SELECT COALESCE(MAX(position), 0) FROM thread_messages "
                "WHERE namespace = ? AND thread_id = ?",
                (namespace, thread_id),
            )
            last = 0 if row is None else int(row[0])
            await tx.executemany(
                "INSERT INTO thread_messages (namespace, thread_id, position, message) "
                "VALUES (?, ?, ?, ?)",
                [
                    (namespace, thread_id, last + i, m.model_dump_json())
                    for i, m in enumerate(messages, start=1)
                ],
            )
