"""The outcome store on both backends: success and cost per successful run per version
and tenant, explicit outcomes, windows, shadow comparisons, metrics, persistence, and the
SQLite file of older rayfleet."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import pytest

from actors.outcomes import RunOutcome, VersionStats
from actors.state import State
from actors.state.outcomes import OutcomeStore


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


async def test_cost_per_success_counts_the_cost_of_every_run(state: State) -> None:
    await state.outcomes.record_run(run("a", cost_usd=0.10))
    await state.outcomes.record_run(run("b", cost_usd=0.20))
    await state.outcomes.record_run(run("c", status="failed", cost_usd=0.30))
    await state.outcomes.record_run(run("d", status="cancelled", cost_usd=0.40))
    await state.outcomes.record_run(run("other-version", version="v2", cost_usd=9.0))
    await state.outcomes.record_run(run("other-agent", agent="billing", cost_usd=9.0))

    stats = await state.outcomes.version_stats("support", "v1")

    assert (stats.runs, stats.successes, stats.failures, stats.cancelled) == (4, 2, 1, 1)
    assert stats.success_rate == 0.5
    assert stats.cost_usd == pytest.approx(1.0)
    # Failed and cancelled runs were paid for: 1.00 over 2 successes, not 0.30 over 2.
    assert stats.cost_per_success_usd == pytest.approx(0.5)
    assert stats.mean_score is None


async def test_no_runs_or_no_success_give_none_not_zero(state: State) -> None:
    assert await state.outcomes.version_stats("support", "v1") == VersionStats(
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
    await state.outcomes.record_run(run("a", status="failed", cost_usd=0.25))
    stats = await state.outcomes.version_stats("support", "v1")
    assert stats.success_rate == 0.0
    assert stats.cost_usd == 0.25
    assert stats.cost_per_success_usd is None


async def test_p95_is_the_nearest_rank_over_all_runs(state: State) -> None:
    for i in range(1, 21):  # 1 s ... 20 s, the failed ones included
        await state.outcomes.record_run(
            run(f"r{i}", run_s=float(i), status="failed" if i % 2 else "completed")
        )
    assert (await state.outcomes.version_stats("support", "v1")).p95_run_s == 19.0

    await state.outcomes.record_run(run("alone", version="v2", run_s=3.5))
    assert (await state.outcomes.version_stats("support", "v2")).p95_run_s == 3.5


async def test_since_selects_runs_that_ended_in_the_window(state: State) -> None:
    await state.outcomes.record_run(run("old", ended_at=100.0, status="failed"))
    await state.outcomes.record_run(run("edge", ended_at=200.0))
    await state.outcomes.record_run(run("new", ended_at=300.0))

    assert (await state.outcomes.version_stats("support", "v1")).runs == 3
    recent = await state.outcomes.version_stats("support", "v1", since=200.0)
    assert (recent.runs, recent.successes, recent.success_rate) == (2, 2, 1.0)
    assert (await state.outcomes.version_stats("support", "v1", since=301.0)).runs == 0


async def test_an_explicit_outcome_after_the_run_overrides_the_automatic_one(
    state: State,
) -> None:
    await state.outcomes.record_run(run("done-but-wrong"))
    await state.outcomes.record_run(run("failed-but-fine", status="failed"))
    await state.outcomes.record_run(run("plain"))

    assert await state.outcomes.set_outcome("done-but-wrong", success=False, score=0.2)
    assert await state.outcomes.set_outcome("failed-but-fine", success=True, score=0.6)

    stats = await state.outcomes.version_stats("support", "v1")
    assert (stats.successes, stats.failures, stats.cancelled) == (2, 1, 0)
    assert stats.mean_score == pytest.approx(0.4)  # the run without a score is not a zero


async def test_an_explicit_outcome_before_the_run_applies_when_it_is_recorded(
    state: State,
) -> None:
    # The caller judged the answer while the run's end had not reached the store yet.
    assert await state.outcomes.set_outcome("early", success=False) is True
    assert (await state.outcomes.version_stats("support", "v1")).runs == 0

    await state.outcomes.record_run(run("early"))

    stats = await state.outcomes.version_stats("support", "v1")
    assert (stats.runs, stats.successes, stats.failures) == (1, 0, 1)


async def test_an_over_budget_run_is_unsuccessful_unless_the_caller_says_so(
    state: State,
) -> None:
    await state.outcomes.record_run(
        run("wrapped-up", over_budget=True)
    )  # completed, with what it had
    await state.outcomes.record_run(run("judged-fine", over_budget=True))
    assert await state.outcomes.set_outcome("judged-fine", success=True)  # after: the caller wins
    assert await state.outcomes.set_outcome("judged-early", success=True)  # before: it stands too
    await state.outcomes.record_run(run("judged-early", over_budget=True))

    stats = await state.outcomes.version_stats("support", "v1")
    assert (stats.runs, stats.successes) == (3, 2)
    assert stats.cost_per_success_usd == pytest.approx(0.15)  # all three paid for


async def test_the_latest_explicit_outcome_stands(state: State) -> None:
    await state.outcomes.record_run(run("a"))
    await state.outcomes.set_outcome("a", success=False, score=0.1)
    await state.outcomes.set_outcome("a", success=True, score=0.9)
    stats = await state.outcomes.version_stats("support", "v1")
    assert (stats.successes, stats.mean_score) == (1, 0.9)


async def test_an_explicit_success_of_a_cancelled_run_counts_as_success(
    state: State,
) -> None:
    await state.outcomes.record_run(run("stopped-early", status="cancelled"))
    await state.outcomes.set_outcome("stopped-early", success=True)
    stats = await state.outcomes.version_stats("support", "v1")
    assert (stats.successes, stats.cancelled) == (1, 0)


async def test_a_score_must_be_finite(state: State) -> None:
    with pytest.raises(ValueError, match="finite"):
        await state.outcomes.set_outcome("a", success=True, score=float("nan"))


async def test_the_first_record_of_a_run_stands(state: State) -> None:
    await state.outcomes.record_run(run("resumed", status="completed", cost_usd=0.10))
    # The resumed host reports the same run's end again, with other numbers.
    await state.outcomes.record_run(run("resumed", status="failed", cost_usd=0.50, version="v2"))

    stats = await state.outcomes.version_stats("support", "v1")
    assert (stats.runs, stats.successes, stats.cost_usd) == (1, 1, 0.10)
    assert (await state.outcomes.version_stats("support", "v2")).runs == 0


async def test_shadow_runs_count_only_when_asked_for(state: State) -> None:
    await state.outcomes.record_run(run("p1", assignment="stable", cost_usd=0.1))
    await state.outcomes.record_run(run("c1", assignment="canary", cost_usd=0.2))
    await state.outcomes.record_run(
        run("s1", assignment="shadow", primary_run_id="p1", status="failed", cost_usd=5.0)
    )

    normal = await state.outcomes.version_stats("support", "v1")
    assert (normal.runs, normal.failures) == (2, 0)
    assert normal.cost_usd == pytest.approx(0.3)
    canary = await state.outcomes.version_stats("support", "v1", assignment="canary")
    assert (canary.runs, canary.cost_usd) == (1, 0.2)
    shadow = await state.outcomes.version_stats("support", "v1", assignment="shadow")
    assert (shadow.runs, shadow.failures, shadow.cost_usd) == (1, 1, 5.0)
    assert "s1" not in str(await state.outcomes.stats_by_tenant("support"))
    assert (await state.outcomes.stats_by_tenant("support"))["acme"].runs == 2


async def test_an_unknown_assignment_is_named(state: State) -> None:
    with pytest.raises(ValueError, match=r"unknown assignment 'canery' \(known: stable, canary"):
        await state.outcomes.version_stats("support", "v1", assignment="canery")


async def test_version_stats_of_one_tenant(state: State) -> None:
    await state.outcomes.record_run(run("a", tenant="acme", cost_usd=0.1))
    await state.outcomes.record_run(run("g", tenant="globex", status="failed", cost_usd=0.3))
    globex = await state.outcomes.version_stats("support", "v1", tenant="globex")
    assert (globex.runs, globex.successes, globex.cost_usd) == (1, 0, 0.3)


async def test_cost_per_success_per_tenant(state: State) -> None:
    await state.outcomes.record_run(run("a1", tenant="acme", cost_usd=0.10))
    await state.outcomes.record_run(run("a2", tenant="acme", cost_usd=0.30, status="failed"))
    await state.outcomes.record_run(run("a3", tenant="acme", cost_usd=0.20, version="v2"))
    await state.outcomes.record_run(run("g1", tenant="globex", cost_usd=1.00, status="failed"))
    await state.outcomes.record_run(run("old", tenant="initech", ended_at=1.0))
    await state.outcomes.record_run(run("x", tenant="acme", agent="billing", cost_usd=7.0))

    by_tenant = await state.outcomes.stats_by_tenant("support", since=10.0)

    assert list(by_tenant) == ["acme", "globex"]
    assert by_tenant["acme"].runs == 3
    assert by_tenant["acme"].cost_per_success_usd == pytest.approx(0.30)  # 0.60 / 2
    assert by_tenant["globex"].cost_per_success_usd is None
    only_v1 = await state.outcomes.stats_by_tenant("support", since=10.0, version="v1")
    assert only_v1["acme"].cost_per_success_usd == pytest.approx(0.40)  # 0.40 / 1


async def test_shadow_pairs_compare_outputs_costs_latency_and_errors(
    state: State,
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
        await state.outcomes.record_run(r)
    # Another pair of versions, a shadow whose primary is not recorded, another agent.
    await state.outcomes.record_run(run("q1", version="v0", output="a"))
    await state.outcomes.record_run(
        run("t1", version="v2", assignment="shadow", primary_run_id="q1", output="a")
    )
    await state.outcomes.record_run(
        run("orphan", version="v2", assignment="shadow", primary_run_id="never-recorded")
    )
    await state.outcomes.record_run(run("bp", agent="billing"))
    await state.outcomes.record_run(
        run("bs", agent="billing", version="v2", assignment="shadow", primary_run_id="bp")
    )

    pairs = await state.outcomes.shadow_pairs("support")

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


async def test_shadow_pairs_window_is_on_the_shadow_run(state: State) -> None:
    await state.outcomes.record_run(run("p-old", ended_at=100.0))
    await state.outcomes.record_run(
        run("s-old", version="v2", assignment="shadow", primary_run_id="p-old", ended_at=101.0)
    )
    await state.outcomes.record_run(run("p-new", ended_at=299.0))
    await state.outcomes.record_run(
        run("s-new", version="v2", assignment="shadow", primary_run_id="p-new", ended_at=300.0)
    )
    assert [c.pairs for c in await state.outcomes.shadow_pairs("support", since=200.0)] == [1]
    assert await state.outcomes.shadow_pairs("support", since=400.0) == []
    assert await state.outcomes.shadow_pairs("nobody") == []


async def test_outcomes_survive_a_reopen(state: State) -> None:
    await state.outcomes.record_run(run("a", cost_usd=0.1))
    await state.outcomes.record_run(run("b", cost_usd=0.3))
    await state.outcomes.set_outcome("b", success=False, score=0.0)
    await state.outcomes.set_outcome("c", success=True)  # before its run is recorded

    reopened = State(state.url)
    try:
        outcomes = reopened.outcomes
        await outcomes.record_run(run("a", status="failed", cost_usd=9.0))  # the first stands
        await outcomes.record_run(run("c", status="failed", cost_usd=0.2))
        stats = await outcomes.version_stats("support", "v1")
    finally:
        await reopened.close()

    assert (stats.runs, stats.successes, stats.failures) == (3, 2, 1)
    assert stats.cost_per_success_usd == pytest.approx(0.3)
    assert stats.mean_score == 0.0


async def test_forgotten_runs_take_their_outcomes_with_them(state: State) -> None:
    await state.outcomes.record_run(run("a"))
    await state.outcomes.record_run(run("b", over_budget=True))
    await state.outcomes.set_outcome("a", success=False, score=0.5)
    await state.outcomes.record_run(run("kept", cost_usd=0.2))

    assert await state.outcomes.forget_runs(["a", "b", "never-recorded", "a"]) == 2
    assert await state.outcomes.forget_runs([]) == 0

    # Recorded again (a new run with a reused id), nothing of the old outcome remains.
    await state.outcomes.record_run(run("a"))
    stats = await state.outcomes.version_stats("support", "v1")
    assert (stats.runs, stats.successes, stats.mean_score) == (2, 2, None)


# -- cost per successful run per tenant (C11): the report and the metrics --------------------


async def test_cost_report_per_version_agent_and_tenant(state: State) -> None:
    await state.outcomes.record_run(run("a1", tenant="acme", cost_usd=0.10))
    await state.outcomes.record_run(run("a2", tenant="acme", cost_usd=0.30, status="failed"))
    await state.outcomes.record_run(run("a3", tenant="acme", cost_usd=0.20, version="v2"))
    await state.outcomes.record_run(run("a4", tenant="acme", cost_usd=0.50, agent="billing"))
    await state.outcomes.record_run(run("g1", tenant="globex", cost_usd=1.00, status="failed"))
    await state.outcomes.record_run(run("g2", tenant="globex", cost_usd=0.40))
    await state.outcomes.set_outcome("g2", success=False)  # the caller's word: not a success
    await state.outcomes.record_run(
        run("s1", tenant="acme", version="v2", assignment="shadow", primary_run_id="a1")
    )
    await state.outcomes.record_run(run("old", tenant="initech", ended_at=1.0))

    report = await state.outcomes.cost_report(since=10.0)

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


async def test_cost_report_of_one_tenant_shows_nothing_of_another(state: State) -> None:
    await state.outcomes.record_run(run("a1", tenant="acme", cost_usd=0.10))
    await state.outcomes.record_run(run("g1", tenant="globex", cost_usd=7.0))

    mine = await state.outcomes.cost_report(tenant="acme")

    assert {c.tenant for c in [*mine.versions, *mine.agents, *mine.tenants]} == {"acme"}
    assert "globex" not in mine.model_dump_json()
    assert mine.tenants[0].stats.cost_usd == pytest.approx(0.10)
    assert (await state.outcomes.cost_report(tenant="nobody")).versions == []


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


async def test_metrics_count_runs_and_publish_every_group_written_by_any_process(
    state: State,
) -> None:
    await state.outcomes.record_run(run("before", tenant="globex", cost_usd=0.5))
    metrics = FakeMetrics()
    store = OutcomeStore(state.database("outcomes"), metrics=metrics)
    await store.record_run(run("a1", tenant="acme", cost_usd=0.10))
    await store.record_run(run("a1", tenant="acme", cost_usd=9.00))  # ignored: counted once
    await store.record_run(run("s1", assignment="shadow", primary_run_id="a1", version="v2"))
    assert metrics.recorded == ["a1"]

    # Every group in the store, also those of runs recorded elsewhere.
    assert await store.publish_metrics() == 2
    assert metrics.totals[("support", "v1", "acme")] == pytest.approx((1, 1, 0.10))
    assert metrics.totals[("support", "v1", "globex")] == pytest.approx((1, 1, 0.5))
    assert ("support", "v2", "acme") not in metrics.totals  # shadow runs are not traffic

    # Another process records a run and posts an outcome: the next publication has both.
    other = State(state.url)
    try:
        await other.outcomes.record_run(run("a2", tenant="acme", cost_usd=0.30, status="failed"))
        await other.outcomes.set_outcome("before", success=False)
        await other.outcomes.set_outcome("not-recorded-yet", success=True)
    finally:
        await other.close()
    assert metrics.recorded == ["a1"]  # the other process counts its own runs
    assert await store.publish_metrics() == 2
    assert metrics.totals[("support", "v1", "acme")] == pytest.approx((2, 1, 0.40))
    assert metrics.totals[("support", "v1", "globex")] == pytest.approx((1, 0, 0.5))

    # A group whose runs are all forgotten goes to zero rather than staying as it was.
    assert await store.forget_runs(["before"]) == 1
    assert await store.publish_metrics() == 2
    assert metrics.totals[("support", "v1", "globex")] == (0, 0, 0.0)
    assert await store.publish_metrics() == 1


# The tables as the outcome store before the state layer created them (actors/outcomes.py).
LEGACY_DDL = (
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


async def test_a_sqlite_outcomes_file_of_older_rayfleet_is_upgraded(tmp_path: Path) -> None:
    directory = tmp_path / "data"
    directory.mkdir(mode=0o700)
    with sqlite3.connect(directory / "outcomes.sqlite") as legacy:
        for statement in LEGACY_DDL:
            legacy.execute(statement)
        legacy.executemany(
            "INSERT INTO runs VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [
                ("p1", "support", "v1", "acme", "stable", "completed", 0.1, 1.0, 5e3,
                 None, "42", 2, 5e3),
                ("p2", "support", "v1", "acme", "stable", "completed", 0.3, 3.0, 5e3,
                 None, "no", 4, 5e3),
                ("s1", "support", "v2", "acme", "shadow", "completed", 0.01, 0.5, 5e3,
                 "p1", "42", 3, 5e3),
            ],
        )  # fmt: skip
        legacy.execute("INSERT INTO outcomes VALUES ('p2', 0, 0.25, 5e3)")
    legacy.close()

    state = State(f"sqlite://{directory}")
    try:
        await state.outcomes.record_run(run("new", cost_usd=0.2))
        stats = await state.outcomes.version_stats("support", "v1")
        pairs = await state.outcomes.shadow_pairs("support")
    finally:
        await state.close()

    assert (stats.runs, stats.successes, stats.mean_score) == (3, 2, 0.25)
    assert stats.cost_usd == pytest.approx(0.6)
    assert [(c.pairs, c.agreements) for c in pairs] == [(1, 1)]
    with sqlite3.connect(directory / "outcomes.sqlite") as upgraded:
        names = {str(name) for (name,) in upgraded.execute("SELECT name FROM sqlite_master")}
    upgraded.close()
    assert {"outcome_runs", "outcome_marks", "outcome_runs_by_version"} <= names
    assert not names & {"runs", "outcomes", "runs_by_version", "runs_by_agent", "runs_by_tenant"}
