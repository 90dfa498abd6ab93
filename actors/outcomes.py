"""Outcomes: how each run ended and what it cost, for cost per successful run (C11) and for
comparing agent versions (C13: canary rollback, shadow runs). The models and the folding
of rows into statistics live here; the store is actors.state.outcomes.OutcomeStore.

One record per finished run, written by whoever saw it end; the first record of a run
stands (a resumed run may report its end twice). An explicit outcome is what a caller
posts (`POST /v1/runs/{id}/outcome`), before or after the run ends.

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
Ray metrics through an `OutcomeMetrics` sink (`RayOutcomeMetrics`): counters as runs are
recorded (by the run host that records them), gauges recomputed from the store every few
seconds (by the run pool), so explicit outcomes count there too.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any, Literal, Protocol, get_args

from pydantic import BaseModel, ConfigDict, Field, model_validator

Assignment = Literal["stable", "canary", "shadow", "pinned"]
RunStatus = Literal["completed", "failed", "cancelled"]

_ASSIGNMENTS: tuple[str, ...] = get_args(Assignment)

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
    code: str = ""
    """A failed run's error code (run.failed); empty otherwise. A metric label only, not
    stored."""

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
    prefixes them with `ray_`). Tags: agent, version, tenant (+ status and code on runs).
    The other metrics are actors.metrics."""

    def __init__(self) -> None:
        from ray.util.metrics import Counter

        from actors.metrics import HeldGauge

        self._runs = Counter(
            "rayfleet_runs_total",
            "Finished runs recorded, by how they ended: status, and a failed run's error "
            "code (shadow runs excluded).",
            tag_keys=(*_TAGS, "status", "code"),
        )
        self._cost = Counter(
            "rayfleet_run_cost_usd_total",
            "Dollars spent by finished runs, successful or not (shadow runs excluded).",
            tag_keys=_TAGS,
        )
        self._successes = HeldGauge(
            "rayfleet_successful_runs",
            "Successful runs so far (explicit outcomes applied; completed = success otherwise).",
            tag_keys=_TAGS,
        )
        self._recorded = HeldGauge(
            "rayfleet_recorded_runs",
            "Finished runs so far (from the outcome store; shadow runs excluded).",
            tag_keys=_TAGS,
        )
        self._per_success = HeldGauge(
            "rayfleet_cost_per_successful_run_usd",
            "Cost of all runs / successful runs, per agent version and tenant.",
            tag_keys=_TAGS,
        )

    def run_recorded(self, outcome: RunOutcome) -> None:
        tags = {"agent": outcome.agent, "version": outcome.version, "tenant": outcome.tenant}
        self._runs.inc(1.0, tags={**tags, "status": outcome.status, "code": outcome.code})
        if outcome.cost_usd > 0:  # a Ray counter only takes positive steps
            self._cost.inc(outcome.cost_usd, tags=tags)

    def group_totals(self, group: Group, runs: int, successes: int, cost_usd: float) -> None:
        tags = dict(zip(_TAGS, group, strict=True))
        self._recorded.set(runs, tags=tags)
        self._successes.set(successes, tags=tags)
        # NaN (Prometheus' "undefined") while the group has no success, not a stale figure.
        self._per_success.set(cost_usd / successes if successes else math.nan, tags=tags)
