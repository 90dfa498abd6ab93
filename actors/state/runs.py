"""Runs and their durable event logs, the shared settings, and Idempotency-Key claims.

The event log is the checkpoint: a run's state after any step is the fold of its events
(agents.replay), so a run whose host dies is resumed from its last durable event by another
host. Run hosts write events in group commits: one transaction per host per flush carries
every run's new events. Three stores over one database:

    RunStore         runs (spec, request, tenant context, host) and events; run lists
                     (the runs table is also their index: state/run_index.py)
    SettingsStore    small shared values by key: kill switches, rollbacks, batch journals
    IdempotencyKeys  one creation per (tenant, endpoint, key)
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from typing import Literal

from pydantic import BaseModel, ConfigDict

from actors.credentials import TenantContext
from actors.state.db import Database, Schema, Transaction
from actors.state.run_index import (
    MAX_PAGE,
    RunFilter,
    RunPage,
    add_listing,
    ending,
    page_query,
    to_page,
)
from agents.encoded import EncodedEvent
from agents.events import ApprovalDecided, ApprovalRequested, Event, event_adapter, is_terminal
from agents.loop import RunInput
from agents.spec import AgentSpec

_DEFAULT_CONTEXT = '{"tenant": "default"}'


async def _create(tx: Transaction) -> None:
    """The tables. A SQLite file from an older rayfleet has them already (this step only
    adds what it lacks): the columns added since are brought in by `_add_columns`."""
    for statement in (
        """CREATE TABLE IF NOT EXISTS runs (
            run_id TEXT PRIMARY KEY,
            spec TEXT NOT NULL,
            request TEXT NOT NULL,
            context TEXT NOT NULL,
            host_id TEXT NOT NULL,
            ended BIGINT NOT NULL DEFAULT 0,
            ended_at DOUBLE PRECISION
        )""",
        """CREATE TABLE IF NOT EXISTS events (
            run_id TEXT NOT NULL,
            seq BIGINT NOT NULL,
            event TEXT NOT NULL,
            PRIMARY KEY (run_id, seq)
        )""",
        """CREATE TABLE IF NOT EXISTS settings (
            key TEXT PRIMARY KEY,
            value TEXT NOT NULL
        )""",
        """CREATE TABLE IF NOT EXISTS idempotency (
            scope TEXT PRIMARY KEY,
            fingerprint TEXT NOT NULL,
            result TEXT,
            done BIGINT NOT NULL DEFAULT 0,
            created_at DOUBLE PRECISION NOT NULL
        )""",
    ):
        await tx.execute(statement)


async def _add_columns(tx: Transaction) -> None:
    """Stores written before tenants (no `context`) or before retention (no `ended_at`)."""
    columns = await tx.columns("runs")
    if "context" not in columns:  # every run was the default tenant's
        await tx.execute(
            f"ALTER TABLE runs ADD COLUMN context TEXT NOT NULL DEFAULT '{_DEFAULT_CONTEXT}'"
        )
    if "ended_at" not in columns:  # runs that ended, end now
        await tx.execute("ALTER TABLE runs ADD COLUMN ended_at DOUBLE PRECISION")
        await tx.execute("UPDATE runs SET ended_at = ? WHERE ended = 1", (time.time(),))


async def _indexes(tx: Transaction) -> None:
    for statement in (
        "CREATE INDEX IF NOT EXISTS runs_by_host ON runs (host_id, ended)",
        "CREATE INDEX IF NOT EXISTS runs_by_end ON runs (ended, ended_at)",
        "CREATE INDEX IF NOT EXISTS idempotency_by_age ON idempotency (created_at)",
    ):
        await tx.execute(statement)


async def _add_approvals(tx: Transaction) -> None:
    """When a paused run's decision is due: the deadline sweeper's index."""
    if "approval_deadline" not in await tx.columns("runs"):
        await tx.execute("ALTER TABLE runs ADD COLUMN approval_deadline DOUBLE PRECISION")
    await tx.execute(
        "CREATE INDEX IF NOT EXISTS runs_by_approval_deadline ON runs (approval_deadline)"
    )


_SCHEMA = Schema("runs", (_create, _add_columns, _indexes, add_listing, _add_approvals))


class RunRecord(BaseModel):
    """What a host needs to resume a run."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    spec: AgentSpec
    request: RunInput
    context: TenantContext
    host_id: str
    events: list[Event]


