"""The outcome store: how each run ended and what it cost, for cost per successful run (C11)
and for comparing agent versions (C13: canary rollback, shadow runs), in SQLite.

Two tables. `runs` holds one row per finished run, written by whoever saw it end; the first
record of a run stands (a resumed run may report its end twice). `outcomes` holds the
explicit outcome a caller posts (`POST /v1/runs/{id}/outcome`), before or after the run ends.

Success: an explicit outcome, when there is one, decides; otherwise a completed run is a
success and a failed or cancelled run is not. "Completed = success unless the caller says
otherwise": most callers never post an outcome, and a run that reached its final answer is
the best signal we have without one.

Cost per successful run = the cost of ALL the runs of a selection / its successes: failed
and cancelled runs were paid for too, and a version that fails often must look expensive.

Shadow runs (mirrored traffic, side effects not executed) never count in a version's
normal statistics; they are asked for with `assignment="shadow"` or compared with their
primary runs by `shadow_pairs`.
"""

from __future__ import annotations

import asyncio
import math
import sqlite3
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, Literal, get_args

import ray
from pydantic import BaseModel, ConfigDict, Field, model_validator

Assignment = Literal["stable", "canary", "shadow", "pinned"]
RunStatus = Literal["completed", "failed", "cancelled"]

_ASSIGNMENTS: tuple[str, ...] = get_args(Assignment)

_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS runs (
        run_id TEXT PRIMARY KEY,
        agent TEXT NOT NULL,
        version TEXT NOT NULL,
        tenant TEXT NOT NULL,
        assignment TEXT NOT NULL,
        status TEXT NOT NULL,
        cost_usd REAL NOT NULL,
        run_s REAL NOT NULL,
        ended_at REAL NOT NULL,
        primary_run_id TEXT,
        output TEXT,
        steps INTEGER NOT NULL,
        recorded_at REAL NOT NULL
    )""",
    "CREATE INDEX IF NOT EXISTS runs_by_version ON runs (agent, version, ended_at)",
    "CREATE INDEX IF NOT EXISTS runs_by_agent ON runs (agent, assignment, ended_at)",
    """CREATE TABLE IF NOT EXISTS outcomes (
        run_id TEXT PRIMARY KEY,
        success INTEGER NOT NULL,
        score REAL,
        set_at REAL NOT NULL
    )""",
)

# One row per run, joined with its explicit outcome (if any): what the statistics fold.
_STATS_SELECT = (
    "SELECT r.tenant, r.status, o.success, o.score, r.cost_usd, r.run_s "
    "FROM runs r LEFT JOIN outcomes o ON o.run_id = r.run_id "
)
_Row = tuple[Any, ...]


class RunOutcome(BaseModel):
    """How one run ended, as reported when it ends."""

    model_config = ConfigDict(frozen=True, extra="forbid", use_attribute_docstrings=True)

    run_id: str
    agent: str
    version: str
    tenant: str
    assignment: Assignment
    """How the run was routed to its version: the weighted split, the canary, a mirrored
    shadow, or a version the caller pinned."""
    status: RunStatus
    cost_usd: float = Field(ge=0)
    """Priced model calls of the whole run, in US dollars."""
    run_s: float = Field(ge=0)
    """Wall time from start to the terminal event, in seconds."""
    ended_at: float
    """When the run ended, unix seconds; the `since` windows select on it."""
    primary_run_id: str | None = None
    """For a shadow run: the run whose traffic it mirrored. None for every other run."""
    output: str | None = None
    """The final output, if the run produced one; shadow comparisons test it for equality."""
    steps: int = Field(default=0, ge=0)
    """Steps the run took."""

    @model_validator(mode="after")
    def _shadow_has_a_primary(self) -> RunOutcome:
        if self.assignment == "shadow" and self.primary_run_id is None:
            raise ValueError(f"shadow run {self.run_id!r} needs primary_run_id")
        if self.assignment != "shadow" and self.primary_run_id is not None:
            raise ValueError(
                f"run {self.run_id!r} has primary_run_id but assignment "
                f"{self.assignment!r} (only shadow runs have a primary)"
            )
        return self


class VersionStats(BaseModel):
    """Outcomes of a selection of runs. runs = successes + failures + cancelled."""

    model_config = ConfigDict(frozen=True, extra="forbid", use_attribute_docstrings=True)

    runs: int
    successes: int
    failures: int
    """Unsuccessful runs that were not cancelled: failed, or completed but marked unsuccessful
    by the caller."""
    cancelled: int
    """Cancelled runs without an explicit success."""
    success_rate: float | None
    """successes / runs; None without runs."""
    cost_usd: float
    """Total cost of all the runs, successful or not."""
    cost_per_success_usd: float | None
    """cost_usd / successes: cost per successful run; None without a success."""
    p95_run_s: float | None
    """95th percentile of wall time (nearest rank) over all the runs; None without runs."""
    mean_score: float | None
    """Mean of the explicit scores given; None if no run has one."""


class ShadowComparison(BaseModel):
    """Shadow runs of `shadow_version` against the primary runs they mirrored."""

    model_config = ConfigDict(frozen=True, extra="forbid", use_attribute_docstrings=True)

    primary_version: str
    shadow_version: str
    pairs: int
    """Shadow runs whose primary run is recorded too."""
    agreements: int
    """Pairs whose final outputs are both present and equal."""
    agreement_rate: float
    """agreements / pairs (a missing output never agrees)."""
    primary_mean_steps: float
    shadow_mean_steps: float
    primary_cost_usd: float
    """Total over the pairs' primary runs."""
    shadow_cost_usd: float
    """Total over the shadow runs: the price of mirroring."""
    primary_p50_run_s: float
    """Median wall time (nearest rank) of the primary runs."""
    shadow_p50_run_s: float
    primary_errors: int
    """Primary runs that ended with status failed."""
    shadow_errors: int
    """Shadow runs that ended with status failed."""


