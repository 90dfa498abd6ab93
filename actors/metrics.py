"""rayfleet's Prometheus metrics, as Ray metrics: Ray's metrics agent on each node exports
them at `/metrics` with a `ray_` prefix (and its own labels: NodeAddress, WorkerId, ...).

One `RayfleetMetrics` per process, created on first use (`rayfleet_metrics()`). The outcome
metrics (runs ended by status and code, their cost, cost per successful run) are
`actors.outcomes.RayOutcomeMetrics`; everything else is here. Labels are bounded: agent,
version, tenant, provider, tool, status, code, limit, host; never a run id. Histograms are
labelled by agent and version, not tenant: a version's p95 is what an operator compares,
and a histogram per tenant multiplies every bucket.

Run-level figures come from each run's own events (`RunObserver`), observed once, by the
run host that emitted them, after the group commit stored them: events read back from the
store (a resumed run's) are never observed again. Shadow runs are left out of the run-level
figures, as the outcome metrics leave them out (a version's figures are its own traffic).
Provider attempts, breakers, tools, the limiter, the store and SSE are measured where they
happen.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING

from ray.util.metrics import Gauge

from agents.events import (
    BudgetProgress,
    Event,
    ModelCompleted,
    ModelDelta,
    RunCancelled,
    RunCompleted,
    RunCreated,
    RunFailed,
    StepStarted,
    ToolResulted,
)

if TYPE_CHECKING:
    from ray.util.metrics import Counter, Histogram

    from agents.spec import AgentSpec

_RUN = ("agent", "version", "tenant")
_VERSION = ("agent", "version")

_SECONDS_RUN = [0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300, 600]
_SECONDS_CALL = [0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 20, 30, 60]
_SECONDS_TOOL = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30]
_SECONDS_COMMIT = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 5]

BREAKER_VALUES = {"closed": 0.0, "half_open": 1.0, "open": 2.0}
"""rayfleet_breaker_state's values."""

GAUGE_REFRESH_S = 5.0
"""How often a held gauge reports its values again. Ray's metrics agent drops a gauge value
that was not reported again within two export intervals (the gauge TTL in
ray/_private/telemetry/open_telemetry_metric_recorder.py), so a value set once (a breaker
that stays closed, an idle host's live runs, a quiet version's cost per success) would
vanish from the page instead of staying what it is."""

logger = logging.getLogger("rayfleet")


class HeldGauge(Gauge):
    """A Ray gauge that keeps reporting the last value of each label set it was given."""

    def __init__(self, name: str, description: str, tag_keys: tuple[str, ...] = ()) -> None:
        super().__init__(name, description, tag_keys=tag_keys)
        self._held_values: dict[tuple[tuple[str, str], ...], float] = {}
        with _held_lock:
            _held.append(self)
            _start_refresher()

    def set(self, value: float | None, tags: dict[str, str] | None = None) -> None:
        labels = tags or {}  # Ray treats no tags and {} alike: the default tags
        if value is not None:
            self._held_values[tuple(sorted(labels.items()))] = value
        super().set(value, tags=labels)

    def report_again(self) -> None:
        for labels, value in list(self._held_values.items()):
            super().set(value, tags=dict(labels))


_held: list[HeldGauge] = []
_held_lock = threading.Lock()
_refreshing = threading.Lock()
"""Held by the refresher while it reports gauges again (and by `gauges_held_still`)."""
_refresher: threading.Thread | None = None


@contextlib.contextmanager
def gauges_held_still() -> Iterator[None]:
    """No gauge is reported again in this block: for tests that record every point a metric
    is given, and would otherwise see the refresher's at random moments."""
    with _refreshing:
        yield


def _start_refresher() -> None:
    """One daemon thread per process re-reports every held gauge (not an asyncio task: the
    gauges of a process outlive any one event loop in it)."""
    global _refresher
    if _refresher is None:
        _refresher = threading.Thread(target=_refresh_forever, name="rayfleet-gauges", daemon=True)
        _refresher.start()


def _refresh_forever() -> None:
    while True:
        time.sleep(GAUGE_REFRESH_S)
        with _held_lock:
            gauges = list(_held)
        with _refreshing:
            _report_again(gauges)


