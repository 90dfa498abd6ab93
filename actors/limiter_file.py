"""What the tenant limiter must not lose when its process restarts, in one SQLite file:
dollars settled per tenant per UTC day, the live run leases, and the last limits pushed.

Writes are group-committed: every write asked for while a commit is in flight goes into the
next one (one transaction, one fsync), in the order asked. The limiter changes its memory
first (atomically, on its event loop) and answers once the change is durable.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field

from actors.sqlite_file import connect
from agents.errors import Overloaded

logger = logging.getLogger("rayfleet")

_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS spend (
        tenant TEXT NOT NULL,
        day INTEGER NOT NULL,
        usd REAL NOT NULL,
        PRIMARY KEY (tenant, day)
    )""",
    """CREATE TABLE IF NOT EXISTS leases (
        lease TEXT PRIMARY KEY,
        tenant TEXT NOT NULL
    )""",
    """CREATE TABLE IF NOT EXISTS limits (
        id INTEGER PRIMARY KEY CHECK (id = 1),
        body TEXT NOT NULL
    )""",
)

Write = tuple[str, tuple[object, ...]]
"""One SQL statement and its arguments."""


def add_spend(tenant: str, day: int, usd: float) -> Write:
    return (
        "INSERT INTO spend VALUES (?, ?, ?) "
        "ON CONFLICT (tenant, day) DO UPDATE SET usd = usd + excluded.usd",
        (tenant, day, usd),
    )


def put_lease(lease: str, tenant: str) -> Write:
    return ("INSERT OR REPLACE INTO leases VALUES (?, ?)", (lease, tenant))


def drop_lease(lease: str) -> Write:
    return ("DELETE FROM leases WHERE lease = ?", (lease,))


def put_limits(body: str) -> Write:
    return ("INSERT OR REPLACE INTO limits VALUES (1, ?)", (body,))


@dataclass
class Saved:
    """The state as last written."""

    spend_usd: dict[str, float] = field(default_factory=dict)
    """Tenant -> dollars settled on the day asked for."""
    leases: dict[str, str] = field(default_factory=dict)
    """Lease id -> tenant, oldest first."""
    limits: str | None = None
    """The last limits written (JSON), if any."""


class LimiterFile:
    """The limiter's SQLite file. Commits run in a worker thread, one at a time."""

    def __init__(self, path: str) -> None:
        # Money and run slots: a commit must survive a power cut too.
        self._db = connect(path, synchronous="FULL", schema=_SCHEMA)
        self._lock = threading.Lock()
        self._pending: list[tuple[Write, asyncio.Future[None]]] = []
        self._committer: asyncio.Task[None] | None = None

    def load(self, day: int) -> Saved:
        """Everything stored, with the spend of `day`; older days are deleted (a day's
        budget never looks back)."""
        with self._lock:
            self._db.execute("DELETE FROM spend WHERE day < ?", (day,))
            spend = self._db.execute("SELECT tenant, usd FROM spend WHERE day = ?", (day,))
            saved = Saved(spend_usd={str(t): float(u) for t, u in spend})
            leases = self._db.execute("SELECT lease, tenant FROM leases ORDER BY rowid")
            saved.leases = {str(lease): str(tenant) for lease, tenant in leases}
            row = self._db.execute("SELECT body FROM limits WHERE id = 1").fetchone()
            saved.limits = None if row is None else str(row[0])
        return saved

    def write(self, *writes: Write) -> asyncio.Future[None]:
        """Queue `writes` for the next commit; the future is done once they are durable.
        Needs a running event loop."""
        loop = asyncio.get_running_loop()
        done: asyncio.Future[None] = loop.create_future()
        for write in writes:
            self._pending.append((write, done))
        if not writes:
            done.set_result(None)
        if self._committer is None or self._committer.done():
            self._committer = loop.create_task(self._commit_pending())
        return done

    async def _commit_pending(self) -> None:
        while self._pending:
            batch, self._pending = self._pending, []
            try:
                await asyncio.to_thread(self._commit, [write for write, _ in batch])
            except Exception as exc:  # sqlite3's error, as ours: the caller answers 503
                logger.warning("limiter state write failed: %r", exc)
                failed = Overloaded(f"the tenant limiter cannot write its state: {exc}", 5.0)
                for _, done in batch:
                    if not done.done():
                        done.set_exception(failed)
                continue
            for _, done in batch:
                if not done.done():
                    done.set_result(None)

    def _commit(self, writes: Sequence[Write]) -> None:
        with self._lock:
            self._db.execute("BEGIN")
            try:
                for sql, args in writes:
                    self._db.execute(sql, args)
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise

    def write_soon(self, *writes: Write) -> None:
        """Queue `writes` without waiting: for changes that a restart would redo anyway
        (a lease that expired here expires again one TTL after a restart)."""
        self.write(*writes).add_done_callback(_log_failure)

    def close(self) -> None:
        with self._lock:
            self._db.close()


def _log_failure(done: asyncio.Future[None]) -> None:
    if not done.cancelled():
        done.exception()  # retrieved: the committer has logged it
