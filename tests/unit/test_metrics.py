"""rayfleet's metrics without Ray: the event -> metric derivation (RunObserver), what a run
host records as it stores a run (and does not record again when the run resumes), the
breaker hook, model attempts by status, and the Grafana dashboard against the metrics."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import httpx2
import pytest

from actors.breaker import Breakers
from actors.caches import CacheSettings
from actors.credentials import TenantContext
from actors.limiter import TenantLimiter, TenantLimits
from actors.metrics import (
    HeldGauge,
    RayfleetMetrics,
    RunObserver,
    gauges_held_still,
    rayfleet_metrics,
)
from actors.outcomes import RayOutcomeMetrics
from actors.router import ModelRouter
from actors.run_host import RunHost, new_run_id
from actors.settings import RuntimeSettings, simulator_providers
from actors.state import open_state
from actors.tenant_model import TenantModel
from actors.tool_pool import ToolPool
from agents.errors import TenantLimited
from agents.eventlog import EventLog
from agents.events import Event, ModelCompleted, RunCompleted, RunCreated, is_terminal
from agents.examples import example_specs, support_tools
from agents.loop import Ports, RunInput, execute_run
from agents.messages import Message, ToolCall, Usage
from agents.spec import AgentSpec
from tests.fixtures_sim import Sim
from tests.helpers import eventually
from tests.scripted import PRICES, Reply, ScriptedModel

ROOT = Path(__file__).parents[2]
DASHBOARD = ROOT / "cluster" / "grafana-dashboard.json"
Points = list[tuple[float, dict[str, str]]]


class RecordedPoints:
    """Stands where a Ray metric's exporter (its Cython recorder) would: keeps each point
    after Ray's own Python side checked the metric's tags."""

    def __init__(self) -> None:
        self.points: Points = []

    def record(self, value: float, tags: dict[str, str]) -> None:
        self.points.append((value, tags))


def recording(metrics: RayfleetMetrics) -> dict[str, RecordedPoints]:
    """Every metric of `metrics` recording into a RecordedPoints, by attribute name."""
    recorders = {}
    for name, metric in vars(metrics).items():
        recorders[name] = RecordedPoints()
        metric._metric = recorders[name]
    return recorders


@pytest.fixture
def recorded() -> Iterator[dict[str, RecordedPoints]]:
    """This process's metrics (the ones the run host and the router use), recorded."""
    metrics = rayfleet_metrics()
    saved = {name: metric._metric for name, metric in vars(metrics).items()}
    try:
        with gauges_held_still():  # every point recorded is the code's, none the refresher's
            yield recording(metrics)
    finally:
        for name, metric in vars(metrics).items():
            metric._metric = saved[name]


def support() -> AgentSpec:
    return next(s for s in example_specs() if s.name == "support")


SCRIPT = [
    Reply("Let me look.", (ToolCall(id="c1", name="lookup_order", arguments={"order_id": 1002}),)),
    Reply(
        "It ships today.",
        usage=Usage(input_tokens=300, cached_input_tokens=200, output_tokens=40),
    ),
]
RUN = {"agent": "support", "version": "v1", "tenant": "acme"}
VERSION = {"agent": "support", "version": "v1"}


async def scripted_run() -> list[Event]:
    """The events of a two-step run: a tool call, then the answer."""
    support_tools.reset_refunds()
    log = EventLog("run-1")
    model = ScriptedModel(SCRIPT)
    request = RunInput(run_id="run-1", input="Where is order 1002?", tenant="acme")
    await execute_run(support(), request, Ports(model=model, tools=ToolPool()), log)
    model.check()
    return log.events()


def observed(stored: list[Event], new: list[Event]) -> dict[str, Points]:
    """What an observer built with `stored` records for `new`."""
    metrics = RayfleetMetrics()
    recorders = recording(metrics)
    RunObserver(metrics, support(), "acme", stored).observe(new)
    return {name: r.points for name, r in recorders.items() if r.points}


