"""The runs table as an index: the columns a run list filters and shows, and the queries.

A run's summary is the fold of its events (agents.summary); listing thousands of runs that
way would read every event of each. So the runs table also holds what a list shows: who and
what (tenant, agent, version, assignment, thread, trace, created_at), written at create_run,
and how it ended (status, steps, tokens, cost, error code), written in the same transaction
as the run's terminal event. A running run lists as `running` with zero spend.

Stores written before these columns get them on upgrade, backfilled from what is stored: the
run's spec, request and tenant, its first event's time, and its terminal event.

Pages are keyset pages on (created_at, run_id): a cursor names the last item shown, so runs
created meanwhile neither repeat nor push older ones off a page.
"""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from actors.state.db import Args, Row, Transaction
from agents.events import Event, RunCancelled, RunCompleted, RunFailed, event_adapter
from agents.summary import RunStatus

MAX_PAGE = 200
"""Most runs a page."""

_COLUMNS = {
    "tenant": "TEXT",
    "agent": "TEXT",
    "version": "TEXT",
    "assignment": "TEXT",
    "thread_id": "TEXT",
    "trace_id": "TEXT",
    "created_at": "DOUBLE PRECISION",
    "status": "TEXT",
    "steps": "BIGINT",
    "tokens": "BIGINT",
    "cost_usd": "DOUBLE PRECISION",
    "error_code": "TEXT",
}
ITEM_COLUMNS = (
    "run_id, tenant, agent, version, assignment, thread_id, trace_id, created_at, ended_at, "
    "status, steps, tokens, cost_usd, error_code"
)


class RunItem(BaseModel):
    """One run in a list: what it is, how it went, what it cost."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    run_id: str
    tenant: str
    agent: str
    version: str
    assignment: str = Field(description="stable, canary, shadow or pinned.")
    thread_id: str | None = None
    status: RunStatus
    created_at: float = Field(description="Unix seconds.")
    ended_at: float | None = Field(None, description="Unix seconds; null while it runs.")
    steps: int = Field(0, description="Steps taken (known once the run has ended).")
    tokens: int = Field(0, description="Tokens used, all kinds (known once it has ended).")
    cost_usd: float = Field(0.0, description="Spend (known once it has ended).")
    error_code: str | None = Field(None, description="A failed run's error code.")
    trace_id: str | None = Field(None, description="The run's trace (find its spans, logs).")


class RunPage(BaseModel):
    """A page of runs and the cursor of the next page (null: this is the last)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    runs: list[RunItem]
    next_cursor: str | None = Field(None, description="Pass as `cursor` for the next page.")


class RunFilter(BaseModel):
    """Which runs to list; None matches any."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    tenant: str | None = None
    agent: str | None = None
    version: str | None = None
    status: RunStatus | None = None
    thread_id: str | None = None
    since: float | None = None
    """Created at or after (unix s)."""
    until: float | None = None
    """Created before (unix s)."""


class BadCursor(ValueError):
    """A cursor this store did not make."""


def encode_cursor(created_at: float, run_id: str) -> str:
    """The cursor of the page after the run (created_at, run_id): opaque to callers."""
    raw = json.dumps([created_at, run_id], separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[float, str]:
    """The (created_at, run_id) a cursor names; `BadCursor` if it is not one of ours."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        created_at, run_id = json.loads(raw)
    except (binascii.Error, ValueError, TypeError) as exc:
        raise BadCursor(f"not a cursor this API made: {cursor[:40]!r}") from exc
    if not isinstance(created_at, int | float) or not isinstance(run_id, str):
        raise BadCursor(f"not a cursor this API made: {cursor[:40]!r}")
    return float(created_at), run_id


def _where(where: RunFilter) -> tuple[list[str], list[object]]:
    clauses: list[str] = []
    args: list[object] = []
    for column in ("tenant", "agent", "version", "status", "thread_id"):
        value = getattr(where, column)
        if value is not None:
            clauses.append(f"{column} = ?")
            args.append(value)
    if where.since is not None:
        clauses.append("created_at >= ?")
        args.append(where.since)
    if where.until is not None:
        clauses.append("created_at < ?")
        args.append(where.until)
    return clauses, args


def page_query(
    where: RunFilter, limit: int, cursor: str | None, newest_first: bool
) -> tuple[str, Args]:
    """The SELECT for one page (one row more than `limit`: is there a next page?)."""
    clauses, args = _where(where)
    clauses.append("created_at IS NOT NULL")
    if cursor is not None:
        created_at, run_id = decode_cursor(cursor)
        op = "<" if newest_first else ">"
        clauses.append(f"(created_at {op} ? OR (created_at = ? AND run_id {op} ?))")
        args += [created_at, created_at, run_id]
    order = "DESC" if newest_first else "ASC"
    sql = (
        f"SELECT {ITEM_COLUMNS} FROM runs WHERE {' AND '.join(clauses)} "
        f"ORDER BY created_at {order}, run_id {order} LIMIT ?"
    )
    return sql, (*args, limit + 1)


