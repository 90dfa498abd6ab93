"""rayfleet's metrics end to end: after a known workload of one tenant's runs (two that
complete with a tool call, one whose providers all fail, one that falls back to its second
provider), Ray's Prometheus endpoint says what the runs' own events say.

The app is shared by the whole session and tests run in any order: the figures compared
exactly are the ones tagged with this test's own tenant (`observed`), as deltas from a scrape
taken first; figures without a tenant tag (provider attempts, tools) are compared as "at
least" what these runs did.
"""

from __future__ import annotations

from typing import Any

import pytest

from agents.events import (
    Event,
    ModelCompleted,
    RunCompleted,
    RunCreated,
    RunFailed,
    ToolResulted,
)
from tests.fixtures_sim import Sim
from tests.helpers import wait_for
from tests.serve.conftest import Service
from tests.serve.metrics import samples, scrape_until
from tests.serve.tenants import OBSERVED_KEY, OBSERVED_RPM_KEY, auth
from tests.serve.test_runs_http import read_sse

pytestmark = pytest.mark.serve

TENANT = "observed"
RUNS = "/v1/agents/support/runs"


def total(page: str, name: str, **labels: str) -> float:
    """The sum of the samples of `name` whose labels include `labels`."""
    return sum(v for found, v in samples(page, name) if labels.items() <= found.items())


def run(service: Service, text: str) -> list[Event]:
    events = read_sse(service.http, "POST", RUNS, json={"input": text}, headers=auth(OBSERVED_KEY))
    assert isinstance(events[0], RunCreated) and events[0].tenant == TENANT
    return events


def expected(runs: list[list[Event]]) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """What the events say, as (metric, labels) -> the delta the endpoint must show."""
    want: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}

    def add(name: str, value: float, **labels: str) -> None:
        key = (name, tuple(sorted({"tenant": TENANT, **labels}.items())))
        want[key] = want.get(key, 0.0) + value

    for events in runs:
        end = events[-1]
        assert isinstance(end, RunCompleted | RunFailed), end
        add("ray_rayfleet_runs_started_total", 1)
        code = end.code if isinstance(end, RunFailed) else ""
        add("ray_rayfleet_runs_total", 1, status=end.kind.removeprefix("run."), code=code)
        add("ray_rayfleet_run_cost_usd_total", end.cost_usd)
        for kind, count in (
            ("input", end.usage.input_tokens),
            ("output", end.usage.output_tokens),
            ("cached_input", end.usage.cached_input_tokens),
            ("cache_write", end.usage.cache_write_tokens),
        ):
            add("ray_rayfleet_tokens_total", count, kind=kind)
        for event in events:
            if isinstance(event, ModelCompleted) and event.tried:
                first = event.tried[0].split("/", 1)[0]
                if first != event.provider:
                    add("ray_rayfleet_model_fallbacks_total", 1, provider=first)
    return want


def test_the_metrics_say_what_the_runs_events_say(service: Service, sim: Sim) -> None:
    _, before = scrape_until(lambda page: True)
    runs = []
    # Every attempt fails: sim-openai twice, then sim-anthropic twice (the strong tier).
    sim.script(*[{"type": "status", "status": 500} for _ in range(4)])
    runs.append(run(service, "Hello?"))
    runs.append(run(service, "Where is order 1002?"))
    runs.append(run(service, "Where is order 1003?"))
    # sim-openai fails twice; sim-anthropic answers the step.
    sim.script(*[{"type": "status", "status": 500} for _ in range(2)])
    runs.append(run(service, "Where is order 1004?"))

    ends = [events[-1].kind for events in runs]
    assert ends == ["run.failed", "run.completed", "run.completed", "run.completed"], ends
    want = expected(runs)
    fallbacks = [k for k in want if k[0] == "ray_rayfleet_model_fallbacks_total"]
    assert fallbacks == [
        ("ray_rayfleet_model_fallbacks_total", (("provider", "sim-openai"), ("tenant", TENANT)))
    ]
    versions = {events[0].version for events in runs}
    tools = [e for events in runs for e in events if isinstance(e, ToolResulted)]
    assert tools and all(e.tool == "lookup_order" and e.ok and not e.cached for e in tools)

    def delta(page: str, name: str, labels: dict[str, str]) -> float:
        return total(page, name, **labels) - total(before, name, **labels)

    def says_what_the_events_say(page: str) -> bool:
        for (name, labels), value in want.items():
            if delta(page, name, dict(labels)) != pytest.approx(value, rel=1e-6, abs=1e-12):
                return False
        tool = {"agent": "support", "tool": "lookup_order", "status": "ok"}
        failed_attempts = {"provider": "sim-openai", "status": "500"}
        return (
            delta(page, "ray_rayfleet_tool_calls_total", tool) >= len(tools)
            and delta(page, "ray_rayfleet_model_attempt_duration_seconds_count", failed_attempts)
            >= 4
        )

    _, page = scrape_until(says_what_the_events_say)

    # Only these runs' versions carry the tenant's figures; the histograms hold the runs.
    started = samples(page, "ray_rayfleet_runs_started_total")
    assert {labels["version"] for labels, _ in started if labels["tenant"] == TENANT} == versions
    for version in versions:
        tags: dict[str, Any] = {"agent": "support", "version": version}
        assert total(page, "ray_rayfleet_run_duration_seconds_count", **tags) >= 1
        assert total(page, "ray_rayfleet_time_to_first_token_seconds_count", **tags) >= 1
        assert total(page, "ray_rayfleet_step_duration_seconds_count", **tags) >= 1
    assert samples(page, "ray_rayfleet_event_store_commit_duration_seconds_count")
    assert samples(page, "ray_rayfleet_live_runs")
    assert samples(page, "ray_rayfleet_sse_clients")  # the gateway's streams, all closed now
    assert samples(page, "ray_rayfleet_breaker_state")


def test_limiter_refusals_are_counted_by_tenant_and_limit(service: Service, sim: Sim) -> None:
    # One run per minute: the first start is admitted, the next two are refused (by the
    # limiter, then by the gateway from the refusal it remembers); both are counted.
    refusals = {"tenant": "observed_rpm", "limit": "requests_per_min"}
    _, before = scrape_until(lambda page: True)
    headers = auth(OBSERVED_RPM_KEY)
    statuses = []
    for text in ("Hello?", "Hello again?", "Anyone?"):
        response = service.http.post(RUNS, json={"input": text}, headers=headers)
        statuses.append(response.status_code)
        if response.status_code == 202:
            run_id = response.json()["run_id"]
    assert statuses == [202, 429, 429], statuses

    def refused(page: str) -> bool:
        name = "ray_rayfleet_limiter_refusals_total"
        return total(page, name, **refusals) - total(before, name, **refusals) == 2

    scrape_until(refused)

    def ended() -> bool:  # leave nothing running for the next test
        summary = service.http.get(f"/v1/runs/{run_id}", headers=headers).json()
        return bool(summary["status"] != "running")

    wait_for(ended, timeout_s=30)