async def test_a_run_s_events_give_its_metrics() -> None:
    events = await scripted_run()
    end = events[-1]
    assert isinstance(end, RunCompleted)
    created = events[0]
    seen = observed([], events)

    assert seen["runs_started"] == [(1.0, RUN)]
    assert seen["run_seconds"] == [(end.ts - created.ts, {**VERSION, "status": "completed"})]
    [(first_token_s, tags)] = seen["first_token_seconds"]
    first_delta = next(e for e in events if e.kind == "model.delta")
    assert (first_token_s, tags) == (first_delta.ts - created.ts, VERSION)
    assert [tags for _, tags in seen["step_seconds"]] == [VERSION, VERSION]  # two steps
    tool = {"agent": "support", "tool": "lookup_order"}
    assert seen["tool_calls"] == [(1.0, {**tool, "status": "ok"})]
    assert [tags for _, tags in seen["tool_seconds"]] == [tool]
    # Tokens are the run's own figures, counted once with its end.
    assert end.usage == Usage(input_tokens=400, cached_input_tokens=200, output_tokens=60)
    assert seen["tokens"] == [
        (400.0, {**RUN, "kind": "input"}),
        (60.0, {**RUN, "kind": "output"}),
        (200.0, {**RUN, "kind": "cached_input"}),
    ]
    assert "fallbacks" not in seen  # answered by the first provider


async def test_a_resumed_run_says_nothing_twice_whatever_the_cut() -> None:
    # The events before the cut were observed by the host that stored them; the host that
    # resumes the run reads them back and observes only what it emits itself. Together they
    # say exactly what one host would have said.
    events = await scripted_run()
    whole = observed([], events)
    for cut in range(len(events) + 1):
        before, after = observed([], events[:cut]), observed(events[:cut], events[cut:])
        together = {name: before.get(name, []) + after.get(name, []) for name in {*before, *after}}
        assert together == whole, f"cut after {cut} events"


def test_a_fallback_is_an_answer_from_another_provider_than_the_first_that_failed() -> None:
    log = EventLog("run-1")
    log.emit(RunCreated, agent="support", version="v1", input="hi", tenant="acme")
    common = {"tier": "strong", "model": "sim-strong", "text": "", "tool_calls": 0}
    common |= {"usage": Usage(), "cost_usd": 0.0, "latency_ms": 1.0}
    for provider, tried in [
        ("sim-anthropic", ("sim-openai/sim-strong", "sim-openai/sim-strong")),  # fell back
        ("sim-openai", ("sim-openai/sim-strong",)),  # retried on the same provider
        ("sim-openai", ()),
    ]:
        log.emit(ModelCompleted, step=1, provider=provider, tried=tried, **common)  # type: ignore[arg-type]
    seen = observed([], log.events())
    assert seen["fallbacks"] == [(1.0, {**RUN, "provider": "sim-openai"})]


def test_the_breaker_hook_hears_every_state_change() -> None:
    now = [0.0]
    heard: list[tuple[str, str]] = []
    breakers = Breakers(
        failure_threshold=1, open_s=5.0, clock=lambda: now[0], on_change=lambda *c: heard.append(c)
    )
    permit = breakers["p"].acquire()
    assert permit is not None
    breakers["p"].failed(permit)
    now[0] = 6.0
    probe = breakers["p"].acquire()  # half-open: the probe
    assert probe is not None
    breakers["p"].succeeded(probe)
    assert heard == [("p", "closed"), ("p", "open"), ("p", "half_open"), ("p", "closed")]


async def test_a_run_host_records_a_run_once_and_not_again_when_it_resumes_it(
    sim: Sim, tmp_path: Path, recorded: dict[str, RecordedPoints]
) -> None:
    support_tools.reset_refunds()
    # The first attempt fails with a 500: retried on the same provider, which answers.
    sim.script({"type": "status", "status": 500})
    state = open_state(f"sqlite://{tmp_path}")
    runtime = RuntimeSettings(
        providers=simulator_providers(sim.base_url),
        cache=CacheSettings(directory=str(tmp_path / "cache")),
    )
    host = RunHost("h1", runtime, ToolPool(), store=state.runs)
    try:
        run_id = new_run_id("h1")
        request = RunInput(run_id=run_id, input="Where is order 1002?", tenant="acme")
        await host.start_run(support(), request)

        async def stored_to_the_end() -> bool:
            record = await state.runs.load_run(run_id)
            return record is not None and is_terminal(record.events[-1]) and host.load() == 0

        await eventually(stored_to_the_end)
        points = {name: list(r.points) for name, r in recorded.items()}
        assert points["runs_started"] == [(1.0, RUN)]
        assert [tags["status"] for _, tags in points["run_seconds"]] == ["completed"]
        assert points["live_runs"] == [(1, {"host": "h1"}), (0, {"host": "h1"})]
        assert {tags["status"] for _, tags in points["store_commit_seconds"]} == {"ok"}
        attempts = [tags for _, tags in points["model_attempt_seconds"]]
        assert attempts[:2] == [
            {"provider": "sim-openai", "status": "500"},
            {"provider": "sim-openai", "status": "ok"},
        ]
        assert {"provider": "sim-openai"} in [tags for _, tags in points["breaker_state"]]

        # Another host takes the finished run over (its reader found the first one dead):
        # nothing it read back is counted again.
        other = RunHost("h2", runtime, ToolPool(), store=state.runs)
        try:
            await other.resume_run(run_id)

            async def done() -> bool:
                return other.load() == 0

            await eventually(done)
        finally:
            await other.aclose()
        again = {name: r.points[len(points[name]) :] for name, r in recorded.items()}
        assert again["runs_started"] == again["run_seconds"] == again["tokens"] == []
    finally:
        await host.aclose()
        await state.close()


