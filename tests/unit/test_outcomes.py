"""The outcome models and the Ray metrics sink, without a store (the store itself is tested
on both backends in tests/state/test_outcomes.py)."""

from __future__ import annotations

import math
from typing import Any

import pytest
from pydantic import ValidationError

from actors.outcomes import RunOutcome, VersionStats


def run(run_id: str, **overrides: Any) -> RunOutcome:
    fields: dict[str, Any] = {
        "run_id": run_id,
        "agent": "support",
        "version": "v1",
        "tenant": "acme",
        "assignment": "stable",
        "status": "completed",
        "cost_usd": 0.10,
        "run_s": 1.0,
        "ended_at": 5_000.0,
    }
    fields.update(overrides)
    return RunOutcome(**fields)


def test_a_shadow_run_names_its_primary_and_only_a_shadow_run_does() -> None:
    with pytest.raises(ValidationError, match="shadow run 's' needs primary_run_id"):
        run("s", assignment="shadow")
    with pytest.raises(ValidationError, match="only shadow runs have a primary"):
        run("c", assignment="canary", primary_run_id="p")
    with pytest.raises(ValidationError):
        run("typo", assignment="canery")
    with pytest.raises(ValidationError):
        run("neg", cost_usd=-0.01)


def test_empty_stats_are_the_stats_of_no_runs() -> None:
    empty = VersionStats.empty()
    assert (empty.runs, empty.cost_usd, empty.cost_per_success_usd) == (0, 0.0, None)


class RecordedPoints:
    """Stands where a Ray metric's exporter (its Cython recorder) would: keeps each point
    after Ray's own Python side checked the metric's tags."""

    def __init__(self) -> None:
        self.points: list[tuple[float, dict[str, str]]] = []

    def record(self, value: float, tags: dict[str, str]) -> None:
        self.points.append((value, tags))


def test_ray_metrics_sink_takes_every_kind_of_group() -> None:
    from ray.util.metrics import Metric

    from actors.metrics import gauges_held_still
    from actors.outcomes import RayOutcomeMetrics

    sink = RayOutcomeMetrics()
    metrics: dict[str, RecordedPoints] = {}
    with gauges_held_still():  # every point recorded is the sink's, none the refresher's
        for name, metric in vars(sink).items():
            assert isinstance(metric, Metric)
            metrics[name] = RecordedPoints()
            metric._metric = metrics[name]
        sink.run_recorded(run("a", cost_usd=0.0))
        sink.run_recorded(run("b", status="failed", cost_usd=0.2, code="tool_failed"))
        sink.group_totals(("support", "v1", "acme"), 2, 1, 0.2)
        sink.group_totals(("support", "v1", "globex"), 1, 0, 0.2)

    acme = {"agent": "support", "version": "v1", "tenant": "acme"}
    globex = {**acme, "tenant": "globex"}
    assert metrics["_runs"].points == [
        (1.0, {**acme, "status": "completed", "code": ""}),
        (1.0, {**acme, "status": "failed", "code": "tool_failed"}),
    ]
    assert metrics["_cost"].points == [(0.2, acme)]  # a free run adds no step to the counter
    assert metrics["_recorded"].points == [(2, acme), (1, globex)]
    assert metrics["_successes"].points == [(1, acme), (0, globex)]
    per_success = metrics["_per_success"].points
    assert per_success[0] == (pytest.approx(0.2), acme)
    assert per_success[1][1] == globex and math.isnan(per_success[1][0])  # no success: NaN
