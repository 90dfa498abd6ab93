"""Traffic between agent versions: splits, stickiness, shadows, kill switches, canary gates."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from agents.errors import UnknownAgent
from serve_app.traffic import (
    AgentTraffic,
    CanaryGate,
    Choice,
    KillSwitches,
    ShadowRule,
    TrafficConfig,
    TrafficRouter,
    VersionStats,
    judge_canary,
)

DEPLOYED = {"support": ("v1", "v2", "v3"), "triage": ("v1", "v2")}
THREADS = [f"thread-{i}" for i in range(2000)]
TOLERANCE = 0.03  # observed share vs weight, absolute; 2,000 threads: about 2.7 sigma at 50%


def _router(**agents: AgentTraffic | dict[str, Any]) -> TrafficRouter:
    return TrafficRouter(TrafficConfig.model_validate({"agents": agents}), DEPLOYED)


def _shares(router: TrafficRouter, agent: str = "support") -> dict[str, float]:
    counts = Counter(router.choose(agent, "acme", t, f"run-{t}").version for t in THREADS)
    return {v: n / len(THREADS) for v, n in counts.items()}


# -- splitting --------------------------------------------------------------------------


def test_agent_without_traffic_goes_to_its_last_declared_version() -> None:
    router = TrafficRouter(TrafficConfig(), DEPLOYED)
    assert router.choose("support", "acme", "t1", "r1") == Choice("v3", "stable", ())
    with pytest.raises(UnknownAgent, match="unknown agent 'nope'"):
        router.choose("nope", "acme", "t1", "r1")


@pytest.mark.parametrize(
    "weights",
    [{"v1": 90, "v2": 10}, {"v1": 0.7, "v2": 0.2, "v3": 0.1}, {"v1": 1, "v2": 1, "v3": 2}],
)
def test_observed_shares_follow_the_weights(weights: dict[str, float]) -> None:
    shares = _shares(_router(support={"weights": weights}))
    total = sum(weights.values())
    for version, weight in weights.items():
        assert shares.get(version, 0.0) == pytest.approx(weight / total, abs=TOLERANCE), shares


def test_runs_without_a_thread_or_stickiness_split_by_run_key() -> None:
    for sticky in (True, False):
        router = _router(support={"weights": {"v1": 80, "v2": 20}, "sticky": sticky})
        counts = Counter(
            router.choose("support", "acme", None if sticky else "same-thread", f"run-{i}").version
            for i in range(2000)
        )
        assert counts["v2"] / 2000 == pytest.approx(0.2, abs=TOLERANCE)


def test_weight_zero_versions_are_never_chosen() -> None:
    router = _router(support={"weights": {"v1": 0, "v2": 1, "v3": 0}})
    assert {router.choose("support", "acme", t, t).version for t in THREADS} == {"v2"}
    assert {router.choose("support", "acme", None, t).version for t in THREADS} == {"v2"}


# -- stickiness -------------------------------------------------------------------------


def test_a_thread_stays_on_its_version_across_runs_and_routers() -> None:
    weights = {"support": {"weights": {"v1": 50, "v2": 30, "v3": 20}}}
    first, second = _router(**weights), _router(**weights)
    for thread in THREADS[:300]:
        versions = {first.choose("support", "acme", thread, f"run-{i}").version for i in range(5)}
        versions.add(second.choose("support", "acme", thread, "another-run").version)
        assert len(versions) == 1, thread


def test_stickiness_is_per_tenant() -> None:
    # The same thread id under two tenants lands independently: they differ half the time.
    # (10,000 threads: at 2,000 this hash happens to sit 3.5 sigma out, at 0.539.)
    router = _router(support={"weights": {"v1": 50, "v2": 50}})
    threads = [f"thread-{i}" for i in range(10_000)]
    differs = sum(
        router.choose("support", "acme", t, "r").version
        != router.choose("support", "globex", t, "r").version
        for t in threads
    )
    assert differs / len(threads) == pytest.approx(0.5, abs=TOLERANCE)


_IN_ANOTHER_PROCESS = """
import json, sys
from serve_app.traffic import TrafficConfig, TrafficRouter
config = TrafficConfig.model_validate({"agents": {"support": {"weights": {"v1": 1, "v2": 1}}}})
router = TrafficRouter(config, {"support": ["v1", "v2", "v3"]})
print(json.dumps([router.choose("support", "acme", f"thread-{i}", "r").version
                  for i in range(200)]))