async def test_a_model_call_the_limiter_refuses_is_counted_by_its_limit(
    sim: Sim, recorded: dict[str, RecordedPoints]
) -> None:
    limiter = TenantLimiter({"acme": TenantLimits(daily_budget_usd=1e-9)})
    context = TenantContext(tenant="acme", metered=True)
    async with httpx2.AsyncClient() as http:
        router = ModelRouter(simulator_providers(sim.base_url), PRICES, http)
        model = TenantModel(router, context, PRICES, limiter)
        tier = support().tiers["strong"]
        messages = (Message(role="user", content="Where is order 1002?"),)
        with pytest.raises(TenantLimited):
            async for _ in model.stream(tier, messages, (), timeout_s=5):
                pass
    assert recorded["limiter_refusals"].points == [
        (1.0, {"tenant": "acme", "limit": "daily_budget_usd"})
    ]
    assert recorded["model_attempt_seconds"].points == []  # nothing was sent


# -- the dashboard ------------------------------------------------------------------------


def exported_names() -> set[str]:
    """What Prometheus scrapes for every rayfleet metric: `ray_` + name, and a histogram's
    `_bucket`, `_sum` and `_count` series."""
    from ray.util.metrics import Histogram, Metric

    names = set()
    for sink in (RayfleetMetrics(), RayOutcomeMetrics()):
        for metric in vars(sink).values():
            assert isinstance(metric, Metric)
            name = "ray_" + metric.info["name"]
            if isinstance(metric, Histogram):
                names |= {f"{name}_bucket", f"{name}_sum", f"{name}_count"}
            else:
                names.add(name)
    return names


def test_every_dashboard_expression_names_a_metric_we_define() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    names = exported_names()
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    panels = [p for p in dashboard["panels"] if p["type"] != "row"]
    assert panels
    used: set[str] = set()
    for panel in panels:
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        assert panel["targets"], f"panel {panel['title']!r} has no query"
        for target in panel["targets"]:
            found = set(re.findall(r"\bray_rayfleet_[a-z_]+", target["expr"]))
            assert found, f"{panel['title']!r}: {target['expr']!r} names no rayfleet metric"
            unknown = found - names
            assert not unknown, f"{panel['title']!r} uses undefined metrics {unknown}"
            used |= found
    # Every metric is on the dashboard (a histogram by any of its series).
    shown = {re.sub(r"_(bucket|sum|count)$", "", name) for name in used}
    missing = {re.sub(r"_(bucket|sum|count)$", "", n) for n in names} - shown
    assert not missing, f"metrics on no panel: {missing}"
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))


def test_a_held_gauge_reports_each_label_sets_last_value_again() -> None:
    # Ray's metrics agent drops a gauge value not reported again within two export
    # intervals: a breaker that stays closed must still show 0, not vanish.
    gauge = HeldGauge("rayfleet_test_held", "A held gauge of this test.", tag_keys=("provider",))
    points = RecordedPoints()
    with gauges_held_still():
        gauge._metric = points  # type: ignore[assignment]
        gauge.set(2.0, tags={"provider": "a"})
        gauge.set(0.0, tags={"provider": "b"})
        gauge.set(1.0, tags={"provider": "a"})
        gauge.set(None, tags={"provider": "b"})  # Ray's no-op: the last value stands
        points.points.clear()
        gauge.report_again()
        assert sorted((v, t["provider"]) for v, t in points.points) == [(0.0, "b"), (1.0, "a")]