class OutcomeStore:
    """Run outcomes and explicit outcomes. SQLite calls run in a worker thread, one at a
    time. No Ray in here. `clock` (unix seconds) stamps when rows were written."""

    def __init__(self, path: str, clock: Callable[[], float] = time.time) -> None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        # Statistics, not a ledger: losing the last commits in a power cut is acceptable.
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        for statement in _SCHEMA:
            self._db.execute(statement)
        self._lock = threading.Lock()
        self._clock = clock

    async def record_run(self, outcome: RunOutcome) -> None:
        """Record how a run ended. The first record of a run stands; later ones are ignored
        (a resumed run may report its end twice)."""
        o = outcome
        row = (
            o.run_id,
            o.agent,
            o.version,
            o.tenant,
            o.assignment,
            o.status,
            o.cost_usd,
            o.run_s,
            o.ended_at,
            o.primary_run_id,
            o.output,
            o.steps,
            self._clock(),
        )
        await asyncio.to_thread(
            self._write,
            "INSERT OR IGNORE INTO runs VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            row,
        )

    async def set_outcome(self, run_id: str, success: bool, score: float | None = None) -> bool:
        """Store the caller's explicit outcome of a run; it wins over the automatic one. The
        latest call stands (a caller may correct itself).

        The run need not be recorded yet: the caller may judge a run before its end reaches
        this store, so the outcome is kept and applies once it does. Whether the run exists
        and belongs to the caller is the gateway's check (against the run store), made
        before this call; so this returns True once stored."""
        if score is not None and not math.isfinite(score):
            raise ValueError(f"score must be a finite number, not {score!r}")
        await asyncio.to_thread(
            self._write,
            "INSERT OR REPLACE INTO outcomes (run_id, success, score, set_at) VALUES (?, ?, ?, ?)",
            (run_id, int(success), score, self._clock()),
        )
        return True

    async def version_stats(
        self,
        agent: str,
        version: str,
        since: float | None = None,
        assignment: str | None = None,
        tenant: str | None = None,
    ) -> VersionStats:
        """Outcomes of one version's runs that ended at or after `since`, optionally of one
        assignment and/or tenant. Without `assignment`, every assignment but shadow."""
        where, args = _filters(agent, since, assignment)
        where += " AND r.version = ?"
        args.append(version)
        if tenant is not None:
            where += " AND r.tenant = ?"
            args.append(tenant)
        rows = await asyncio.to_thread(self._read, _STATS_SELECT + where, tuple(args))
        return _fold(rows)

    async def stats_by_tenant(
        self, agent: str, since: float | None = None, version: str | None = None
    ) -> dict[str, VersionStats]:
        """Outcomes per tenant (with runs) of an agent's runs that ended at or after `since`,
        across its versions or of one `version`. Shadow runs are excluded."""
        where, args = _filters(agent, since, None)
        if version is not None:
            where += " AND r.version = ?"
            args.append(version)
        rows = await asyncio.to_thread(self._read, _STATS_SELECT + where, tuple(args))
        by_tenant: dict[str, list[_Row]] = defaultdict(list)
        for row in rows:
            by_tenant[row[0]].append(row)
        return {tenant: _fold(by_tenant[tenant]) for tenant in sorted(by_tenant)}

    async def shadow_pairs(self, agent: str, since: float | None = None) -> list[ShadowComparison]:
        """Each (primary version, shadow version) of an agent, comparing the shadow runs that
        ended at or after `since` with their primary runs; ordered by the two versions. A
        shadow run whose primary is not recorded (yet) is left out."""
        sql = (
            "SELECT p.version, s.version, p.output, s.output, p.steps, s.steps, "
            "p.cost_usd, s.cost_usd, p.run_s, s.run_s, p.status, s.status "
            "FROM runs s JOIN runs p ON p.run_id = s.primary_run_id "
            "WHERE s.agent = ? AND s.assignment = 'shadow'"
        )
        args: list[object] = [agent]
        if since is not None:
            sql += " AND s.ended_at >= ?"
            args.append(since)
        rows = await asyncio.to_thread(self._read, sql, tuple(args))
        groups: dict[tuple[str, str], list[_Row]] = defaultdict(list)
        for row in rows:
            groups[(str(row[0]), str(row[1]))].append(row)
        return [_compare(p, s, groups[(p, s)]) for p, s in sorted(groups)]

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def _write(self, sql: str, row: tuple[object, ...]) -> None:
        with self._lock:
            self._db.execute(sql, row)

    def _read(self, sql: str, args: tuple[object, ...]) -> list[_Row]:
        with self._lock:
            return list(self._db.execute(sql, args).fetchall())