def to_page(rows: list[Row], limit: int) -> RunPage:
    """The page of `page_query`'s rows: a next cursor only if it found one row more."""
    items = [_item(row) for row in rows[:limit]]
    last = items[-1] if len(rows) > limit and items else None
    return RunPage(
        runs=items,
        next_cursor=None if last is None else encode_cursor(last.created_at, last.run_id),
    )


def _item(row: Row) -> RunItem:
    names = [name.strip() for name in ITEM_COLUMNS.split(",")]
    values: dict[str, Any] = {k: v for k, v in zip(names, row, strict=True) if v is not None}
    return RunItem.model_validate(values)


def ending(event: Event) -> tuple[str, int, int, float, str | None]:
    """(status, steps, tokens, cost, error code) of a terminal event; the loop's own totals
    (`agents.loop` puts the budget's spend in every terminal event)."""
    if not isinstance(event, RunCompleted | RunFailed | RunCancelled):
        raise ValueError(f"{event.kind} is not a terminal event")
    code = event.code if isinstance(event, RunFailed) else None
    status = event.kind.removeprefix("run.")
    return status, event.steps, event.usage.total_tokens, event.cost_usd, code


# -- the schema step ------------------------------------------------------------------------


async def add_listing(tx: Transaction) -> None:
    """Schema step: the listing columns, their indexes, and a backfill of existing runs."""
    present = await tx.columns("runs")
    for name, kind in _COLUMNS.items():
        if name not in present:
            await tx.execute(f"ALTER TABLE runs ADD COLUMN {name} {kind}")
    for statement in (
        "CREATE INDEX IF NOT EXISTS runs_listed_by_tenant ON runs (tenant, created_at, run_id)",
        "CREATE INDEX IF NOT EXISTS runs_listed_by_time ON runs (created_at, run_id)",
        "CREATE INDEX IF NOT EXISTS runs_listed_by_thread ON runs (thread_id, created_at, run_id)",
    ):
        await tx.execute(statement)
    rows = await tx.fetchall(
        "SELECT run_id, spec, request, context, ended, ended_at FROM runs WHERE created_at IS NULL"
    )
    for row in rows:
        await _backfill(tx, row)


async def _backfill(tx: Transaction, row: Row) -> None:
    """One run stored before the listing columns: read leniently (plain JSON, not the models:
    an old row must not stop the upgrade); what cannot be read stays empty."""
    run_id, spec, request, context, ended, ended_at = row
    spec_d, request_d, context_d = (_loads(text) for text in (spec, request, context))
    first = await tx.fetchone("SELECT event FROM events WHERE run_id = ? AND seq = 1", (run_id,))
    created_at = _loads(first[0]).get("ts") if first is not None else None
    trace = request_d.get("trace") or {}
    status: str = "running"
    steps, tokens, cost, code = None, None, None, None
    if ended:
        last = await tx.fetchone(
            "SELECT event FROM events WHERE run_id = ? ORDER BY seq DESC LIMIT 1", (run_id,)
        )
        status = "cancelled"  # ended without a readable terminal event: nothing better known
        if last is not None:
            try:
                status, steps, tokens, cost, code = ending(event_adapter.validate_json(last[0]))
            except ValueError:
                pass
    await tx.execute(
        "UPDATE runs SET tenant = ?, agent = ?, version = ?, assignment = ?, thread_id = ?, "
        "trace_id = ?, created_at = ?, status = ?, steps = ?, tokens = ?, cost_usd = ?, "
        "error_code = ? WHERE run_id = ?",
        (
            str(context_d.get("tenant", "default")),
            str(spec_d.get("name", "")),
            str(spec_d.get("version", "")),
            str(request_d.get("assignment", "stable")),
            request_d.get("thread_id"),
            trace.get("trace_id") if isinstance(trace, dict) else None,
            # No first event (a run that never started): its end, else the epoch, so it
            # still lists (oldest) rather than vanishing.
            float(created_at or ended_at or 0.0),
            status,
            steps,
            tokens,
            cost,
            code,
            run_id,
        ),
    )


def _loads(text: str) -> dict[str, Any]:
    try:
        found = json.loads(text)
    except ValueError:
        return {}
    return found if isinstance(found, dict) else {}
