"""The outcome store: how each run ended and what it cost, for cost per successful run (C11)
and for comparing agent versions (C13: canary rollback, shadow runs), in SQLite.

Two tables. `runs` holds one row per finished run, written by whoever saw it end; the first
record of a run stands (a resumed run may report its end twice). `outcomes` holds the
explicit outcome a caller posts (`POST /v1/runs/{id}/outcome`), before or after the run ends.

Success: an explicit outcome, when there is one, decides; otherwise a completed run is a
success and a failed or cancelled run is not, nor is one that ran over a budget (it wrapped
up with what it had: an automatic unsuccessful outcome, which a caller's own replaces).
"Completed = success unless the caller says otherwise": most callers never post an outcome,
and a run that reached its final answer is the best signal we have without one.

Cost per successful run = the cost of ALL the runs of a selection / its successes: failed
and cancelled runs were paid for too, and a version that fails often must look expensive.

Shadow runs (mirrored traffic, side effects not executed) never count in a version's
normal statistics; they are asked for with `assignment="shadow"` or compared with their
primary runs by `shadow_pairs`.

Per tenant (C11): `version_stats(..., tenant=)`, `stats_by_tenant` and `cost_report` (every
tenant's figures per agent version, per agent and overall). The same figures go out as
Ray metrics through an `OutcomeMetrics` sink (the actor shell's is `RayOutcomeMetrics`):
counters as runs are recorded, gauges recomputed from the store every few seconds for the
(agent, version, tenant) groups that changed, so explicit outcomes count there too.
"""

from __future__ import annotations

import asyncio
import logging
import math
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterable
from typing import Any, Literal, Protocol, get_args

import ray
from pydantic import BaseModel, ConfigDict, Field, model_validator

from actors.sqlite_file import connect

Assignment = Literal["stable", "canary", "shadow", "pinned"]
RunStatus = Literal["completed", "failed", "cancelled"]

_ASSIGNMENTS: tuple[str, ...] = get_args(Assignment)
logger = logging.getLogger("rayfleet")

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
    "CREATE INDEX IF NOT EXISTS runs_by_tenant ON runs (tenant, ended_at)",
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
# The same with the group columns in front: cost_report folds `row[2:]` per group.
_REPORT_SELECT = (
    "SELECT r.agent, r.version, r.tenant, r.status, o.success, o.score, r.cost_usd, r.run_s "
    "FROM runs r LEFT JOIN outcomes o ON o.run_id = r.run_id "
)
# Runs, successes (explicit outcome first) and cost per (agent, version, tenant), in SQL:
# what the metric gauges need, cheap enough to run every few seconds.
_GROUP_TOTALS = (
    "SELECT r.agent, r.version, r.tenant, COUNT(*), "
    "SUM(CASE WHEN COALESCE(o.success, r.status = 'completed') THEN 1 ELSE 0 END), "
    "SUM(r.cost_usd) "
    "FROM runs r LEFT JOIN outcomes o ON o.run_id = r.run_id "
    "WHERE r.assignment != 'shadow'"
)
_GROUP_KEYS_PER_QUERY = 300
"""(agent, version, tenant) triples per IN list: 900 parameters, under SQLite's 999."""
_Row = tuple[Any, ...]
Group = tuple[str, str, str]
"""(agent, version, tenant)."""


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
    over_budget: bool = False
    """A budget ran out (the run failed on it, or wrapped up with what it had): the run is
    unsuccessful unless the caller posts an outcome saying otherwise."""

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

    @classmethod
    def empty(cls) -> VersionStats:
        """The statistics of no runs at all."""
        return _fold(())


class TenantCost(BaseModel):
    """One tenant's outcomes of a selection: an agent version, an agent (all its versions),
    or everything the tenant ran."""

    model_config = ConfigDict(frozen=True, extra="forbid", use_attribute_docstrings=True)

    tenant: str
    agent: str | None = None
    """None: every agent."""
    version: str | None = None
    """None: every version of `agent` (or of every agent)."""
    stats: VersionStats


class CostReport(BaseModel):
    """Cost per successful run per tenant, at three levels (shadow runs excluded)."""

    model_config = ConfigDict(frozen=True, extra="forbid", use_attribute_docstrings=True)

    since: float | None
    """Runs that ended at or after this (unix seconds); None: every recorded run."""
    versions: list[TenantCost]
    """Per (agent, version, tenant), ordered by those."""
    agents: list[TenantCost]
    """Per (agent, tenant) across the agent's versions."""
    tenants: list[TenantCost]
    """Per tenant across every agent."""