"""


def test_assignment_is_the_same_in_another_process_with_another_hash_seed() -> None:
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    root = Path(__file__).resolve().parents[2]
    out = subprocess.run(
        [sys.executable, "-c", _IN_ANOTHER_PROCESS],
        env=env,
        cwd=root,
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout
    router = _router(support={"weights": {"v1": 1, "v2": 1}})
    here = [router.choose("support", "acme", f"thread-{i}", "r").version for i in range(200)]
    assert json.loads(out) == here


def test_assignment_is_pinned_across_releases() -> None:
    # A change to the hash moves every thread at the next deploy; this test makes it loud.
    router = _router(support={"weights": {"v1": 1, "v2": 1}})
    got = "".join(
        router.choose("support", "acme", f"thread-{i}", "r").version[1] for i in range(16)
    )
    assert got == GOLDEN


GOLDEN = "1112111211211212"


def test_a_weight_change_moves_only_the_share_that_must_move() -> None:
    before = _router(support={"weights": {"v1": 90, "v2": 10}})
    after = _router(support={"weights": {"v1": 80, "v2": 20}})
    moves = Counter(
        (
            before.choose("support", "acme", t, "r").version,
            after.choose("support", "acme", t, "r").version,
        )
        for t in THREADS
    )
    moved = {pair: n for pair, n in moves.items() if pair[0] != pair[1]}
    assert set(moved) == {("v1", "v2")}  # only toward the version that grew
    assert moved[("v1", "v2")] / len(THREADS) == pytest.approx(0.10, abs=TOLERANCE)


def test_adding_a_weight_zero_version_moves_nobody() -> None:
    before = _router(support={"weights": {"v2": 70, "v3": 30}})
    after = _router(support={"weights": {"v1": 0, "v2": 70, "v3": 30}})
    for t in THREADS:
        assert before.choose("support", "a", t, "r") == after.choose("support", "a", t, "r")


# -- canary and shadows -----------------------------------------------------------------


def test_assignment_says_canary_only_for_the_canary_version() -> None:
    router = _router(support={"weights": {"v1": 90, "v2": 10}, "canary": "v2"})
    for t in THREADS[:500]:
        choice = router.choose("support", "acme", t, "r")
        assert choice.assignment == ("canary" if choice.version == "v2" else "stable")
    assert router.config.agents["support"].stable_version == "v1"


def test_shadow_sampling_honours_its_rate_and_never_mirrors_to_the_chosen_version() -> None:
    router = _router(
        support={
            "weights": {"v1": 50, "v2": 50},
            "shadows": [{"version": "v3", "sample": 0.25}, {"version": "v2", "sample": 0.5}],
        }
    )
    choices = [router.choose("support", "acme", t, f"run-{t}") for t in THREADS]
    assert all(c.version not in c.shadows for c in choices)
    to_v3 = sum("v3" in c.shadows for c in choices) / len(choices)
    assert to_v3 == pytest.approx(0.25, abs=TOLERANCE)
    on_v1 = [c for c in choices if c.version == "v1"]
    assert sum("v2" in c.shadows for c in on_v1) / len(on_v1) == pytest.approx(0.5, abs=TOLERANCE)
    # Rules sample independently: mirrored to both is about the product of the rates.
    both = sum(set(c.shadows) == {"v2", "v3"} for c in on_v1) / len(on_v1)
    assert both == pytest.approx(0.125, abs=TOLERANCE)


def test_shadow_rule_with_a_primary_mirrors_only_that_versions_runs() -> None:
    router = _router(
        support={
            "weights": {"v1": 50, "v2": 50},
            "shadows": [{"version": "v3", "sample": 1.0, "primary": "v1"}],
        }
    )
    for t in THREADS[:500]:
        choice = router.choose("support", "acme", t, t)
        assert choice.shadows == (("v3",) if choice.version == "v1" else ())


def test_shadows_skip_killed_versions() -> None:
    config = TrafficConfig(
        agents={
            "support": AgentTraffic(
                weights={"v1": 1}, shadows=(ShadowRule(version="v3", sample=1),)
            )
        },
        kill=KillSwitches(versions={"support@v3": "leaks memory"}),
    )
    assert TrafficRouter(config, DEPLOYED).choose("support", "acme", "t", "r").shadows == ()


# -- kill switches ----------------------------------------------------------------------


def test_kill_switches_report_the_most_specific_first() -> None:
    kill = {
        "global_reason": "maintenance",
        "tenants": {"acme": "unpaid"},
        "agents": {"support": "bad prompt"},
        "versions": {"support@v2": "loops"},
    }
    layers = ["versions", "agents", "tenants", "global_reason"]
    expected = [
        "agent version 'support@v2' is switched off: loops",
        "agent 'support' is switched off: bad prompt",
        "tenant 'acme' is switched off: unpaid",
        "service is switched off: maintenance",
    ]
    for i, want in enumerate(expected):
        remaining = {k: v for k, v in kill.items() if k in layers[i:]}
        router = TrafficRouter(TrafficConfig.model_validate({"kill": remaining}), DEPLOYED)
        assert router.killed("support", "v2", "acme") == want
    router = TrafficRouter(TrafficConfig.model_validate({"kill": kill}), DEPLOYED)
    assert router.killed("triage", "v1", "globex") == "service is switched off: maintenance"
    assert TrafficRouter(TrafficConfig(), DEPLOYED).killed("support", "v2", "acme") is None


def test_tool_and_model_kill_switches() -> None:
    kill = KillSwitches(tools={"send_email": "spam"}, models={"sim/big": "slow", "tiny": "dumb"})
    router = TrafficRouter(TrafficConfig(kill=kill), DEPLOYED)
    assert router.tool_killed("send_email") == "tool 'send_email' is switched off: spam"
    assert router.tool_killed("search") is None
    assert router.model_killed("big", provider="sim") == "model 'sim/big' is switched off: slow"
    assert router.model_killed("big", provider="other") is None
    assert router.model_killed("tiny", provider="sim") == "model 'tiny' is switched off: dumb"


# -- judging a canary -------------------------------------------------------------------

GATE = CanaryGate(min_runs=50)
STABLE = VersionStats(runs=1000, failures=40, successes=960, cost_usd=96.0, p95_run_s=10.0)


def test_a_healthy_canary_has_no_breaches() -> None:
    canary = VersionStats(runs=100, failures=6, successes=94, cost_usd=10.0, p95_run_s=12.0)
    assert judge_canary(GATE, STABLE, canary) == []


@pytest.mark.parametrize(
    ("canary", "breach"),
    [
        # allowed error rate: 4% x 1.5 + 2% = 8%
        (
            VersionStats(runs=100, failures=9, successes=91, cost_usd=9.0, p95_run_s=10.0),
            "error rate",
        ),
        # allowed cost per success: $0.10 x 1.5 = $0.15
        (
            VersionStats(runs=100, failures=4, successes=96, cost_usd=15.0, p95_run_s=10.0),
            "cost per success",
        ),
        # no successes at all: infinite cost per success (and a breach on error rate)
        (VersionStats(runs=100, failures=100, successes=0, cost_usd=1.0), "cost per success"),
        # allowed p95: 10 s x 2 = 20 s
        (VersionStats(runs=100, failures=4, successes=96, cost_usd=9.0, p95_run_s=21.0), "p95"),
    ],
)
def test_a_worse_canary_breaches(canary: VersionStats, breach: str) -> None:
    reasons = judge_canary(GATE, STABLE, canary)
    assert any(r.startswith(breach) for r in reasons), reasons


def test_no_verdict_below_min_runs_on_either_side() -> None:
    awful = VersionStats(runs=49, failures=49, successes=0, cost_usd=100.0, p95_run_s=999.0)
    assert judge_canary(GATE, STABLE, awful) == []
    few_stable = VersionStats(runs=49, failures=0, successes=49, cost_usd=1.0, p95_run_s=1.0)
    assert judge_canary(GATE, few_stable, VersionStats(1000, 1000, 0, 100.0, 999.0)) == []
    assert judge_canary(GATE, STABLE, VersionStats(50, 50, 0, 100.0, 999.0)) != []


def test_error_rate_breach_names_the_numbers() -> None:
    canary = VersionStats(runs=100, failures=20, successes=80, cost_usd=8.0)
    [reason] = judge_canary(GATE, STABLE, canary)
    assert reason == "error rate 20.0% > 8.0% (stable 4.0% x 1.5 + 2.0%)"


def test_version_stats_reject_impossible_numbers() -> None:
    with pytest.raises(ValueError, match="exceed runs"):
        VersionStats(runs=10, failures=6, successes=6, cost_usd=0.0)
    assert (
        VersionStats(runs=3, failures=3, successes=0, cost_usd=0.0).cost_per_success_usd == math.inf
    )


# -- rollback ---------------------------------------------------------------------------


def test_with_weights_rolls_back_a_canary_and_keeps_the_rest() -> None:
    router = _router(
        support={"weights": {"v1": 90, "v2": 10}, "canary": "v2", "gate": {"min_runs": 7}},
        triage={"weights": {"v1": 1}},
    )
    config = router.with_weights("support", {"v1": 90, "v2": 0})
    support = config.agents["support"]
    assert support.weights == {"v1": 90, "v2": 0}
    assert (support.canary, support.stable, support.gate.min_runs) == ("v2", "v1", 7)
    assert config.agents["triage"] == router.config.agents["triage"]
    assert router.config.agents["support"].weights == {"v1": 90, "v2": 10}  # untouched
    rolled = TrafficRouter(config, DEPLOYED)
    assert {rolled.choose("support", "acme", t, t).version for t in THREADS} == {"v1"}


def test_with_weights_validates() -> None:
    router = _router(support={"weights": {"v1": 1}})
    with pytest.raises(ValueError, match="unknown version 'v9'"):
        router.with_weights("support", {"v9": 1})
    with pytest.raises(ValidationError, match="at least one version above 0"):
        router.with_weights("support", {"v1": 0})


# -- validation -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("traffic", "message"),
    [
        ({"weights": {"v1": 1, "v9": 1}}, "unknown version 'v9' in traffic.agents.support.weights"),
        (
            {"weights": {"v1": 1}, "stable": "v1", "shadows": [{"version": "v7", "sample": 0.1}]},
            "unknown version 'v7' in traffic.agents.support.shadows[0].version",
        ),
        (
            {"weights": {"v1": 1}, "shadows": [{"version": "v2", "sample": 0.1, "primary": "v8"}]},
            "unknown version 'v8' in traffic.agents.support.shadows[0].primary",
        ),
    ],
)
def test_check_against_names_the_unknown_version(traffic: dict[str, Any], message: str) -> None:
    config = TrafficConfig.model_validate({"agents": {"support": traffic}})
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]")):
        config.check_against(DEPLOYED)
    with pytest.raises(ValueError, match="deployed: v1, v2, v3"):
        TrafficRouter(config, DEPLOYED)


def test_check_against_rejects_unknown_agents_and_kill_targets() -> None:
    with pytest.raises(ValueError, match="unknown agent 'suport'"):
        TrafficConfig.model_validate({"agents": {"suport": {"weights": {"v1": 1}}}}).check_against(
            DEPLOYED
        )
    with pytest.raises(ValueError, match="unknown agent 'suport'"):
        TrafficConfig(kill=KillSwitches(agents={"suport": "x"})).check_against(DEPLOYED)
    with pytest.raises(ValueError, match="unknown agent version 'support@v9'"):
        TrafficConfig(kill=KillSwitches(versions={"support@v9": "x"})).check_against(DEPLOYED)


@pytest.mark.parametrize(
    ("traffic", "message"),
    [
        ({"weights": {"v1": 0, "v2": 0}}, "at least one version above 0"),
        ({"weights": {"v1": -1, "v2": 1}}, "greater than or equal to 0"),
        ({"weights": {}}, "at least 1 item"),
        ({"weights": {"v1": 1}, "canary": "v2"}, "canary 'v2' has no weight"),
        ({"weights": {"v1": 1}, "stable": "v2"}, "stable 'v2' has no weight"),
        ({"weights": {"v1": 1, "v2": 1}, "stable": "v2", "canary": "v2"}, "both stable and canary"),
        ({"weights": {"v1": 1}, "canary": "v1"}, "both stable and canary"),
        (
            {"weights": {"v1": 1}, "shadows": [{"version": "v1", "sample": 0.1, "primary": "v1"}]},
            "onto itself",
        ),
        (
            {"weights": {"v1": 1}, "shadows": [{"version": "v2", "sample": 1.5}]},
            "less than or equal to 1",
        ),
        ({"weights": {"v1": 1}, "gate": {"min_runs": 0}}, "greater than or equal to 1"),
    ],
)
def test_invalid_agent_traffic_is_rejected(traffic: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        AgentTraffic.model_validate(traffic)


def test_default_stable_is_the_heaviest_non_canary_version() -> None:
    traffic = AgentTraffic(weights={"v1": 30, "v2": 60, "v3": 10}, canary="v2")
    assert traffic.stable_version == "v1"
    assert AgentTraffic(weights={"v1": 30, "v2": 60}).stable_version == "v2"


@pytest.mark.parametrize(
    "data",
    [
        {"agents": {"support": {"weights": {"v1": 1}, "wieghts": {}}}},
        {"agents": {"support": {"weights": {"v1": 1}, "gate": {"min_run": 5}}}},
        {"kill": {"global": "typo for global_reason"}},
        {
            "agents": {
                "support": {
                    "weights": {"v1": 1},
                    "shadows": [{"version": "v2", "sample": 0.1, "rate": 1}],
                }
            }
        },
        {"routes": {}},
    ],
)
def test_extra_fields_are_rejected(data: dict[str, Any]) -> None:
    with pytest.raises(ValidationError, match="Extra inputs are not permitted"):
        TrafficConfig.model_validate(data)


def test_kill_version_keys_must_name_agent_and_version() -> None:
    with pytest.raises(ValidationError, match="'support-v2' is not 'agent@version'"):
        KillSwitches(versions={"support-v2": "x"})


def test_config_is_frozen() -> None:
    config = TrafficConfig()
    with pytest.raises(ValidationError, match="frozen"):
        config.kill = KillSwitches(global_reason="x")  # type: ignore[misc]
