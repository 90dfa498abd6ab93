"""What the tenant limiter must not lose when its process restarts: dollars settled per
tenant per UTC day, the live run leases, and the last limits pushed.

Writes are group-committed: every write asked for while a commit is in flight goes into the
next one (one transaction), in the order asked. The limiter changes its memory first
(atomically, on its event loop) and answers once the change is durable.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

from actors.state.db import Args, Database, Schema, Statement, Transaction
from agents.errors import Overloaded
from agents.logs import first_traceback

logger = logging.getLogger("rayfleet")

# Today's tables, as earlier rayfleets named them in their own SQLite file (limiter.sqlite).
_LEGACY = (("spend", "limiter_spend"), ("leases", "limiter_leases"), ("limits", "limiter_limits"))


async def _v1(tx: Transaction) -> None:
    if tx.dialect == "sqlite":
        # Only a limiter.sqlite written before the state layer has these (a PostgreSQL
        # database may hold someone else's `spend`: never touched).
        for old, new in _LEGACY:
            if await tx.columns(old) and not await tx.columns(new):
                await tx.execute(f"ALTER TABLE {old} RENAME TO {new}")
        if await tx.columns("limiter_leases") and "seq" not in await tx.columns("limiter_leases"):
            await tx.execute("ALTER TABLE limiter_leases ADD COLUMN seq BIGINT NOT NULL DEFAULT 0")
            # The old file ordered leases by SQLite's rowid; the one place it is read.
            await tx.execute("UPDATE limiter_leases SET seq = rowid")
    await tx.execute(
        """CREATE TABLE IF NOT EXISTS limiter_spend (
            tenant TEXT NOT NULL,
            day BIGINT NOT NULL,
            usd DOUBLE PRECISION NOT NULL,
            PRIMARY KEY (tenant, day)
        )"""
    )
    await tx.execute(
        """CREATE TABLE IF NOT EXISTS limiter_leases (
            lease TEXT PRIMARY KEY,
            tenant TEXT NOT NULL,
            seq BIGINT NOT NULL
        )"""
    )
    await tx.execute("CREATE INDEX IF NOT EXISTS limiter_leases_seq ON limiter_leases (seq)")
    await tx.execute(
        """CREATE TABLE IF NOT EXISTS limiter_limits (
            id BIGINT PRIMARY KEY CHECK (id = 1),
            body TEXT NOT NULL
        )"""
    )


SCHEMA = Schema("limiter", (_v1,))

Write = tuple[str, tuple[object, ...]]
"""One SQL statement and its arguments."""


def add_spend(tenant: str, day: int, usd: float) -> Write:
    """Add `usd` to what `tenant` spent on `day` (days since the epoch, UTC)."""
    return (
        "INSERT INTO limiter_spend (tenant, day, usd) VALUES (?, ?, ?) "
        "ON CONFLICT (tenant, day) DO UPDATE SET usd = limiter_spend.usd + excluded.usd",
        (tenant, day, usd),
    )


def put_lease(lease: str, tenant: str) -> Write:
    """Store a live lease, after every lease stored before it."""
    # One limiter writes leases, so the next number is never taken twice; were it, two
    # leases would only share a place in the order.
    return (
        "INSERT INTO limiter_leases (lease, tenant, seq) "
        "VALUES (?, ?, (SELECT COALESCE(MAX(seq), 0) + 1 FROM limiter_leases)) "
        "ON CONFLICT (lease) DO UPDATE SET tenant = excluded.tenant, seq = excluded.seq",
        (lease, tenant),
    )


def drop_lease(lease: str) -> Write:
    """Forget a lease (released or expired)."""
    return ("DELETE FROM limiter_leases WHERE lease = ?", (lease,))


def put_limits(body: str) -> Write:
    """Replace the stored limits (JSON)."""
    return (
        "INSERT INTO limiter_limits (id, body) VALUES (1, ?) "
        "ON CONFLICT (id) DO UPDATE SET body = excluded.body",
        (body,),
    )


@dataclass
class Saved:
    """The state as last written."""

    spend_usd: dict[str, float] = field(default_factory=dict)
    """Tenant -> dollars settled on the day asked for."""
    leases: dict[str, str] = field(default_factory=dict)
    """Lease id -> tenant, oldest first."""
    limits: str | None = None
    """The last limits written (JSON), if any."""


class LimiterState:
    """The limiter's durable state on one database. Use it from one event loop."""

    def __init__(self, db: Database) -> None:
        self._db = db
        self._pending: list[tuple[Write, asyncio.Future[None]]] = []
        self._committer: asyncio.Task[None] | None = None

    async def load(self, day: int) -> Saved:
        """Everything stored, with the spend of `day`; older days are deleted (a day's
        budget never looks back)."""
        await self._db.ensure(SCHEMA)
        async with self._db.transaction() as tx:
            await tx.execute("DELETE FROM limiter_spend WHERE day < ?", (day,))
            spend = await tx.fetchall("SELECT tenant, usd FROM limiter_spend WHERE day = ?", (day,))
            leases = await tx.fetchall(
                "SELECT lease, tenant FROM limiter_leases ORDER BY seq, lease"
            )
            limits = await tx.fetchone("SELECT body FROM limiter_limits WHERE id = 1")
        return Saved(
            spend_usd={str(tenant): float(usd) for tenant, usd in spend},
            leases={str(lease): str(tenant) for lease, tenant in leases},
            limits=None if limits is None else str(limits[0]),
        )

    def write(self, *writes: Write) -> asyncio.Future[None]:
        """Queue `writes` for the next commit; the future is done once they are durable
        (or fails with `Overloaded`). Needs a running event loop."""
        loop = asyncio.get_running_loop()
        done: asyncio.Future[None] = loop.create_future()
        for write in writes:
            self._pending.append((write, done))
        if not writes:
            done.set_result(None)
        if self._committer is None or self._committer.done():
            self._committer = loop.create_task(self._commit_pending())
        return done

    def write_soon(self, *writes: Write) -> None:
        """Queue `writes` without waiting: for changes that a restart would redo anyway
        (a lease that expired here expires again one TTL after a restart)."""
        self.write(*writes).add_done_callback(_log_failure)

    async def _commit_pending(self) -> None:
        while self._pending:
            batch, self._pending = self._pending, []
            try:
                await self._db.ensure(SCHEMA)
                await self._db.batch(_statements([write for write, _ in batch]))
            except Exception as exc:  # the database's error, as ours: the caller answers 503
                logger.warning("limiter state write failed: %r", exc, exc_info=first_traceback(exc))
                failed = Overloaded(f"the tenant limiter cannot write its state: {exc}", 5.0)
                for _, done in batch:
                    if not done.done():
                        done.set_exception(failed)
                continue
            for _, done in batch:
                if not done.done():
                    done.set_result(None)


def _statements(writes: Sequence[Write]) -> list[Statement]:
    """`writes` in order, a run of one statement as one executemany."""
    statements: list[tuple[str, list[Args]]] = []
    for sql, args in writes:
        if statements and statements[-1][0] == sql:
            statements[-1][1].append(args)
        else:
            statements.append((sql, [args]))
    return list(statements)


def _log_failure(done: asyncio.Future[None]) -> None:
    if not done.cancelled():
        done.exception()  # retrieved: the committer has logged it