class OutcomeMetrics(Protocol):
    """Where outcome metrics go (Ray metrics in the actor; a fake in tests)."""

    def run_recorded(self, outcome: RunOutcome) -> None:
        """A run's end was recorded for the first time (never for a shadow run)."""

    def group_totals(self, group: Group, runs: int, successes: int, cost_usd: float) -> None:
        """The current totals of one (agent, version, tenant), explicit outcomes applied."""


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

    def __init__(
        self,
        path: str,
        clock: Callable[[], float] = time.time,
        metrics: OutcomeMetrics | None = None,
    ) -> None:
        # Statistics, not a ledger: losing the last commits in a power cut is acceptable.
        self._db = connect(path, synchronous="NORMAL", schema=_SCHEMA)
        self._lock = threading.Lock()
        self._clock = clock
        self._metrics = metrics
        self._dirty: set[Group] | None = None
        """Groups whose gauges are stale; None: all of them (nothing published yet)."""

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
        inserted = await asyncio.to_thread(
            self._write,
            "INSERT OR IGNORE INTO runs VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            row,
        )
        if inserted and o.over_budget:  # the automatic outcome; a caller's own one wins
            await asyncio.to_thread(
                self._write,
                "INSERT OR IGNORE INTO outcomes (run_id, success, score, set_at) "
                "VALUES (?, 0, NULL, ?)",
                (o.run_id, self._clock()),
            )
        if inserted and o.assignment != "shadow":
            self._mark_dirty((o.agent, o.version, o.tenant))
            if self._metrics is not None:
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
        await asyncio.to_thread(
            self._write,
            "INSERT OR REPLACE INTO outcomes (run_id, success, score, set_at) VALUES (?, ?, ?, ?)",
            (run_id, int(success), score, self._clock()),
        )
        if self._metrics is not None:  # the run's group changes only if it is recorded
            found = await asyncio.to_thread(
                self._read,
                "SELECT agent, version, tenant FROM runs "
                "WHERE run_id = ? AND assignment != 'shadow'",
                (run_id,),
            )
            for agent, version, tenant in found:
                self._mark_dirty((agent, version, tenant))
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

    async def cost_report(
        self, since: float | None = None, tenant: str | None = None
    ) -> CostReport:
        """Cost per successful run per tenant: per agent version, per agent and overall, of
        the runs that ended at or after `since`; of one `tenant` only if given (what a
        tenant may see of itself). Shadow runs are excluded."""
        where = "WHERE r.assignment != 'shadow'"
        args: list[object] = []
        if since is not None:
            where += " AND r.ended_at >= ?"
            args.append(since)
        if tenant is not None:
            where += " AND r.tenant = ?"
            args.append(tenant)
        rows = await asyncio.to_thread(self._read, _REPORT_SELECT + where, tuple(args))
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
        """Send the current totals of every group that changed since the last call (all of
        them on the first call) to the metrics sink; returns how many groups were sent."""
        if self._metrics is None:
            return 0
        dirty, self._dirty = self._dirty, set()
        try:
            totals = await asyncio.to_thread(self._group_totals, dirty)
        except BaseException:
            self._dirty = None if dirty is None else self._dirty | dirty  # try again later
            raise
        for agent, version, tenant, runs, successes, cost in totals:
            group = (str(agent), str(version), str(tenant))
            self._metrics.group_totals(group, int(runs), int(successes or 0), float(cost or 0.0))
        return len(totals)

    async def publish_metrics_every(self, interval_s: float) -> None:
        """Publish the gauges every `interval_s` seconds, for ever (the actor runs this)."""
        while True:
            try:
                await self.publish_metrics()
            except Exception as exc:
                logger.warning("publishing outcome metrics failed: %r", exc)
            await asyncio.sleep(interval_s)

    def _mark_dirty(self, group: Group) -> None:
        if self._dirty is not None:
            self._dirty.add(group)

    def _group_totals(self, groups: set[Group] | None) -> list[_Row]:
        if groups is None:
            return self._read(_GROUP_TOTALS + " GROUP BY r.agent, r.version, r.tenant", ())
        found: list[_Row] = []
        ordered = sorted(groups)
        for start in range(0, len(ordered), _GROUP_KEYS_PER_QUERY):
            chunk = ordered[start : start + _GROUP_KEYS_PER_QUERY]
            values = ", ".join(["(?, ?, ?)"] * len(chunk))
            sql = (
                f"{_GROUP_TOTALS} AND (r.agent, r.version, r.tenant) IN (VALUES {values}) "
                "GROUP BY r.agent, r.version, r.tenant"
            )
            found += self._read(sql, tuple(part for group in chunk for part in group))
        return found

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

    async def forget_runs(self, run_ids: list[str]) -> int:
        """Delete these runs' records and outcomes (a run deleted, or past retention);
        returns how many records went. Their groups' gauges are published again."""
        gone, groups = await asyncio.to_thread(self._forget, run_ids)
        for group in groups:
            self._mark_dirty(group)
        return gone

    def _forget(self, run_ids: list[str]) -> tuple[int, list[Group]]:
        keys = [(run_id,) for run_id in run_ids]
        with self._lock:
            groups = [
                (str(agent), str(version), str(tenant))
                for run_id in run_ids
                for agent, version, tenant in self._db.execute(
                    "SELECT agent, version, tenant FROM runs "
                    "WHERE run_id = ? AND assignment != 'shadow'",
                    (run_id,),
                )
            ]
            self._db.execute("BEGIN")
            try:
                self._db.executemany("DELETE FROM outcomes WHERE run_id = ?", keys)
                gone = sum(
                    self._db.execute("DELETE FROM runs WHERE run_id = ?", key).rowcount
                    for key in keys
                )
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        return gone, groups

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def _write(self, sql: str, row: tuple[object, ...]) -> int:
        """Run one statement; returns how many rows it changed."""
        with self._lock:
            return self._db.execute(sql, row).rowcount

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


