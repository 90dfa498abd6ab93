"""The outcome store: success and cost per successful run per version and tenant, explicit
outcomes, windows, shadow comparisons, persistence."""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from actors.outcomes import OutcomeStore, RunOutcome, VersionStats


class Clock:
    def __init__(self) -> None:
        self.now = 1_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def store(tmp_path: Path) -> Iterator[OutcomeStore]:
    s = OutcomeStore(str(tmp_path / "outcomes.sqlite"), clock=Clock())
    yield s
    s.close()


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


async def test_cost_per_success_counts_the_cost_of_every_run(store: OutcomeStore) -> None:
    await store.record_run(run("a", cost_usd=0.10))
    await store.record_run(run("b", cost_usd=0.20))
    await store.record_run(run("c", status="failed", cost_usd=0.30))
    await store.record_run(run("d", status="cancelled", cost_usd=0.40))
    await store.record_run(run("other-version", version="v2", cost_usd=9.0))
    await store.record_run(run("other-agent", agent="billing", cost_usd=9.0))

    stats = await store.version_stats("support", "v1")

    assert (stats.runs, stats.successes, stats.failures, stats.cancelled) == (4, 2, 1, 1)
    assert stats.success_rate == 0.5
    assert stats.cost_usd == pytest.approx(1.0)
    # Failed and cancelled runs were paid for: 1.00 over 2 successes, not 0.30 over 2.
    assert stats.cost_per_success_usd == pytest.approx(0.5)
    assert stats.mean_score is None


async def test_no_runs_or_no_success_give_none_not_zero(store: OutcomeStore) -> None:
    assert await store.version_stats("support", "v1") == VersionStats(
        runs=0,
        successes=0,
        failures=0,
        cancelled=0,
        success_rate=None,
        cost_usd=0.0,
        cost_per_success_usd=None,
        p95_run_s=None,
        mean_score=None,
    )
    await store.record_run(run("a", status="failed", cost_usd=0.25))
    stats = await store.version_stats("support", "v1")
    assert stats.success_rate == 0.0
    assert stats.cost_usd == 0.25
    assert stats.cost_per_success_usd is None


async def test_p95_is_the_nearest_rank_over_all_runs(store: OutcomeStore) -> None:
    for i in range(1, 21):  # 1 s ... 20 s, the failed ones included
        await store.record_run(
            run(f"r{i}", run_s=float(i), status="failed" if i % 2 else "completed")
        )
    assert (await store.version_stats("support", "v1")).p95_run_s == 19.0

    await store.record_run(run("alone", version="v2", run_s=3.5))
    assert (await store.version_stats("support", "v2")).p95_run_s == 3.5


async def test_since_selects_runs_that_ended_in_the_window(store: OutcomeStore) -> None:
    await store.record_run(run("old", ended_at=100.0, status="failed"))
    await store.record_run(run("edge", ended_at=200.0))
    await store.record_run(run("new", ended_at=300.0))

    assert (await store.version_stats("support", "v1")).runs == 3
    recent = await store.version_stats("support", "v1", since=200.0)
    assert (recent.runs, recent.successes, recent.success_rate) == (2, 2, 1.0)
    assert (await store.version_stats("support", "v1", since=301.0)).runs == 0


async def test_an_explicit_outcome_after_the_run_overrides_the_automatic_one(
    store: OutcomeStore,
) -> None:
    await store.record_run(run("done-but-wrong"))
    await store.record_run(run("failed-but-fine", status="failed"))
    await store.record_run(run("plain"))

    assert await store.set_outcome("done-but-wrong", success=False, score=0.2)
    assert await store.set_outcome("failed-but-fine", success=True, score=0.6)

    stats = await store.version_stats("support", "v1")
    assert (stats.successes, stats.failures, stats.cancelled) == (2, 1, 0)
    assert stats.mean_score == pytest.approx(0.4)  # the run without a score is not a zero


async def test_an_explicit_outcome_before_the_run_applies_when_it_is_recorded(
    store: OutcomeStore,
) -> None:
    # The caller judged the answer while the run's end had not reached the store yet.
    assert await store.set_outcome("early", success=False) is True
    assert (await store.version_stats("support", "v1")).runs == 0

    await store.record_run(run("early"))

    stats = await store.version_stats("support", "v1")
    assert (stats.runs, stats.successes, stats.failures) == (1, 0, 1)