DeleteOutcome = Literal["deleted", "running", "unknown"]


class RunStore:
    """Runs and their events. `clock` (unix seconds) stamps when runs ended."""

    def __init__(self, db: Database, clock: Callable[[], float] = time.time) -> None:
        self._db = db
        self._clock = clock

    async def create_run(
        self, spec: AgentSpec, request: RunInput, context: TenantContext, host_id: str
    ) -> None:
        await self._db.ensure(_SCHEMA)
        await self._db.execute(
            # DO NOTHING: a create asked again (a retried call) is a no-op.
            "INSERT INTO runs (run_id, spec, request, context, host_id, tenant, agent, version, "
            "assignment, thread_id, trace_id, created_at, status) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 'running') "
            "ON CONFLICT (run_id) DO NOTHING",
            (
                request.run_id,
                spec.model_dump_json(),
                request.model_dump_json(),
                context.model_dump_json(),
                host_id,
                context.tenant,
                spec.name,
                spec.version,
                request.assignment,
                request.thread_id,
                None if request.trace is None else request.trace.trace_id,
                self._clock(),
            ),
        )

    async def append_events(self, batch: Mapping[str, Sequence[Event | EncodedEvent]]) -> None:
        """Persist new events of many runs in one transaction (a host's group commit). An
        encoded event is stored as its JSON, not encoded again."""
        await self._db.ensure(_SCHEMA)
        encoded = {run_id: [EncodedEvent.of(e) for e in es] for run_id, es in batch.items()}
        rows = [(run_id, e.event.seq, e.json) for run_id, es in encoded.items() for e in es]
        now = self._clock()
        ended = [
            (now, *ending(es[-1].event), es[-1].event.trace_id, run_id)
            for run_id, es in encoded.items()
            if es and is_terminal(es[-1].event)
        ]
        waits = [
            (*wait, run_id)
            for run_id, es in encoded.items()
            if es and not is_terminal(es[-1].event)
            for wait in [_wait_change([e.event for e in es])]
            if wait is not None
        ]
        await self._db.batch(
            [
                # DO NOTHING: a flush retried after a lost reply writes the same rows again.
                ("INSERT INTO events VALUES (?, ?, ?) ON CONFLICT DO NOTHING", rows),
                (
                    # The listing's columns too: how the run ended, in the same transaction.
                    "UPDATE runs SET ended = 1, ended_at = COALESCE(ended_at, ?), status = ?, "
                    "steps = ?, tokens = ?, cost_usd = ?, error_code = ?, "
                    "approval_deadline = NULL, trace_id = COALESCE(trace_id, ?) WHERE run_id = ?",
                    ended,
                ),
                (
                    # Paused for a person, or resumed by a decision: listed as such.
                    "UPDATE runs SET status = ?, approval_deadline = ? "
                    "WHERE run_id = ? AND ended = 0",
                    waits,
                ),
            ]
        )

    async def overdue_approvals(self, now: float, limit: int = 100) -> list[str]:
        """Paused runs whose decision was due before `now`, oldest deadline first."""
        await self._db.ensure(_SCHEMA)
        rows = await self._db.fetchall(
            "SELECT run_id FROM runs WHERE approval_deadline < ? AND ended = 0 "
            "ORDER BY approval_deadline LIMIT ?",
            (now, limit),
        )
        return [str(row[0]) for row in rows]

    async def list_runs(
        self, where: RunFilter, limit: int = 50, cursor: str | None = None
    ) -> RunPage:
        """Runs matching `where`, newest first, `limit` (1-200) a page; `cursor` is a page's
        `next_cursor` (a bad one raises `BadCursor`)."""
        return await self._page(where, limit, cursor, newest_first=True)

    async def thread_runs(
        self, thread_id: str, tenant: str | None, limit: int = 50, cursor: str | None = None
    ) -> RunPage:
        """A thread's runs in the order they were created (`tenant` None: any tenant's)."""
        where = RunFilter(thread_id=thread_id, tenant=tenant)
        return await self._page(where, limit, cursor, newest_first=False)

    async def _page(
        self, where: RunFilter, limit: int, cursor: str | None, newest_first: bool
    ) -> RunPage:
        if not 1 <= limit <= MAX_PAGE:
            raise ValueError(f"limit must be 1 to {MAX_PAGE}, not {limit}")
        await self._db.ensure(_SCHEMA)
        sql, args = page_query(where, limit, cursor, newest_first)
        return to_page(await self._db.fetchall(sql, args), limit)

    async def move_run(self, run_id: str, host_id: str) -> None:
        await self._db.ensure(_SCHEMA)
        await self._db.execute("UPDATE runs SET host_id = ? WHERE run_id = ?", (host_id, run_id))

    async def load_run(self, run_id: str) -> RunRecord | None:
        await self._db.ensure(_SCHEMA)
        run = await self._db.fetchone(
            "SELECT spec, request, context, host_id FROM runs WHERE run_id = ?", (run_id,)
        )
        if run is None:
            return None
        rows = await self._db.fetchall(
            "SELECT event FROM events WHERE run_id = ? ORDER BY seq", (run_id,)
        )
        return RunRecord(
            spec=AgentSpec.model_validate_json(run[0]),
            request=RunInput.model_validate_json(run[1]),
            context=TenantContext.model_validate_json(run[2]),
            host_id=run[3],
            events=[event_adapter.validate_json(row[0]) for row in rows],
        )

    async def host_of(self, run_id: str) -> str | None:
        await self._db.ensure(_SCHEMA)
        row = await self._db.fetchone("SELECT host_id FROM runs WHERE run_id = ?", (run_id,))
        return None if row is None else str(row[0])

    async def live_runs_on(self, host_id: str) -> list[str]:
        """Runs on `host_id` whose terminal event is not durable yet."""
        await self._db.ensure(_SCHEMA)
        rows = await self._db.fetchall(
            "SELECT run_id FROM runs WHERE host_id = ? AND ended = 0", (host_id,)
        )
        return [str(row[0]) for row in rows]

    async def live_hosts(self) -> list[str]:
        """Hosts with runs whose terminal event is not durable yet (a restarted pool resumes
        those of hosts that died while it was down)."""
        await self._db.ensure(_SCHEMA)
        rows = await self._db.fetchall("SELECT DISTINCT host_id FROM runs WHERE ended = 0")
        return [str(row[0]) for row in rows]

    async def delete_run(self, run_id: str, tenant: str | None = None) -> DeleteOutcome:
        """Delete an ended run (record and events). `unknown` if there is no such run or it
        is not `tenant`'s (None: any tenant's); `running` (nothing deleted) if its terminal
        event is not durable yet."""
        await self._db.ensure(_SCHEMA)
        async with self._db.transaction() as tx:
            row = await tx.fetchone("SELECT context, ended FROM runs WHERE run_id = ?", (run_id,))
            if row is None:
                return "unknown"
            if tenant is not None and TenantContext.model_validate_json(row[0]).tenant != tenant:
                return "unknown"
            if not row[1]:
                return "running"
            await _delete(tx, [run_id])
            return "deleted"

    async def purge_ended(self, before: float, limit: int = 500) -> list[str]:
        """Delete up to `limit` runs that ended before `before` (unix s), oldest first, with
        their events, in one transaction; returns their ids. Running runs are never touched."""
        await self._db.ensure(_SCHEMA)
        async with self._db.transaction() as tx:
            rows = await tx.fetchall(
                "SELECT run_id FROM runs WHERE ended = 1 AND ended_at < ? "
                "ORDER BY ended_at LIMIT ?",
                (before, limit),
            )
            ids = [str(row[0]) for row in rows]
            await _delete(tx, ids)
            return ids


