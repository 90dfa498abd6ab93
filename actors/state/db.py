"""The databases the state layer runs on: SQLite files (embedded) or a PostgreSQL server.

Each concern store (runs, outcomes, memory, ledger, limiter) writes its SQL once, in what
both dialects accept: `?` placeholders, `INSERT ... ON CONFLICT` upserts, and TEXT, BIGINT
and DOUBLE PRECISION columns (booleans as 0/1). A `Database` runs it:

    fetchall / fetchone / execute   one statement; reads see committed data only
    batch([(sql, rows), ...])       many statements, one transaction (a group commit)
    transaction()                   read-modify-write; `tx.lock(key)` serialises writers of
                                    one key (PostgreSQL: an advisory lock; SQLite: every
                                    write transaction holds the file's write lock anyway)

Driver errors leave as `ServiceUnavailable`: the state is down or busy, ask again shortly.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import re
import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol, TypeVar

from actors.datadir import private_dir
from agents.errors import ServiceUnavailable

logger = logging.getLogger("rayfleet")

Row = tuple[Any, ...]
Args = Sequence[object]
Statement = tuple[str, Sequence[Args]]
"""One SQL statement and the argument rows it runs with (executemany)."""
Dialect = Literal["sqlite", "postgresql"]
T = TypeVar("T")


class Transaction(Protocol):
    """Statements inside one open transaction."""

    dialect: Dialect

    async def execute(self, sql: str, args: Args = ()) -> int:
        """Run one statement; returns how many rows it changed."""
        ...

    async def executemany(self, sql: str, rows: Sequence[Args]) -> None: ...

    async def fetchall(self, sql: str, args: Args = ()) -> list[Row]: ...

    async def fetchone(self, sql: str, args: Args = ()) -> Row | None: ...

    async def lock(self, key: str) -> None:
        """Hold `key` until the transaction ends: writers of one key go one at a time."""
        ...

    async def columns(self, table: str) -> set[str]:
        """The columns of `table` (empty if there is no such table): for migrations."""
        ...


Migration = Callable[[Transaction], Awaitable[None]]
"""One forward step of a schema; step i (from 1) brings it to version i."""


@dataclass(frozen=True)
class Schema:
    """A concern's tables: its name and its migrations, oldest first. A store written by an
    older rayfleet is brought forward; one written by a newer rayfleet is refused."""

    concern: str
    steps: tuple[Migration, ...]


class Database(Protocol):
    """One database: a SQLite file or a PostgreSQL server (see the module docstring)."""

    dialect: Dialect

    async def ensure(self, schema: Schema) -> None:
        """Create or upgrade `schema`'s tables (once per process; cheap after that)."""
        ...

    async def fetchall(self, sql: str, args: Args = ()) -> list[Row]: ...

    async def fetchone(self, sql: str, args: Args = ()) -> Row | None: ...

    async def execute(self, sql: str, args: Args = ()) -> int:
        """Run one statement in its own transaction; returns how many rows it changed."""
        ...

    async def batch(self, statements: Sequence[Statement]) -> None:
        """Run every statement with every row of it in one transaction."""
        ...

    def transaction(self) -> Any:
        """`async with db.transaction() as tx:` commits at the end, rolls back on error."""
        ...

    async def close(self) -> None: ...


_VERSIONS = """CREATE TABLE IF NOT EXISTS schema_versions (
    concern TEXT PRIMARY KEY,
    version BIGINT NOT NULL
)"""


async def _migrate(tx: Transaction, schema: Schema) -> None:
    """Bring `schema` to its newest version inside `tx` (which holds its migration lock)."""
    await tx.execute(_VERSIONS)
    row = await tx.fetchone(
        "SELECT version FROM schema_versions WHERE concern = ?", (schema.concern,)
    )
    version = 0 if row is None else int(row[0])
    newest = len(schema.steps)
    if version > newest:
        raise ServiceUnavailable(
            f"the {schema.concern} state was written by a newer rayfleet (schema version "
            f"{version}; this one knows up to {newest}): upgrade this process",
            "state",
            retry_after_s=60.0,
        )
    for number in range(version + 1, newest + 1):
        await schema.steps[number - 1](tx)
    if version < newest:
        await tx.execute(
            "INSERT INTO schema_versions VALUES (?, ?) "
            "ON CONFLICT (concern) DO UPDATE SET version = excluded.version",
            (schema.concern, newest),
        )
        logger.info("%s state: schema %d -> %d", schema.concern, version, newest)


def _unavailable(exc: BaseException) -> ServiceUnavailable:
    # The driver's message names the server and the failure, never the password.
    first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return ServiceUnavailable(
        f"the state database is unavailable: {type(exc).__name__}: {first_line}"[:500], "state"
    )


# -- SQLite -------------------------------------------------------------------------------