async def test_an_over_budget_run_is_unsuccessful_unless_the_caller_says_so(
    store: OutcomeStore,
) -> None:
    await store.record_run(run("wrapped-up", over_budget=True))  # completed, with what it had
    await store.record_run(run("judged-fine", over_budget=True))
    assert await store.set_outcome("judged-fine", success=True)  # after: the caller wins
    assert await store.set_outcome("judged-early", success=True)  # before: it stands too
    await store.record_run(run("judged-early", over_budget=True))

    stats = await store.version_stats("support", "v1")
    assert (stats.runs, stats.successes) == (3, 2)
    assert stats.cost_per_success_usd == pytest.approx(0.15)  # all three paid for


async def test_the_latest_explicit_outcome_stands(store: OutcomeStore) -> None:
    await store.record_run(run("a"))
    await store.set_outcome("a", success=False, score=0.1)
    await store.set_outcome("a", success=True, score=0.9)
    stats = await store.version_stats("support", "v1")
    assert (stats.successes, stats.mean_score) == (1, 0.9)


async def test_an_explicit_success_of_a_cancelled_run_counts_as_success(
    store: OutcomeStore,
) -> None:
    await store.record_run(run("stopped-early", status="cancelled"))
    await store.set_outcome("stopped-early", success=True)
    stats = await store.version_stats("support", "v1")
    assert (stats.successes, stats.cancelled) == (1, 0)


async def test_a_score_must_be_finite(store: OutcomeStore) -> None:
    with pytest.raises(ValueError, match="finite"):
        await store.set_outcome("a", success=True, score=float("nan"))


async def test_the_first_record_of_a_run_stands(store: OutcomeStore) -> None:
    await store.record_run(run("resumed", status="completed", cost_usd=0.10))
    # The resumed host reports the same run's end again, with other numbers.
    await store.record_run(run("resumed", status="failed", cost_usd=0.50, version="v2"))

    stats = await store.version_stats("support", "v1")
    assert (stats.runs, stats.successes, stats.cost_usd) == (1, 1, 0.10)
    assert (await store.version_stats("support", "v2")).runs == 0


async def test_shadow_runs_count_only_when_asked_for(store: OutcomeStore) -> None:
    await store.record_run(run("p1", assignment="stable", cost_usd=0.1))
    await store.record_run(run("c1", assignment="canary", cost_usd=0.2))
    await store.record_run(
        run("s1", assignment="shadow", primary_run_id="p1", status="failed", cost_usd=5.0)
    )

    normal = await store.version_stats("support", "v1")
    assert (normal.runs, normal.failures) == (2, 0)
    assert normal.cost_usd == pytest.approx(0.3)
    canary = await store.version_stats("support", "v1", assignment="canary")
    assert (canary.runs, canary.cost_usd) == (1, 0.2)
    shadow = await store.version_stats("support", "v1", assignment="shadow")
    assert (shadow.runs, shadow.failures, shadow.cost_usd) == (1, 1, 5.0)
    assert "s1" not in str(await store.stats_by_tenant("support"))
    assert (await store.stats_by_tenant("support"))["acme"].runs == 2


async def test_an_unknown_assignment_is_named(store: OutcomeStore) -> None:
    with pytest.raises(ValueError, match=r"unknown assignment 'canery' \(known: stable, canary"):
        await store.version_stats("support", "v1", assignment="canery")


async def test_version_stats_of_one_tenant(store: OutcomeStore) -> None:
    await store.record_run(run("a", tenant="acme", cost_usd=0.1))
    await store.record_run(run("g", tenant="globex", status="failed", cost_usd=0.3))
    globex = await store.version_stats("support", "v1", tenant="globex")
    assert (globex.runs, globex.successes, globex.cost_usd) == (1, 0, 0.3)


