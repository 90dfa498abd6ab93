"""The memory store: conversation threads per namespace, in SQLite on local disk.

One namespace per tenant (issue 4 adds tenants; today every run uses "default"). A thread
is addressed by (namespace, thread_id), so a thread id guessed from another namespace
finds nothing.
"""

from __future__ import annotations

import asyncio
import threading

import ray

from actors.sqlite_file import connect
from agents.messages import Message

_SCHEMA = """
CREATE TABLE IF NOT EXISTS thread_messages (
    namespace TEXT NOT NULL,
    thread_id TEXT NOT NULL,
    position INTEGER NOT NULL,
    message TEXT NOT NULL,
    PRIMARY KEY (namespace, thread_id, position)
)
"""


class MemoryStore:
    """Threads of messages. SQLite calls run in a worker thread, one at a time."""

    def __init__(self, path: str, max_messages: int = 200) -> None:
        self._db = connect(path, synchronous="FULL", schema=[_SCHEMA])
        self._lock = threading.Lock()
        self._max_messages = max_messages

    async def load_thread(self, namespace: str, thread_id: str) -> list[Message]:
        """The thread's last `max_messages` messages, oldest first."""
        return await asyncio.to_thread(self._load, namespace, thread_id)

    async def append_thread(self, namespace: str, thread_id: str, messages: list[Message]) -> None:
        await asyncio.to_thread(self._append, namespace, thread_id, messages)

    def _load(self, namespace: str, thread_id: str) -> list[Message]:
        with self._lock:
            rows = self._db.execute(
                "SELECT message FROM thread_messages WHERE namespace = ? AND thread_id = ? "
                "ORDER BY position DESC LIMIT ?",
                (namespace, thread_id, self._max_messages),
            ).fetchall()
        return [Message.model_validate_json(row[0]) for row in reversed(rows)]

    def _append(self, namespace: str, thread_id: str, messages: list[Message]) -> None:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                (last,) = self._db.execute(
                    "SELECT COALESCE(MAX(position), 0) FROM thread_messages "
                    "WHERE namespace = ? AND thread_id = ?",
                    (namespace, thread_id),
                ).fetchone()
                self._db.executemany(
                    "INSERT INTO thread_messages VALUES (?, ?, ?, ?)",
                    [
                        (namespace, thread_id, last + i, m.model_dump_json())
                        for i, m in enumerate(messages, start=1)
                    ],
                )
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise

    def close(self) -> None:
        with self._lock:
            self._db.close()


MemoryStoreActor = ray.remote(num_cpus=0, max_concurrency=64)(MemoryStore)  # type: ignore[call-overload]
