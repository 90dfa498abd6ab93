"""The outcome store on either state backend: how each run ended and what it cost, for
cost per successful run (C11) and for comparing agent versions (C13).

The models and the rules (what counts as a success, how statistics fold, shadow
comparisons) are in `actors/outcomes.py`; this module holds them in two tables:
`outcome_runs`, one row per finished run, the first record of a run standing (a resumed
run may report its end twice); and `outcome_marks`, the explicit outcome a caller posts
(`POST /v1/runs/{id}/outcome`) before or after the run ends, or the automatic
unsuccessful one of a run that went over a budget.

Many processes write here directly (every run host records its runs' ends), so no process
knows what changed since it last published the metric gauges: `publish_metrics` recomputes
every (agent, version, tenant) group each time, one GROUP BY query.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import defaultdict
from collections.abc import Callable

from actors.outcomes import (
    CostReport,
    Group,
    OutcomeMetrics,
    RunOutcome,
    ShadowComparison,
    TenantCost,
    VersionStats,
    _compare,
    _filters,
    _fold,
    _Row,
)
from actors.state.db import Database, Schema, Transaction
from agents.logs import first_traceback

logger = logging.getLogger("rayfleet")

_LEGACY_INDEXES = ("runs_by_version", "runs_by_agent", "runs_by_tenant")


async def _v1(tx: Transaction) -> None:
    # A SQLite file of rayfleet before the state layer (actors/outcomes.py) has the same
    # columns under the names `runs` and `outcomes`: renamed, its rows stay. Only SQLite:
    # in PostgreSQL every concern shares one database, and a `runs` there is not ours.
    if tx.dialect == "sqlite":
        if {"run_id", "assignment", "primary_run_id"} <= await tx.columns("runs") and not (
            await tx.columns("outcome_runs")
        ):
            await tx.execute("ALTER TABLE runs RENAME TO outcome_runs")
            for index in _LEGACY_INDEXES:
                await tx.execute(f"DROP INDEX IF EXISTS {index}")
        if {"run_id", "success", "set_at"} <= await tx.columns("outcomes") and not (
            await tx.columns("outcome_marks")
        ):
            await tx.execute("ALTER TABLE outcomes RENAME TO outcome_marks")
    await tx.execute(
        """CREATE TABLE IF NOT EXISTS outcome_runs (
            run_id TEXT PRIMARY KEY,
            agent TEXT NOT NULL,
            version TEXT NOT NULL,
            tenant TEXT NOT NULL,
            assignment TEXT NOT NULL,
            status TEXT NOT NULL,
            cost_usd DOUBLE PRECISION NOT NULL,
            run_s DOUBLE PRECISION NOT NULL,
            ended_at DOUBLE PRECISION NOT NULL,
            primary_run_id TEXT,
            output TEXT,
            steps BIGINT NOT NULL,
            recorded_at DOUBLE PRECISION NOT NULL
        )"""
    )
    for name, columns in (
        ("by_version", "agent, version, ended_at"),
        ("by_agent", "agent, assignment, ended_at"),
        ("by_tenant", "tenant, ended_at"),
    ):
        await tx.execute(
            f"CREATE INDEX IF NOT EXISTS outcome_runs_{name} ON outcome_runs ({columns})"
        )
    await tx.execute(
        """CREATE TABLE IF NOT EXISTS outcome_marks (
            run_id TEXT PRIMARY KEY,
            success BIGINT NOT NULL,
            score DOUBLE PRECISION,
            set_at DOUBLE PRECISION NOT NULL
        )"""
    )


_SCHEMA = Schema("outcomes", (_v1,))

# One row per run, joined with its explicit outcome (if any): what the statistics fold.
_STATS_SELECT = (
    "SELECT r.tenant, r.status, o.success, o.score, r.cost_usd, r.run_s "
    "FROM outcome_runs r LEFT JOIN outcome_marks o ON o.run_id = r.run_id "
)
# The same with the group columns in front: cost_report folds `row[2:]` per group.
_REPORT_SELECT = (
    "SELECT r.agent, r.version, r.tenant, r.status, o.success, o.score, r.cost_usd, r.run_s "
    "FROM outcome_runs r LEFT JOIN outcome_marks o ON o.run_id = r.run_id "
)
# Runs, successes (explicit outcome first) and cost per (agent, version, tenant): what the
# metric gauges need. `success` is an integer (0/1), so the default is one too: PostgreSQL
# does not mix integers with booleans.
_GROUP_TOTALS = (
    "SELECT r.agent, r.version, r.tenant, COUNT(*), "
    "SUM(CASE WHEN COALESCE(o.success, CASE WHEN r.status = 'completed' THEN 1 ELSE 0 END) "
    "<> 0 THEN 1 ELSE 0 END), "
    "SUM(r.cost_usd) "
    "FROM outcome_runs r LEFT JOIN outcome_marks o ON o.run_id = r.run_id "
    "WHERE r.assignment <> 'shadow' "
    "GROUP BY r.agent, r.version, r.tenant"
)
_IDS_PER_DELETE = 500
"""Run ids per DELETE ... IN (...): well under SQLite's 999 parameters."""