_TAGS = ("agent", "version", "tenant")
METRICS_INTERVAL_S = 5.0
"""How often the actor recomputes the gauges of the groups that changed."""


class RayOutcomeMetrics:
    """Outcome metrics as Ray metrics (Prometheus through Ray's metrics agent, where Ray
    prefixes them with `ray_`). Tags: agent, version, tenant (+ status on runs)."""

    def __init__(self) -> None:
        from ray.util.metrics import Counter, Gauge

        self._runs = Counter(
            "rayfleet_runs_total",
            "Finished runs recorded, by how they ended (shadow runs excluded).",
            tag_keys=(*_TAGS, "status"),
        )
        self._cost = Counter(
            "rayfleet_run_cost_usd_total",
            "Dollars spent by finished runs, successful or not (shadow runs excluded).",
            tag_keys=_TAGS,
        )
        self._successes = Gauge(
            "rayfleet_successful_runs",
            "Successful runs so far (explicit outcomes applied; completed = success otherwise).",
            tag_keys=_TAGS,
        )
        self._recorded = Gauge(
            "rayfleet_recorded_runs",
            "Finished runs so far (from the outcome store; shadow runs excluded).",
            tag_keys=_TAGS,
        )
        self._per_success = Gauge(
            "rayfleet_cost_per_successful_run_usd",
            "Cost of all runs / successful runs, per agent version and tenant.",
            tag_keys=_TAGS,
        )

    def run_recorded(self, outcome: RunOutcome) -> None:
        tags = {"agent": outcome.agent, "version": outcome.version, "tenant": outcome.tenant}
        self._runs.inc(1.0, tags={**tags, "status": outcome.status})
        if outcome.cost_usd > 0:  # a Ray counter only takes positive steps
            self._cost.inc(outcome.cost_usd, tags=tags)

    def group_totals(self, group: Group, runs: int, successes: int, cost_usd: float) -> None:
        tags = dict(zip(_TAGS, group, strict=True))
        self._recorded.set(runs, tags=tags)
        self._successes.set(successes, tags=tags)
        # NaN (Prometheus' "undefined") while the group has no success, not a stale figure.
        self._per_success.set(cost_usd / successes if successes else math.nan, tags=tags)


class _OutcomeStoreShell(OutcomeStore):
    """The store in its actor, publishing Ray metrics."""

    def __init__(self, path: str) -> None:
        super().__init__(path, metrics=RayOutcomeMetrics())
        # An async actor builds itself inside its event loop: the publisher lives there.
        self._publisher = asyncio.get_running_loop().create_task(
            self.publish_metrics_every(METRICS_INTERVAL_S)
        )


# Ray's stubs lack actor options (max_concurrency) in the keyword overload of `remote`.
OutcomeStoreActor = ray.remote(num_cpus=0, max_concurrency=64)(_OutcomeStoreShell)  # type: ignore[call-overload]