async def test_cost_per_success_per_tenant(store: OutcomeStore) -> None:
    await store.record_run(run("a1", tenant="acme", cost_usd=0.10))
    await store.record_run(run("a2", tenant="acme", cost_usd=0.30, status="failed"))
    await store.record_run(run("a3", tenant="acme", cost_usd=0.20, version="v2"))
    await store.record_run(run("g1", tenant="globex", cost_usd=1.00, status="failed"))
    await store.record_run(run("old", tenant="initech", ended_at=1.0))
    await store.record_run(run("x", tenant="acme", agent="billing", cost_usd=7.0))

    by_tenant = await store.stats_by_tenant("support", since=10.0)

    assert list(by_tenant) == ["acme", "globex"]
    assert by_tenant["acme"].runs == 3
    assert by_tenant["acme"].cost_per_success_usd == pytest.approx(0.30)  # 0.60 / 2
    assert by_tenant["globex"].cost_per_success_usd is None
    only_v1 = await store.stats_by_tenant("support", since=10.0, version="v1")
    assert only_v1["acme"].cost_per_success_usd == pytest.approx(0.40)  # 0.40 / 1


async def test_shadow_pairs_compare_outputs_costs_latency_and_errors(
    store: OutcomeStore,
) -> None:
    primaries = [
        run("p1", output="42", steps=2, cost_usd=0.10, run_s=1.0),
        run("p2", output="yes", steps=4, cost_usd=0.20, run_s=3.0, assignment="canary"),
        run("p3", output=None, steps=1, cost_usd=0.30, run_s=2.0, status="failed"),
    ]
    shadow = {"version": "v2", "assignment": "shadow"}
    shadows = [
        run("s1", primary_run_id="p1", output="42", steps=3, cost_usd=0.01, run_s=0.5, **shadow),
        run("s2", primary_run_id="p2", output="no", steps=5, cost_usd=0.02, run_s=0.7, **shadow),
        # Neither side produced an output: that is not agreement.
        run("s3", primary_run_id="p3", steps=1, cost_usd=0.03, status="failed", **shadow),
    ]
    for r in [*primaries, *shadows]:
        await store.record_run(r)
    # Another pair of versions, a shadow whose primary is not recorded, another agent.
    await store.record_run(run("q1", version="v0", output="a"))
    await store.record_run(
        run("t1", version="v2", assignment="shadow", primary_run_id="q1", output="a")
    )
    await store.record_run(
        run("orphan", version="v2", assignment="shadow", primary_run_id="never-recorded")
    )
    await store.record_run(run("bp", agent="billing"))
    await store.record_run(
        run("bs", agent="billing", version="v2", assignment="shadow", primary_run_id="bp")
    )

    pairs = await store.shadow_pairs("support")

    assert [(c.primary_version, c.shadow_version, c.pairs) for c in pairs] == [
        ("v0", "v2", 1),
        ("v1", "v2", 3),
    ]
    assert pairs[1].model_dump() == pytest.approx(
        {
            "primary_version": "v1",
            "shadow_version": "v2",
            "pairs": 3,
            "agreements": 1,
            "agreement_rate": 1 / 3,
            "primary_mean_steps": 7 / 3,
            "shadow_mean_steps": 3.0,
            "primary_cost_usd": 0.60,
            "shadow_cost_usd": 0.06,
            "primary_p50_run_s": 2.0,
            "shadow_p50_run_s": 0.7,
            "primary_errors": 1,
            "shadow_errors": 1,
        }
    )
    assert pairs[0].agreement_rate == 1.0


async def test_shadow_pairs_window_is_on_the_shadow_run(store: OutcomeStore) -> None:
    await store.record_run(run("p-old", ended_at=100.0))
    await store.record_run(
        run("s-old", version="v2", assignment="shadow", primary_run_id="p-old", ended_at=101.0)
    )
    await store.record_run(run("p-new", ended_at=299.0))
    await store.record_run(
        run("s-new", version="v2", assignment="shadow", primary_run_id="p-new", ended_at=300.0)
    )
    assert [c.pairs for c in await store.shadow_pairs("support", since=200.0)] == [1]
    assert await store.shadow_pairs("support", since=400.0) == []
    assert await store.shadow_pairs("nobody") == []