def _filters(agent: str, since: float | None, assignment: str | None) -> tuple[str, list[object]]:
    """The WHERE clause common to the statistics: agent, window, assignment (default: all
    but shadow)."""
    where = "WHERE r.agent = ?"
    args: list[object] = [agent]
    if since is not None:
        where += " AND r.ended_at >= ?"
        args.append(since)
    if assignment is None:
        where += " AND r.assignment != 'shadow'"
    elif assignment in _ASSIGNMENTS:
        where += " AND r.assignment = ?"
        args.append(assignment)
    else:
        raise ValueError(f"unknown assignment {assignment!r} (known: {', '.join(_ASSIGNMENTS)})")
    return where, args


def _fold(rows: Iterable[_Row]) -> VersionStats:
    runs = successes = cancelled = 0
    cost = 0.0
    run_s: list[float] = []
    scores: list[float] = []
    for _tenant, status, explicit, score, cost_usd, seconds in rows:
        runs += 1
        cost += cost_usd
        run_s.append(seconds)
        if score is not None:
            scores.append(score)
        if explicit is not None:
            success = bool(explicit)  # the caller's word wins
        else:
            success = status == "completed"
        if success:
            successes += 1
        elif status == "cancelled":
            cancelled += 1
    return VersionStats(
        runs=runs,
        successes=successes,
        failures=runs - successes - cancelled,
        cancelled=cancelled,
        success_rate=successes / runs if runs else None,
        cost_usd=cost,
        cost_per_success_usd=cost / successes if successes else None,
        p95_run_s=_percentile(run_s, 95) if run_s else None,
        mean_score=sum(scores) / len(scores) if scores else None,
    )


def _compare(primary: str, shadow: str, rows: list[_Row]) -> ShadowComparison:
    n = len(rows)
    agreements = sum(1 for r in rows if r[2] is not None and r[2] == r[3])

    def column(i: int) -> list[float]:
        return [float(r[i]) for r in rows]

    return ShadowComparison(
        primary_version=primary,
        shadow_version=shadow,
        pairs=n,
        agreements=agreements,
        agreement_rate=agreements / n,
        primary_mean_steps=sum(column(4)) / n,
        shadow_mean_steps=sum(column(5)) / n,
        primary_cost_usd=sum(column(6)),
        shadow_cost_usd=sum(column(7)),
        primary_p50_run_s=_percentile(column(8), 50),
        shadow_p50_run_s=_percentile(column(9), 50),
        primary_errors=sum(1 for r in rows if r[10] == "failed"),
        shadow_errors=sum(1 for r in rows if r[11] == "failed"),
    )


def _percentile(values: list[float], percent: int) -> float:
    """Nearest rank: the smallest value with at least `percent`% of the values at or below
    it. Integer arithmetic, so p95 of 20 values is exactly the 19th."""
    ordered = sorted(values)
    rank = -(-percent * len(ordered) // 100)  # ceil without float error
    return ordered[max(rank, 1) - 1]


# Ray's stubs lack actor options (max_concurrency) in the keyword overload of `remote`.
OutcomeStoreActor = ray.remote(num_cpus=0, max_concurrency=64)(OutcomeStore)  # type: ignore[call-overload]