async def _delete(tx: Transaction, run_ids: list[str]) -> None:
    keys = [(run_id,) for run_id in run_ids]
    await tx.executemany("DELETE FROM events WHERE run_id = ?", keys)
    await tx.executemany("DELETE FROM runs WHERE run_id = ? AND ended = 1", keys)


class SettingsStore:
    """Shared, durable settings: small values by key, read by prefix."""

    def __init__(self, db: Database) -> None:
        self._db = db

    async def put_setting(self, key: str, value: str | None) -> None:
        """Set `key` to `value`; None deletes the key."""
        await self._db.ensure(_SCHEMA)
        if value is None:
            await self._db.execute("DELETE FROM settings WHERE key = ?", (key,))
        else:
            await self._db.execute(
                "INSERT INTO settings VALUES (?, ?) "
                "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                (key, value),
            )

    async def settings(self, prefix: str) -> dict[str, str]:
        """Every setting whose key starts with `prefix` (a key range: uses the primary key,
        and '_' or '%' in a prefix are plain characters)."""
        await self._db.ensure(_SCHEMA)
        sql = "SELECT key, value FROM settings"
        args: tuple[str, ...] = ()
        if prefix:
            # COLLATE "C" on PostgreSQL: the range must follow code points, not a locale.
            order = ' COLLATE "C"' if self._db.dialect == "postgresql" else ""
            sql += f" WHERE key{order} >= ? AND key{order} < ?"
            args = (prefix, prefix[:-1] + chr(ord(prefix[-1]) + 1))
        rows = await self._db.fetchall(sql, args)
        return {str(k): str(v) for k, v in rows}