def test_a_shadow_run_names_its_primary_and_only_a_shadow_run_does() -> None:
    with pytest.raises(ValidationError, match="shadow run 's' needs primary_run_id"):
        run("s", assignment="shadow")
    with pytest.raises(ValidationError, match="only shadow runs have a primary"):
        run("c", assignment="canary", primary_run_id="p")
    with pytest.raises(ValidationError):
        run("typo", assignment="canery")
    with pytest.raises(ValidationError):
        run("neg", cost_usd=-0.01)


async def test_outcomes_survive_a_reopen(tmp_path: Path) -> None:
    path = str(tmp_path / "o" / "outcomes.sqlite")
    store = OutcomeStore(path)
    await store.record_run(run("a", cost_usd=0.1))
    await store.record_run(run("b", cost_usd=0.3))
    await store.set_outcome("b", success=False, score=0.0)
    await store.set_outcome("c", success=True)  # before its run is recorded
    store.close()

    reopened = OutcomeStore(path)
    await reopened.record_run(run("a", status="failed", cost_usd=9.0))  # the first still stands
    await reopened.record_run(run("c", status="failed", cost_usd=0.2))
    stats = await reopened.version_stats("support", "v1")
    reopened.close()

    assert (stats.runs, stats.successes, stats.failures) == (3, 2, 1)
    assert stats.cost_per_success_usd == pytest.approx(0.3)
    assert stats.mean_score == 0.0


# -- cost per successful run per tenant (C11): the report and the metrics --------------------


async def test_cost_report_per_version_agent_and_tenant(store: OutcomeStore) -> None:
    await store.record_run(run("a1", tenant="acme", cost_usd=0.10))
    await store.record_run(run("a2", tenant="acme", cost_usd=0.30, status="failed"))
    await store.record_run(run("a3", tenant="acme", cost_usd=0.20, version="v2"))
    await store.record_run(run("a4", tenant="acme", cost_usd=0.50, agent="billing"))
    await store.record_run(run("g1", tenant="globex", cost_usd=1.00, status="failed"))
    await store.record_run(run("g2", tenant="globex", cost_usd=0.40))
    await store.set_outcome("g2", success=False)  # the caller's word: not a success
    await store.record_run(
        run("s1", tenant="acme", version="v2", assignment="shadow", primary_run_id="a1")
    )
    await store.record_run(run("old", tenant="initech", ended_at=1.0))

    report = await store.cost_report(since=10.0)

    versions = {(c.agent, c.version, c.tenant): c.stats for c in report.versions}
    assert list(versions) == [
        ("billing", "v1", "acme"),
        ("support", "v1", "acme"),
        ("support", "v1", "globex"),
        ("support", "v2", "acme"),
    ]
    assert versions[("support", "v1", "acme")].cost_per_success_usd == pytest.approx(0.40)
    assert versions[("support", "v2", "acme")].runs == 1  # the shadow run is not counted
    assert versions[("support", "v1", "globex")].successes == 0
    assert versions[("support", "v1", "globex")].cost_per_success_usd is None
    agents = {(c.agent, c.tenant): c.stats for c in report.agents}
    assert all(c.version is None for c in report.agents)
    assert agents[("support", "acme")].cost_per_success_usd == pytest.approx(0.60 / 2)
    tenants = {c.tenant: c.stats for c in report.tenants}
    assert list(tenants) == ["acme", "globex"]
    assert tenants["acme"].cost_per_success_usd == pytest.approx(1.10 / 3)
    assert tenants["globex"].cost_usd == pytest.approx(1.40)
    assert report.since == 10.0


async def test_cost_report_of_one_tenant_shows_nothing_of_another(store: OutcomeStore) -> None:
    await store.record_run(run("a1", tenant="acme", cost_usd=0.10))
    await store.record_run(run("g1", tenant="globex", cost_usd=7.0))

    mine = await store.cost_report(tenant="acme")

    assert {c.tenant for c in [*mine.versions, *mine.agents, *mine.tenants]} == {"acme"}
    assert "globex" not in mine.model_dump_json()
    assert mine.tenants[0].stats.cost_usd == pytest.approx(0.10)
    assert (await store.cost_report(tenant="nobody")).versions == []


