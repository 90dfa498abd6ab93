"""The run store: every run's spec, request, host and durable event log, in SQLite.

The event log is the checkpoint: a run's state after any step is the fold of its events
(agents.replay), so a run whose host dies is resumed from its last durable event by
another host. Run hosts write events in group commits (one call per host per flush).
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from typing import Literal

import ray
from pydantic import BaseModel, ConfigDict

from actors.credentials import TenantContext
from actors.sqlite_file import connect
from agents.events import Event, event_adapter, is_terminal
from agents.loop import RunInput
from agents.spec import AgentSpec

_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS runs (
        run_id TEXT PRIMARY KEY,
        spec TEXT NOT NULL,
        request TEXT NOT NULL,
        context TEXT NOT NULL,
        host_id TEXT NOT NULL,
        ended INTEGER NOT NULL DEFAULT 0
    )""",
    "CREATE INDEX IF NOT EXISTS runs_by_host ON runs (host_id, ended)",
    """CREATE TABLE IF NOT EXISTS settings (
        key TEXT PRIMARY KEY,
        value TEXT NOT NULL
    )""",
    """CREATE TABLE IF NOT EXISTS events (
        run_id TEXT NOT NULL,
        seq INTEGER NOT NULL,
        event TEXT NOT NULL,
        PRIMARY KEY (run_id, seq)
    )""",
    # Idempotency-Key claims (serve_app.idempotency): scope = tenant, endpoint and key.
    """CREATE TABLE IF NOT EXISTS idempotency (
        scope TEXT PRIMARY KEY,
        fingerprint TEXT NOT NULL,
        result TEXT,
        done INTEGER NOT NULL DEFAULT 0,
        created_at REAL NOT NULL
    )""",
    "CREATE INDEX IF NOT EXISTS idempotency_by_age ON idempotency (created_at)",
)


class RunRecord(BaseModel):
    """What a host needs to resume a run."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    spec: AgentSpec
    request: RunInput
    context: TenantContext
    host_id: str
    events: list[Event]


class KeyClaim(BaseModel):
    """The answer to claiming an idempotency key (RunStore.claim_key)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    state: Literal["claimed", "done", "pending", "mismatch"]
    """claimed: ours to act on; done: `result` is the first request's; pending: the first
    request is still being handled; mismatch: the key was used with another request."""
    result: str | None = None


DeleteOutcome = Literal["deleted", "running", "unknown"]