class KeyClaim(BaseModel):
    """The answer to claiming an idempotency key (IdempotencyKeys.claim_key)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    state: Literal["claimed", "done", "pending", "mismatch"]
    """claimed: ours to act on; done: `result` is the first request's; pending: the first
    request is still being handled; mismatch: the key was used with another request."""
    result: str | None = None


class IdempotencyKeys:
    """Idempotency-Key claims (serve_app.idempotency); scope = tenant, endpoint and key."""

    def __init__(self, db: Database) -> None:
        self._db = db

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
        await self._db.ensure(_SCHEMA)
        async with self._db.transaction() as tx:
            await tx.lock(f"idempotency:{scope}")
            row = await tx.fetchone(
                "SELECT fingerprint, result, done, created_at FROM idempotency WHERE scope = ?",
                (scope,),
            )
            if row is not None and row[3] >= now - ttl_s:
                if row[0] != fingerprint:
                    return KeyClaim(state="mismatch")
                if row[2]:
                    return KeyClaim(state="done", result=row[1])
                if row[3] >= now - pending_s:
                    return KeyClaim(state="pending")
                proposed = row[1] or proposed  # its claimer died: carry on with its id
            await tx.execute(
                "INSERT INTO idempotency VALUES (?, ?, ?, 0, ?) ON CONFLICT (scope) DO UPDATE "
                "SET fingerprint = excluded.fingerprint, result = excluded.result, done = 0, "
                "created_at = excluded.created_at",
                (scope, fingerprint, proposed, now),
            )
            return KeyClaim(state="claimed", result=proposed)

    async def finish_key(self, scope: str, result: str) -> None:
        """Record what the claimed key's request created."""
        await self._db.ensure(_SCHEMA)
        await self._db.execute(
            "UPDATE idempotency SET result = ?, done = 1 WHERE scope = ?", (result, scope)
        )

    async def release_key(self, scope: str) -> None:
        """Give up a claim whose request failed, so a retry with the key may try again."""
        await self._db.ensure(_SCHEMA)
        await self._db.execute("DELETE FROM idempotency WHERE scope = ? AND done = 0", (scope,))

    async def purge_keys(self, before: float) -> None:
        """Forget idempotency keys claimed before `before` (unix s): they have expired."""
        await self._db.ensure(_SCHEMA)
        await self._db.execute("DELETE FROM idempotency WHERE created_at < ?", (before,))


def _wait_change(events: list[Event]) -> tuple[str, float | None] | None:
    """(status, deadline) if these new events pause the run or resume it from a pause."""
    for event in reversed(events):
        if isinstance(event, ApprovalRequested):
            return "awaiting_approval", event.deadline
        if isinstance(event, ApprovalDecided):
            return "running", None
    return None