def test_empty_stats_are_the_stats_of_no_runs() -> None:
    empty = VersionStats.empty()
    assert (empty.runs, empty.cost_usd, empty.cost_per_success_usd) == (0, 0.0, None)


class FakeMetrics:
    def __init__(self) -> None:
        self.recorded: list[str] = []
        self.totals: dict[tuple[str, str, str], tuple[int, int, float]] = {}

    def run_recorded(self, outcome: RunOutcome) -> None:
        self.recorded.append(outcome.run_id)

    def group_totals(
        self, group: tuple[str, str, str], runs: int, successes: int, cost_usd: float
    ) -> None:
        self.totals[group] = (runs, successes, cost_usd)


async def test_metrics_count_runs_and_publish_cost_per_success_per_group(tmp_path: Path) -> None:
    path = str(tmp_path / "outcomes.sqlite")
    seed = OutcomeStore(path)
    await seed.record_run(run("before", tenant="globex", cost_usd=0.5))
    seed.close()
    metrics = FakeMetrics()
    store = OutcomeStore(path, metrics=metrics)
    try:
        await store.record_run(run("a1", tenant="acme", cost_usd=0.10))
        await store.record_run(run("a1", tenant="acme", cost_usd=9.00))  # ignored: counted once
        await store.record_run(run("s1", assignment="shadow", primary_run_id="a1", version="v2"))
        assert metrics.recorded == ["a1"]

        # The first publication covers every group in the store, also those of earlier runs.
        assert await store.publish_metrics() == 2
        assert metrics.totals[("support", "v1", "acme")] == pytest.approx((1, 1, 0.10))
        assert metrics.totals[("support", "v1", "globex")] == pytest.approx((1, 1, 0.5))
        assert ("support", "v2", "acme") not in metrics.totals  # shadow runs are not traffic

        # Later ones only the groups that changed, explicit outcomes included.
        assert await store.publish_metrics() == 0
        await store.record_run(run("a2", tenant="acme", cost_usd=0.30, status="failed"))
        await store.set_outcome("before", success=False)
        assert await store.publish_metrics() == 2
        assert metrics.totals[("support", "v1", "acme")] == pytest.approx((2, 1, 0.40))
        assert metrics.totals[("support", "v1", "globex")] == pytest.approx((1, 0, 0.5))
        await store.set_outcome("not-recorded-yet", success=True)
        assert await store.publish_metrics() == 0
    finally:
        store.close()


class RecordedPoints:
    """Stands where a Ray metric's exporter (its Cython recorder) would: keeps each point
    after Ray's own Python side checked the metric's tags."""

    def __init__(self) -> None:
        self.points: list[tuple[float, dict[str, str]]] = []

    def record(self, value: float, tags: dict[str, str]) -> None:
        self.points.append((value, tags))


def test_ray_metrics_sink_takes_every_kind_of_group() -> None:
    from ray.util.metrics import Metric

    from actors.outcomes import RayOutcomeMetrics

    sink = RayOutcomeMetrics()
    metrics: dict[str, RecordedPoints] = {}
    for name, metric in vars(sink).items():
        assert isinstance(metric, Metric)
        metrics[name] = RecordedPoints()
        metric._metric = metrics[name]
    sink.run_recorded(run("a", cost_usd=0.0))
    sink.run_recorded(run("b", status="failed", cost_usd=0.2))
    sink.group_totals(("support", "v1", "acme"), 2, 1, 0.2)
    sink.group_totals(("support", "v1", "globex"), 1, 0, 0.2)

    acme = {"agent": "support", "version": "v1", "tenant": "acme"}
    globex = {**acme, "tenant": "globex"}
    assert metrics["_runs"].points == [
        (1.0, {**acme, "status": "completed"}),
        (1.0, {**acme, "status": "failed"}),
    ]
    assert metrics["_cost"].points == [(0.2, acme)]  # a free run adds no step to the counter
    assert metrics["_recorded"].points == [(2, acme), (1, globex)]
    assert metrics["_successes"].points == [(1, acme), (0, globex)]
    per_success = metrics["_per_success"].points
    assert per_success[0] == (pytest.approx(0.2), acme)
    assert per_success[1][1] == globex and math.isnan(per_success[1][0])  # no success: NaN