class RunStore:
    """SQLite behind one lock; every call runs in a worker thread. No Ray in here.
    `clock` (unix seconds) stamps when runs ended."""

    def __init__(self, path: str, clock: Callable[[], float] = time.time) -> None:
        # WAL + FULL: the WAL is fsynced at every commit, so a committed event survives a
        # power cut or an OS crash, not only a process crash (NORMAL could lose the last
        # commits, and a resumed run would then redo steps). Run hosts group their events
        # into one commit per flush, which keeps the cost (benchmarks/store_commit.py).
        self._db = connect(path, synchronous="FULL", schema=_SCHEMA)
        self._migrate()
        self._lock = threading.Lock()
        self._clock = clock

    def _migrate(self) -> None:
        """Bring a store written by an older rayfleet up to this schema."""
        columns = {row[1] for row in self._db.execute("PRAGMA table_info(runs)")}
        if "context" not in columns:  # before tenants: every run was the default tenant's
            self._db.execute(
                "ALTER TABLE runs ADD COLUMN context TEXT NOT NULL "
                """DEFAULT '{"tenant": "default"}'"""
            )
        if "ended_at" not in columns:  # before retention: runs that ended, end now
            self._db.execute("ALTER TABLE runs ADD COLUMN ended_at REAL")
            self._db.execute("UPDATE runs SET ended_at = ? WHERE ended = 1", (time.time(),))
        self._db.execute("CREATE INDEX IF NOT EXISTS runs_by_end ON runs (ended, ended_at)")

    async def create_run(
        self, spec: AgentSpec, request: RunInput, context: TenantContext, host_id: str
    ) -> None:
        row = (
            request.run_id,
            spec.model_dump_json(),
            request.model_dump_json(),
            context.model_dump_json(),
            host_id,
        )
        await asyncio.to_thread(
            self._write,
            # OR IGNORE: a create asked again after the store restarted mid-call is a no-op.
            "INSERT OR IGNORE INTO runs (run_id, spec, request, context, host_id) "
            "VALUES (?, ?, ?, ?, ?)",
            [row],
        )

    async def append_events(self, batch: dict[str, list[Event]]) -> None:
        """Persist new events of many runs in one transaction (a host's group commit)."""
        rows = [(run_id, e.seq, e.model_dump_json()) for run_id, es in batch.items() for e in es]
        now = self._clock()
        ended = [(now, run_id) for run_id, es in batch.items() if es and is_terminal(es[-1])]
        await asyncio.to_thread(self._append, rows, ended)

    async def move_run(self, run_id: str, host_id: str) -> None:
        await asyncio.to_thread(
            self._write, "UPDATE runs SET host_id = ? WHERE run_id = ?", [(host_id, run_id)]
        )

    async def load_run(self, run_id: str) -> RunRecord | None:
        return await asyncio.to_thread(self._load, run_id)

    async def host_of(self, run_id: str) -> str | None:
        rows = await asyncio.to_thread(
            self._read, "SELECT host_id FROM runs WHERE run_id = ?", (run_id,)
        )
        return str(rows[0][0]) if rows else None

    async def live_runs_on(self, host_id: str) -> list[str]:
        """Runs on `host_id` whose terminal event is not durable yet."""
        rows = await asyncio.to_thread(
            self._read, "SELECT run_id FROM runs WHERE host_id = ? AND ended = 0", (host_id,)
        )
        return [str(row[0]) for row in rows]

    async def live_hosts(self) -> list[str]:
        """Hosts with runs whose terminal event is not durable yet (a restarted pool resumes
        those of hosts that died while it was down)."""
        rows = await asyncio.to_thread(
            self._read, "SELECT DISTINCT host_id FROM runs WHERE ended = 0", ()
        )
        return [str(row[0]) for row in rows]

    async def put_setting(self, key: str, value: str | None) -> None:
        """Shared, durable settings (kill switches, rollbacks); None deletes the key."""
        if value is None:
            await asyncio.to_thread(self._write, "DELETE FROM settings WHERE key = ?", [(key,)])
        else:
            await asyncio.to_thread(
                self._write, "INSERT OR REPLACE INTO settings VALUES (?, ?)", [(key, value)]
            )

    async def settings(self, prefix: str) -> dict[str, str]:
        """Every setting whose key starts with `prefix` (a key range: uses the primary key,
        and '_' or '%' in a prefix are plain characters)."""
        sql = "SELECT key, value FROM settings"
        args: tuple[str, ...] = ()
        if prefix:
            sql += " WHERE key >= ? AND key < ?"
            args = (prefix, prefix[:-1] + chr(ord(prefix[-1]) + 1))
        rows = await asyncio.to_thread(self._read, sql, args)
        return {str(k): str(v) for k, v in rows}

    # -- deletion and retention ---------------------------------------------------------

    async def delete_run(self, run_id: str, tenant: str | None = None) -> DeleteOutcome:
        """Delete an ended run (record and events). `unknown` if there is no such run or it
        is not `tenant`'s (None: any tenant's); `running` (nothing deleted) if its terminal
        event is not durable yet."""
        return await asyncio.to_thread(self._delete_run, run_id, tenant)

    async def purge_ended(self, before: float, limit: int = 500) -> list[str]:
        """Delete up to `limit` runs that ended before `before` (unix s), oldest first, with
        their events, in one transaction; returns their ids. Running runs are never touched."""
        return await asyncio.to_thread(self._purge_ended, before, limit)

    # -- idempotency keys ---------------------------------------------------------------

    async def claim_key(
        self,
        scope: str,
        fingerprint: str,
        proposed: str | None,
        now: float,
        ttl_s: float,
        pending_s: float,
    ) -> KeyClaim:
        """Claim an idempotency key atomically. A new key (or one older than `ttl_s`, or one
        whose first request has been pending for over `pending_s`: its caller died) is
        `claimed`; its `result` is `proposed`, or the id a dead claimer had proposed."""
        args = (scope, fingerprint, proposed, now, ttl_s, pending_s)
        return await asyncio.to_thread(self._claim_key, *args)

    async def finish_key(self, scope: str, result: str) -> None:
        """Record what the claimed key's request created."""
        sql = "UPDATE idempotency SET result = ?, done = 1 WHERE scope = ?"
        await asyncio.to_thread(self._write, sql, [(result, scope)])

    async def release_key(self, scope: str) -> None:
        """Give up a claim whose request failed, so a retry with the key may try again."""
        sql = "DELETE FROM idempotency WHERE scope = ? AND done = 0"
        await asyncio.to_thread(self._write, sql, [(scope,)])

    async def purge_keys(self, before: float) -> None:
        """Forget idempotency keys claimed before `before` (unix s): they have expired."""
        sql = "DELETE FROM idempotency WHERE created_at < ?"
        await asyncio.to_thread(self._write, sql, [(before,)])

    def _delete_run(self, run_id: str, tenant: str | None) -> DeleteOutcome:
        with self._lock:
            row = self._db.execute(
                "SELECT context, ended FROM runs WHERE run_id = ?", (run_id,)
            ).fetchone()
            if row is None:
                return "unknown"
            if tenant is not None and TenantContext.model_validate_json(row[0]).tenant != tenant:
                return "unknown"
            if not row[1]:
                return "running"
            self._delete([run_id])
            return "deleted"

    def _purge_ended(self, before: float, limit: int) -> list[str]:
        with self._lock:
            rows = self._db.execute(
                "SELECT run_id FROM runs WHERE ended = 1 AND ended_at < ? "
                "ORDER BY ended_at LIMIT ?",
                (before, limit),
            ).fetchall()
            ids = [str(row[0]) for row in rows]
            if ids:
                self._delete(ids)
            return ids

    def _delete(self, run_ids: list[str]) -> None:
        """Delete runs and their events in one transaction (under the lock)."""
        self._db.execute("BEGIN")
        try:
            keys = [(run_id,) for run_id in run_ids]
            self._db.executemany("DELETE FROM events WHERE run_id = ?", keys)
            self._db.executemany("DELETE FROM runs WHERE run_id = ? AND ended = 1", keys)
            self._db.execute("COMMIT")
        except BaseException:
            self._db.execute("ROLLBACK")
            raise

    def _claim_key(
        self,
        scope: str,
        fingerprint: str,
        proposed: str | None,
        now: float,
        ttl_s: float,
        pending_s: float,
    ) -> KeyClaim:
        with self._lock:
            row = self._db.execute(
                "SELECT fingerprint, result, done, created_at FROM idempotency WHERE scope = ?",
                (scope,),
            ).fetchone()
            if row is not None and row[3] >= now - ttl_s:
                if row[0] != fingerprint:
                    return KeyClaim(state="mismatch")
                if row[2]:
                    return KeyClaim(state="done", result=row[1])
                if row[3] >= now - pending_s:
                    return KeyClaim(state="pending")
                proposed = row[1] or proposed  # its claimer died: carry on with its id
            self._db.execute(
                "INSERT OR REPLACE INTO idempotency VALUES (?, ?, ?, 0, ?)",
                (scope, fingerprint, proposed, now),
            )
            return KeyClaim(state="claimed", result=proposed)

    def _write(self, sql: str, rows: list[tuple[object, ...]]) -> None:
        with self._lock:
            self._db.executemany(sql, rows)

    def _read(self, sql: str, args: tuple[object, ...]) -> list[tuple[object, ...]]:
        with self._lock:
            return list(self._db.execute(sql, args).fetchall())

    def _append(self, rows: list[tuple[str, int, str]], ended: list[tuple[float, str]]) -> None:
        with self._lock:
            self._db.execute("BEGIN")
            try:
                # OR IGNORE: a flush retried after a lost reply writes the same rows again.
                self._db.executemany("INSERT OR IGNORE INTO events VALUES (?, ?, ?)", rows)
                self._db.executemany(
                    "UPDATE runs SET ended = 1, ended_at = COALESCE(ended_at, ?) WHERE run_id = ?",
                    ended,
                )
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise

    def _load(self, run_id: str) -> RunRecord | None:
        with self._lock:
            run = self._db.execute(
                "SELECT spec, request, context, host_id FROM runs WHERE run_id = ?", (run_id,)
            ).fetchone()
            if run is None:
                return None
            rows = self._db.execute(
                "SELECT event FROM events WHERE run_id = ? ORDER BY seq", (run_id,)
            ).fetchall()
        events = [event_adapter.validate_json(row[0]) for row in rows]
        return RunRecord(
            spec=AgentSpec.model_validate_json(run[0]),
            request=RunInput.model_validate_json(run[1]),
            context=TenantContext.model_validate_json(run[2]),
            host_id=run[3],
            events=events,
        )

    def close(self) -> None:
        with self._lock:
            self._db.close()


RunStoreActor = ray.remote(num_cpus=0, max_concurrency=256)(RunStore)  # type: ignore[call-overload]