def _report_again(gauges: list[HeldGauge]) -> None:
    for gauge in gauges:
        try:
            gauge.report_again()
        except Exception as exc:  # a metric must never stop the others
            logger.warning("reporting a gauge again failed: %r", exc)


class RayfleetMetrics:
    """Every rayfleet metric but the outcome ones, as Ray metric objects."""

    def __init__(self) -> None:
        from ray.util.metrics import Counter, Histogram

        self.runs_started: Counter = Counter(
            "rayfleet_runs_started_total",
            "Runs started (resumed runs not counted again; shadow runs excluded).",
            tag_keys=_RUN,
        )
        self.run_seconds: Histogram = Histogram(
            "rayfleet_run_duration_seconds",
            "Wall time from run.created to the terminal event, by how the run ended.",
            boundaries=_SECONDS_RUN,
            tag_keys=(*_VERSION, "status"),
        )
        self.first_token_seconds: Histogram = Histogram(
            "rayfleet_time_to_first_token_seconds",
            "Wall time from run.created to the run's first model.delta.",
            boundaries=_SECONDS_CALL,
            tag_keys=_VERSION,
        )
        self.step_seconds: Histogram = Histogram(
            "rayfleet_step_duration_seconds",
            "Wall time of a step, step.started to its budget.progress (model call and tools).",
            boundaries=_SECONDS_CALL,
            tag_keys=_VERSION,
        )
        self.tokens: Counter = Counter(
            "rayfleet_tokens_total",
            "Tokens of finished runs (kind: input, output, cached_input, cache_write); "
            "counted with the run's end, as its cost is.",
            tag_keys=(*_RUN, "kind"),
        )
        self.fallbacks: Counter = Counter(
            "rayfleet_model_fallbacks_total",
            "Model calls answered by another provider after `provider` failed.",
            tag_keys=(*_RUN, "provider"),
        )
        self.tool_calls: Counter = Counter(
            "rayfleet_tool_calls_total",
            "Tool results by status: ok, error, cached (answered from the tool-result cache).",
            tag_keys=("agent", "tool", "status"),
        )
        self.tool_seconds: Histogram = Histogram(
            "rayfleet_tool_duration_seconds",
            "Wall time of a tool call, retries included (cached answers excluded).",
            boundaries=_SECONDS_TOOL,
            tag_keys=("agent", "tool"),
        )
        self.model_attempt_seconds: Histogram = Histogram(
            "rayfleet_model_attempt_duration_seconds",
            "One request to one provider, by how it ended: ok, rejected, timeout, an HTTP "
            "status, or unavailable (connection or stream error).",
            boundaries=_SECONDS_CALL,
            tag_keys=("provider", "status"),
        )
        self.breaker_state = HeldGauge(
            "rayfleet_breaker_state",
            "A provider's circuit breaker in this process: 0 closed, 1 half-open, 2 open "
            "(provider#digest: the breaker of a tenant's own key).",
            tag_keys=("provider",),
        )
        self.limiter_refusals: Counter = Counter(
            "rayfleet_limiter_refusals_total",
            "Requests and model calls the tenant limiter refused, by the limit that refused.",
            tag_keys=("tenant", "limit"),
        )
        self.live_runs = HeldGauge(
            "rayfleet_live_runs",
            "Runs in flight on a run host.",
            tag_keys=("host",),
        )
        self.store_commit_seconds: Histogram = Histogram(
            "rayfleet_event_store_commit_duration_seconds",
            "One group commit of a run host's new events to the run store (ok or error).",
            boundaries=_SECONDS_COMMIT,
            tag_keys=("status",),
        )
        self.sse_clients = HeldGauge(
            "rayfleet_sse_clients",
            "SSE streams open on a gateway replica.",
            tag_keys=(),
        )


_metrics: RayfleetMetrics | None = None


def rayfleet_metrics() -> RayfleetMetrics:
    """This process's metrics, created on first use."""
    global _metrics
    if _metrics is None:
        _metrics = RayfleetMetrics()
    return _metrics


def breaker_changed(provider: str, state: str) -> None:
    """actors.breaker's hook: a breaker was created or changed state."""
    rayfleet_metrics().breaker_state.set(BREAKER_VALUES[state], tags={"provider": provider})


