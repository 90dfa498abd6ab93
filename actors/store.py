"""The run store: every run's spec, request, host and durable event log, in SQLite.

The event log is the checkpoint: a run's state after any step is the fold of its events
(agents.replay), so a run whose host dies is resumed from its last durable event by
another host. Run hosts write events in group commits (one call per host per flush).
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from pathlib import Path

import ray
from pydantic import BaseModel, ConfigDict

from actors.credentials import TenantContext
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
)


class RunRecord(BaseModel):
    """What a host needs to resume a run."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    spec: AgentSpec
    request: RunInput
    context: TenantContext
    host_id: str
    events: list[Event]


class RunStore:
    """SQLite behind one lock; every call runs in a worker thread. No Ray in here."""

    def __init__(self, path: str) -> None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        # WAL + NORMAL: a commit survives a process crash (not a power cut), at a fraction
        # of the cost of fsync per commit.
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        for statement in _SCHEMA:
            self._db.execute(statement)
        self._migrate()
        self._lock = threading.Lock()

    def _migrate(self) -> None:
        """Bring a store written by an older rayfleet up to this schema."""
        columns = {row[1] for row in self._db.execute("PRAGMA table_info(runs)")}
        if "context" not in columns:  # before tenants: every run was the default tenant's
            self._db.execute(
                "ALTER TABLE runs ADD COLUMN context TEXT NOT NULL "
                """DEFAULT '{"tenant": "default"}'"""
            )

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
        ended = [(run_id,) for run_id, es in batch.items() if es and is_terminal(es[-1])]
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

    def _write(self, sql: str, rows: list[tuple[object, ...]]) -> None:
        with self._lock:
            self._db.executemany(sql, rows)

    def _read(self, sql: str, args: tuple[object, ...]) -> list[tuple[object, ...]]:
        with self._lock:
            return list(self._db.execute(sql, args).fetchall())

    def _append(self, rows: list[tuple[str, int, str]], ended: list[tuple[str]]) -> None:
        with self._lock:
            self._db.execute("BEGIN")
            try:
                # OR IGNORE: a flush retried after a lost reply writes the same rows again.
                self._db.executemany("INSERT OR IGNORE INTO events VALUES (?, ?, ?)", rows)
                self._db.executemany("UPDATE runs SET ended = 1 WHERE run_id = ?", ended)
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