class _SqliteTransaction:
    dialect: Dialect = "sqlite"

    def __init__(self, db: SqliteDatabase) -> None:
        self._db = db

    async def execute(self, sql: str, args: Args = ()) -> int:
        return await self._db._on_writer(lambda c: c.execute(sql, args).rowcount)

    async def executemany(self, sql: str, rows: Sequence[Args]) -> None:
        await self._db._on_writer(lambda c: c.executemany(sql, rows))

    async def fetchall(self, sql: str, args: Args = ()) -> list[Row]:
        return await self._db._on_writer(lambda c: list(c.execute(sql, args).fetchall()))

    async def fetchone(self, sql: str, args: Args = ()) -> Row | None:
        row: Row | None = await self._db._on_writer(lambda c: c.execute(sql, args).fetchone())
        return row

    async def lock(self, key: str) -> None:
        """Nothing to do: BEGIN IMMEDIATE took the file's one write lock."""

    async def columns(self, table: str) -> set[str]:
        rows = await self.fetchall(f"PRAGMA table_info({table})")
        return {str(row[1]) for row in rows}


class SqliteDatabase:
    """One SQLite file (WAL), shared with the other processes of this node.

    A writer connection and a reader connection, each used by its own thread: reads never
    wait for a commit's fsync, and see committed data only. Write transactions in this
    process go one at a time (an asyncio lock); across processes SQLite's file lock and
    `busy_timeout_s` order them. `synchronous`: FULL survives a power cut (an fsync per
    commit), NORMAL a process crash."""

    dialect: Dialect = "sqlite"

    def __init__(
        self,
        path: str | Path,
        *,
        synchronous: Literal["NORMAL", "FULL"] = "FULL",
        busy_timeout_s: float = 15.0,
    ) -> None:
        self.path = Path(path)
        private_dir(self.path.parent)
        self._synchronous = synchronous
        self._busy_timeout_s = busy_timeout_s
        self._writer = self._connect()
        self._reader = self._connect()
        self._write_thread = ThreadPoolExecutor(1, thread_name_prefix="rayfleet-sqlite-w")
        self._read_thread = ThreadPoolExecutor(1, thread_name_prefix="rayfleet-sqlite-r")
        self._write_lock: asyncio.Lock | None = None
        self._ready: set[str] = set()

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(
            self.path, check_same_thread=False, isolation_level=None, timeout=self._busy_timeout_s
        )
        db.execute("PRAGMA journal_mode=WAL")
        db.execute(f"PRAGMA synchronous={self._synchronous}")
        return db

    async def _on_writer(self, work: Callable[[sqlite3.Connection], T]) -> T:
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._write_thread, work, self._writer)
        except sqlite3.OperationalError as exc:  # busy past the timeout, disk full, ...
            raise _unavailable(exc) from exc

    async def _on_reader(self, work: Callable[[sqlite3.Connection], T]) -> T:
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._read_thread, work, self._reader)
        except sqlite3.OperationalError as exc:
            raise _unavailable(exc) from exc

    def _lock(self) -> asyncio.Lock:
        if self._write_lock is None:
            self._write_lock = asyncio.Lock()
        return self._write_lock

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[_SqliteTransaction]:
        async with self._lock():
            await self._on_writer(lambda c: c.execute("BEGIN IMMEDIATE"))
            try:
                yield _SqliteTransaction(self)
            except BaseException:
                await self._on_writer(_rollback)
                raise
            await self._on_writer(lambda c: c.execute("COMMIT"))

    async def ensure(self, schema: Schema) -> None:
        if schema.concern in self._ready:
            return
        async with self.transaction() as tx:
            await _migrate(tx, schema)
        self._ready.add(schema.concern)

    async def fetchall(self, sql: str, args: Args = ()) -> list[Row]:
        return await self._on_reader(lambda c: list(c.execute(sql, args).fetchall()))

    async def fetchone(self, sql: str, args: Args = ()) -> Row | None:
        row: Row | None = await self._on_reader(lambda c: c.execute(sql, args).fetchone())
        return row

    async def execute(self, sql: str, args: Args = ()) -> int:
        async with self._lock():
            return await self._on_writer(lambda c: c.execute(sql, args).rowcount)

    async def batch(self, statements: Sequence[Statement]) -> None:
        def run(c: sqlite3.Connection) -> None:
            c.execute("BEGIN IMMEDIATE")
            try:
                for sql, rows in statements:
                    c.executemany(sql, rows)
                c.execute("COMMIT")
            except BaseException:
                _rollback(c)
                raise

        async with self._lock():  # one thread hop for the whole group commit
            await self._on_writer(run)

    async def close(self) -> None:
        for pool, connection in (
            (self._write_thread, self._writer),
            (self._read_thread, self._reader),
        ):
            pool.submit(connection.close).result()
            pool.shutdown()


def _rollback(c: sqlite3.Connection) -> None:
    if c.in_transaction:
        c.execute("ROLLBACK")