class OutcomeStore:
    """Run outcomes and explicit outcomes in `db`. `clock` (unix seconds) stamps when rows
    were written; `metrics` receives counters as runs are recorded and the gauges on
    `publish_metrics`."""

    def __init__(
        self,
        db: Database,
        clock: Callable[[], float] = time.time,
        metrics: OutcomeMetrics | None = None,
    ) -> None:
        self._db = db
        self._clock = clock
        self._metrics = metrics
        self._published: set[Group] = set()
        """Groups whose gauges this store has set: one that empties is set to zero."""

    async def record_run(self, outcome: RunOutcome) -> None:
        """Record how a run ended. The first record of a run stands; later ones are ignored
        (a resumed run may report its end twice)."""
        await self._db.ensure(_SCHEMA)
        o = outcome
        now = self._clock()
        async with self._db.transaction() as tx:
            inserted = await tx.execute(
                "INSERT INTO outcome_runs (run_id, agent, version, tenant, assignment, status, "
                "cost_usd, run_s, ended_at, primary_run_id, output, steps, recorded_at) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
                "ON CONFLICT (run_id) DO NOTHING",
                (
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
                    now,
                ),
            )
            if inserted and o.over_budget:  # the automatic outcome; a caller's own one wins
                await tx.execute(
                    "INSERT INTO outcome_marks (run_id, success, score, set_at) "
                    "VALUES (?, 0, NULL, ?) ON CONFLICT (run_id) DO NOTHING",
                    (o.run_id, now),
                )
        if inserted and o.assignment != "shadow" and self._metrics is not None:
            self._metrics.run_recorded(o)

    async def set_outcome(self, run_id: str, success: bool, score: float | None = None) -> bool:
        """Store the caller's explicit outcome of a run; it wins over the automatic one. The
        latest call stands (a caller may correct itself).

        The run need not be recorded yet: the caller may judge a run before its end reaches
        this store, so the outcome is kept and applies once it does. Whether the run exists
        and belongs to the caller is the gateway's check (against the run store), made
        before this call; so this returns True once stored."""
        if score is not None and not math.isfinite(score):
            raise ValueError(f"score must be a finite number, not {score!r}")
        await self._db.ensure(_SCHEMA)
        await self._db.execute(
            "INSERT INTO outcome_marks (run_id, success, score, set_at) VALUES (?, ?, ?, ?) "
            "ON CONFLICT (run_id) DO UPDATE SET "
            "success = excluded.success, score = excluded.score, set_at = excluded.set_at",
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
        await self._db.ensure(_SCHEMA)
        return _fold(await self._db.fetchall(_STATS_SELECT + where, args))

    async def stats_by_tenant(
        self, agent: str, since: float | None = None, version: str | None = None
    ) -> dict[str, VersionStats]:
        """Outcomes per tenant (with runs) of an agent's runs that ended at or after `since`,
        across its versions or of one `version`. Shadow runs are excluded."""
        where, args = _filters(agent, since, None)
        if version is not None:
            where += " AND r.version = ?"
            args.append(version)
        await self._db.ensure(_SCHEMA)
        by_tenant: dict[str, list[_Row]] = defaultdict(list)
        for row in await self._db.fetchall(_STATS_SELECT + where, args):
            by_tenant[row[0]].append(row)
        return {tenant: _fold(by_tenant[tenant]) for tenant in sorted(by_tenant)}

    async def cost_report(
        self, since: float | None = None, tenant: str | None = None
    ) -> CostReport:
        """Cost per successful run per tenant: per agent version, per agent and overall, of
        the runs that ended at or after `since`; of one `tenant` only if given (what a
        tenant may see of itself). Shadow runs are excluded."""
        where = "WHERE r.assignment <> 'shadow'"
        args: list[object] = []
        if since is not None:
            where += " AND r.ended_at >= ?"
            args.append(since)
        if tenant is not None:
            where += " AND r.tenant = ?"
            args.append(tenant)
        await self._db.ensure(_SCHEMA)
        rows = await self._db.fetchall(_REPORT_SELECT + where, args)
        versions: dict[tuple[str, str, str], list[_Row]] = defaultdict(list)
        agents: dict[tuple[str, str], list[_Row]] = defaultdict(list)
        tenants: dict[str, list[_Row]] = defaultdict(list)
        for row in rows:
            agent, version, who = str(row[0]), str(row[1]), str(row[2])
            versions[(agent, version, who)].append(row[2:])
            agents[(agent, who)].append(row[2:])
            tenants[who].append(row[2:])
        return CostReport(
            since=since,
            versions=[
                TenantCost(tenant=t, agent=a, version=v, stats=_fold(versions[(a, v, t)]))
                for a, v, t in sorted(versions)
            ],
            agents=[
                TenantCost(tenant=t, agent=a, stats=_fold(agents[(a, t)]))
                for a, t in sorted(agents)
            ],
            tenants=[TenantCost(tenant=t, stats=_fold(tenants[t])) for t in sorted(tenants)],
        )

    async def publish_metrics(self) -> int:
        """Send the current totals of every (agent, version, tenant) group to the metrics
        sink, explicit outcomes applied; returns how many groups were sent.

        Every group, every time: the runs and outcomes are written by many processes, so
        this one cannot know which groups changed. A group this store published before
        and whose runs are all gone (forgotten) is sent as zeros, not left stale."""
        if self._metrics is None:
            return 0
        await self._db.ensure(_SCHEMA)
        totals = await self._db.fetchall(_GROUP_TOTALS)
        current: set[Group] = set()
        for agent, version, tenant, runs, successes, cost in totals:
            group = (str(agent), str(version), str(tenant))
            current.add(group)
            # PostgreSQL sums integers as NUMERIC: int() takes its Decimal too.
            self._metrics.group_totals(group, int(runs), int(successes or 0), float(cost or 0.0))
        for group in sorted(self._published - current):
            self._metrics.group_totals(group, 0, 0, 0.0)
        sent = len(current | self._published)
        self._published = current
        return sent

    async def publish_metrics_every(self, interval_s: float) -> None:
        """Publish the gauges every `interval_s` seconds, for ever (the actor runs this)."""
        while True:
            try:
                await self.publish_metrics()
            except Exception as exc:
                logger.warning(
                    "publishing outcome metrics failed: %r", exc, exc_info=first_traceback(exc)
                )
            await asyncio.sleep(interval_s)

    async def shadow_pairs(self, agent: str, since: float | None = None) -> list[ShadowComparison]:
        """Each (primary version, shadow version) of an agent, comparing the shadow runs that
        ended at or after `since` with their primary runs; ordered by the two versions. A
        shadow run whose primary is not recorded (yet) is left out."""
        sql = (
            "SELECT p.version, s.version, p.output, s.output, p.steps, s.steps, "
            "p.cost_usd, s.cost_usd, p.run_s, s.run_s, p.status, s.status "
            "FROM outcome_runs s JOIN outcome_runs p ON p.run_id = s.primary_run_id "
            "WHERE s.agent = ? AND s.assignment = 'shadow'"
        )
        args: list[object] = [agent]
        if since is not None:
            sql += " AND s.ended_at >= ?"
            args.append(since)
        await self._db.ensure(_SCHEMA)
        groups: dict[tuple[str, str], list[_Row]] = defaultdict(list)
        for row in await self._db.fetchall(sql, args):
            groups[(str(row[0]), str(row[1]))].append(row)
        return [_compare(p, s, groups[(p, s)]) for p, s in sorted(groups)]

    async def forget_runs(self, run_ids: list[str]) -> int:
        """Delete these runs' records and outcomes (a run deleted, or past retention), in
        one transaction; returns how many records went."""
        await self._db.ensure(_SCHEMA)
        gone = 0
        async with self._db.transaction() as tx:
            for start in range(0, len(run_ids), _IDS_PER_DELETE):
                chunk = run_ids[start : start + _IDS_PER_DELETE]
                marks = ", ".join(["?"] * len(chunk))
                await tx.execute(f"DELETE FROM outcome_marks WHERE run_id IN ({marks})", chunk)
                gone += await tx.execute(
                    f"DELETE FROM outcome_runs WHERE run_id IN ({marks})", chunk
                )
        return gone