def limiter_refused(tenant: str, limit: str | None) -> None:
    rayfleet_metrics().limiter_refusals.inc(
        1.0, tags={"tenant": tenant, "limit": limit or "unknown"}
    )


def attempt_ended(provider: str, status: str, seconds: float) -> None:
    """One model attempt ended (actors.router)."""
    rayfleet_metrics().model_attempt_seconds.observe(
        seconds, tags={"provider": provider, "status": status}
    )


class SSEClients:
    """The open SSE streams of this process, as a gauge."""

    def __init__(self) -> None:
        self.open = 0

    def opened(self) -> None:
        self.open += 1
        rayfleet_metrics().sse_clients.set(self.open)

    def closed(self) -> None:
        self.open -= 1
        rayfleet_metrics().sse_clients.set(self.open)


class RunObserver:
    """Derives one run's metrics from its events as its host stores them. Built with the
    events already stored (a resumed run's), so what they said is not said again."""

    def __init__(
        self, metrics: RayfleetMetrics, spec: AgentSpec, tenant: str, stored: list[Event]
    ) -> None:
        self._m = metrics
        self._run = {"agent": spec.name, "version": spec.version, "tenant": tenant}
        self._version = {"agent": spec.name, "version": spec.version}
        self._created_ts: float | None = None
        self._first_token = False
        self._step: tuple[int, float] | None = None
        """The open step: its number and when it started."""
        for event in stored:
            if isinstance(event, RunCreated):
                self._created_ts = event.ts
            elif isinstance(event, ModelDelta):
                self._first_token = True
            elif isinstance(event, StepStarted):
                self._step = (event.step, event.ts)

    def observe(self, events: Iterable[Event]) -> None:
        """Events this process emitted and the store has just taken, in order."""
        m = self._m
        for event in events:
            if isinstance(event, ModelDelta):  # the most frequent kind first
                if not self._first_token and self._created_ts is not None:
                    self._first_token = True
                    seconds = max(0.0, event.ts - self._created_ts)
                    m.first_token_seconds.observe(seconds, tags=self._version)
            elif isinstance(event, StepStarted):
                self._step = (event.step, event.ts)
            elif isinstance(event, BudgetProgress):
                step = self._step
                if step is not None and step[0] == event.step:
                    m.step_seconds.observe(max(0.0, event.ts - step[1]), tags=self._version)
                    self._step = None
            elif isinstance(event, ModelCompleted):
                # A fallback: the answer came from another provider than the first that
                # failed (a retry on the same provider is not one).
                if event.tried:
                    first = event.tried[0].split("/", 1)[0]
                    if first != event.provider:
                        m.fallbacks.inc(1.0, tags={**self._run, "provider": first})
            elif isinstance(event, ToolResulted):
                self._tool_result(event)
            elif isinstance(event, RunCreated):
                self._created_ts = event.ts
                m.runs_started.inc(1.0, tags=self._run)
            elif isinstance(event, RunCompleted | RunFailed | RunCancelled):
                self._ended(event)

    def _tool_result(self, event: ToolResulted) -> None:
        tags = {"agent": self._run["agent"], "tool": event.tool}
        status = "cached" if event.cached else "ok" if event.ok else "error"
        self._m.tool_calls.inc(1.0, tags={**tags, "status": status})
        if not event.cached:
            self._m.tool_seconds.observe(event.latency_ms / 1000, tags=tags)

    def _ended(self, event: RunCompleted | RunFailed | RunCancelled) -> None:
        status = event.kind.removeprefix("run.")
        if self._created_ts is not None:
            seconds = max(0.0, event.ts - self._created_ts)
            self._m.run_seconds.observe(seconds, tags={**self._version, "status": status})
        usage = event.usage
        for kind, count in (
            ("input", usage.input_tokens),
            ("output", usage.output_tokens),
            ("cached_input", usage.cached_input_tokens),
            ("cache_write", usage.cache_write_tokens),
        ):
            if count > 0:  # a Ray counter only takes positive steps
                self._m.tokens.inc(float(count), tags={**self._run, "kind": kind})