# -- PostgreSQL ---------------------------------------------------------------------------


@functools.lru_cache(maxsize=512)
def _pg_sql(sql: str) -> str:
    """`?` placeholders as psycopg's `%s` (our SQL has no `?` or `%` in literals)."""
    return re.sub(r"\?", "%s", sql)


class _PgTransaction:
    dialect: Dialect = "postgresql"

    def __init__(self, conn: Any) -> None:
        self._conn = conn

    async def execute(self, sql: str, args: Args = ()) -> int:
        cur = await self._conn.execute(_pg_sql(sql), args)
        return int(cur.rowcount)

    async def executemany(self, sql: str, rows: Sequence[Args]) -> None:
        if rows:
            async with self._conn.cursor() as cur:
                await cur.executemany(_pg_sql(sql), rows)

    async def fetchall(self, sql: str, args: Args = ()) -> list[Row]:
        cur = await self._conn.execute(_pg_sql(sql), args)
        return list(await cur.fetchall())

    async def fetchone(self, sql: str, args: Args = ()) -> Row | None:
        cur = await self._conn.execute(_pg_sql(sql), args)
        row: Row | None = await cur.fetchone()
        return row

    async def lock(self, key: str) -> None:
        await self._conn.execute("SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))", (key,))

    async def columns(self, table: str) -> set[str]:
        rows = await self.fetchall(
            "SELECT column_name FROM information_schema.columns "
            "WHERE table_schema = current_schema() AND table_name = ?",
            (table,),
        )
        return {str(row[0]) for row in rows}


class PostgresDatabase:
    """A PostgreSQL database through a pool of async psycopg connections, opened on first
    use in the running event loop. `url` holds credentials: it is never logged."""

    dialect: Dialect = "postgresql"

    def __init__(
        self, url: str, *, max_connections: int = 8, connect_timeout_s: float = 10.0
    ) -> None:
        self._url = url
        self._max_connections = max_connections
        self._connect_timeout_s = connect_timeout_s
        self._pool: Any = None
        self._opening: asyncio.Lock | None = None
        self._ready: set[str] = set()

    def __repr__(self) -> str:
        return "PostgresDatabase(<url hidden>)"

    async def _open(self) -> Any:
        if self._pool is not None:
            return self._pool
        from psycopg_pool import AsyncConnectionPool

        if self._opening is None:
            self._opening = asyncio.Lock()
        async with self._opening:
            if self._pool is None:
                pool = AsyncConnectionPool(
                    self._url,
                    min_size=1,
                    max_size=self._max_connections,
                    kwargs={"autocommit": True},
                    timeout=self._connect_timeout_s,
                    # A connection that died with its server is replaced, not handed out.
                    check=AsyncConnectionPool.check_connection,
                    open=False,
                )
                try:
                    await pool.open(wait=True, timeout=self._connect_timeout_s)
                except Exception as exc:
                    await pool.close()
                    raise _unavailable(exc) from exc
                self._pool = pool
        return self._pool

    @asynccontextmanager
    async def _connection(self) -> AsyncIterator[Any]:
        import psycopg

        pool = await self._open()
        try:
            async with pool.connection() as conn:
                yield conn
        except (psycopg.OperationalError, psycopg.InterfaceError) as exc:
            raise _unavailable(exc) from exc
        except Exception as exc:
            from psycopg_pool import PoolTimeout

            if isinstance(exc, PoolTimeout):
                raise _unavailable(exc) from exc
            raise

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[_PgTransaction]:
        async with self._connection() as conn, conn.transaction():
            yield _PgTransaction(conn)

    async def ensure(self, schema: Schema) -> None:
        if schema.concern in self._ready:
            return
        async with self.transaction() as tx:
            # Processes starting together migrate one at a time.
            await tx.lock("rayfleet-migrate")
            await _migrate(tx, schema)
        self._ready.add(schema.concern)

    async def fetchall(self, sql: str, args: Args = ()) -> list[Row]:
        async with self._connection() as conn:
            cur = await conn.execute(_pg_sql(sql), args)
            return list(await cur.fetchall())

    async def fetchone(self, sql: str, args: Args = ()) -> Row | None:
        async with self._connection() as conn:
            cur = await conn.execute(_pg_sql(sql), args)
            row: Row | None = await cur.fetchone()
            return row

    async def execute(self, sql: str, args: Args = ()) -> int:
        async with self._connection() as conn:
            cur = await conn.execute(_pg_sql(sql), args)
            return int(cur.rowcount)

    async def batch(self, statements: Sequence[Statement]) -> None:
        async with self._connection() as conn, conn.transaction(), conn.cursor() as cur:
            for sql, rows in statements:
                if rows:
                    await cur.executemany(_pg_sql(sql), rows)

    async def close(self) -> None:
        if self._pool is not None:
            await self._pool.close()
            self._pool = None
