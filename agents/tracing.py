"""Traces: one per run, exported with the standard OpenTelemetry SDK when the standard
`OTEL_*` variables ask for it, and nothing but a no-op tracer otherwise.

A run's trace outlives the process that started it: a run resumed on another host must
continue the same trace under the same run span. So the run's trace context is data
(`RunTrace`), made when the run is created, stored with the run (`RunInput.trace`), and the
run span is opened with its ids pinned to it (`pinned_ids`) by whichever host runs or resumes
the run. Only the host that ends the run ends that span, so it is exported once, covering the
run from its `run.created` on.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
from collections.abc import Iterator, Mapping
from contextvars import ContextVar

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.sdk.trace.id_generator import RandomIdGenerator
from opentelemetry.trace import NonRecordingSpan, SpanContext, SpanKind, TraceFlags, Tracer
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from pydantic import BaseModel, ConfigDict, Field

_TRACEPARENT = re.compile(
    r"^00-(?P<trace>[0-9a-f]{32})-(?P<span>[0-9a-f]{16})-(?P<flags>[0-9a-f]{2})$"
)
_INVALID_TRACE = "0" * 32
_INVALID_SPAN = "0" * 16


class RunTrace(BaseModel):
    """A run's place in a trace: stored with the run, so any host continues it."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    trace_id: str = Field(pattern=r"^[0-9a-f]{32}$")
    span_id: str = Field(pattern=r"^[0-9a-f]{16}$")
    """The run's own `invoke_agent` span."""
    parent_id: str | None = Field(None, pattern=r"^[0-9a-f]{16}$")
    """The caller's span (the `traceparent` it sent, or the gateway's span); None: the run
    is the root of its trace."""
    sampled: bool = True
    """The caller's sampling decision (its traceparent's flag); a root run samples itself."""

    @classmethod
    def start(cls, traceparent: str | None = None) -> RunTrace:
        """A new run's trace: a child of `traceparent` (W3C), or a new trace when there is
        none or it is malformed (as the W3C spec says: ignore it and start anew)."""
        parent = parse_traceparent(traceparent) if traceparent else None
        span_id = secrets.token_hex(8)
        if parent is None:
            return cls(trace_id=secrets.token_hex(16), span_id=span_id)
        trace_id, parent_id, sampled = parent
        return cls(trace_id=trace_id, span_id=span_id, parent_id=parent_id, sampled=sampled)

    def child(self, span_id: str, parent_id: str | None = None) -> RunTrace:
        """A nested run's trace (a sub-agent): the same trace, its own span."""
        return RunTrace(
            trace_id=self.trace_id,
            span_id=span_id,
            parent_id=parent_id or self.span_id,
            sampled=self.sampled,
        )

    @property
    def traceparent(self) -> str:
        """The W3C traceparent naming the run's own span."""
        return f"00-{self.trace_id}-{self.span_id}-{'01' if self.sampled else '00'}"

    def parent_context(self) -> Context:
        """The OpenTelemetry context to open the run span in: the caller's span as a remote
        parent, or an empty context for a root run."""
        if self.parent_id is None:
            return Context()
        parent = SpanContext(
            trace_id=int(self.trace_id, 16),
            span_id=int(self.parent_id, 16),
            is_remote=True,
            trace_flags=TraceFlags(TraceFlags.SAMPLED if self.sampled else TraceFlags.DEFAULT),
        )
        return trace.set_span_in_context(NonRecordingSpan(parent), Context())


def parse_traceparent(value: str) -> tuple[str, str, bool] | None:
    """(trace id, span id, sampled) of a W3C traceparent; None if it is not a valid one."""
    match = _TRACEPARENT.fullmatch(value.strip().lower())
    if match is None or match["trace"] == _INVALID_TRACE or match["span"] == _INVALID_SPAN:
        return None
    return match["trace"], match["span"], bool(int(match["flags"], 16) & 0x01)


_W3C = TraceContextTextMapPropagator()


@contextlib.contextmanager
def inbound_span(
    name: str, traceparent: str | None, attributes: Mapping[str, str] | None = None
) -> Iterator[str | None]:
    """A SERVER span for a request that may start a run, a child of the caller's
    `traceparent` (or, without one, of whatever span is current: Ray Serve's own request
    span when its tracing is on). Yields the traceparent to hand down to the run: this
    span's when it is recorded, else the caller's, so the run joins the caller's trace
    whether or not this process exports spans."""
    parent = _W3C.extract({"traceparent": traceparent}) if traceparent else None
    with tracer().start_as_current_span(
        name, context=parent, kind=SpanKind.SERVER, attributes=attributes
    ) as span:
        if not span.is_recording():
            yield traceparent
            return
        carrier: dict[str, str] = {}
        _W3C.inject(carrier)
        yield carrier.get("traceparent", traceparent)


_pinned: ContextVar[tuple[int, int] | None] = ContextVar("rayfleet_pinned_ids", default=None)


class PinnedIds(RandomIdGenerator):
    """Random ids, except inside `pinned_ids`: there, the run's own. Every tracer provider
    rayfleet makes uses it (tests' too), so the run span keeps its id on every host."""

    def generate_trace_id(self) -> int:
        pinned = _pinned.get()
        return pinned[0] if pinned is not None else super().generate_trace_id()

    def generate_span_id(self) -> int:
        pinned = _pinned.get()
        return pinned[1] if pinned is not None else super().generate_span_id()


@contextlib.contextmanager
def pinned_ids(run: RunTrace) -> Iterator[None]:
    """Spans started in this block take the run's trace and span ids (the run span)."""
    token = _pinned.set((int(run.trace_id, 16), int(run.span_id, 16)))
    try:
        yield
    finally:
        _pinned.reset(token)


def enabled(environ: Mapping[str, str] = os.environ) -> bool:
    """Whether the standard variables ask for traces: an OTLP endpoint is set, the SDK is not
    disabled and the traces exporter is not `none`."""
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    if environ.get("OTEL_TRACES_EXPORTER", "otlp").strip().lower() == "none":
        return False
    return bool(
        environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
        or environ.get("OTEL_EXPORTER_OTLP_ENDPOINT")
    )


_tracer: Tracer = trace.NoOpTracer()


def tracer() -> Tracer:
    """This process's tracer: a no-op one until `configure_tracing` found traces asked for."""
    return _tracer


def configure_tracing(environ: Mapping[str, str] = os.environ) -> bool:
    """Set this process's tracer up from the standard `OTEL_*` variables, once per process
    (later calls are no-ops). If another part of the process (Ray Serve's own tracing)
    already installed an SDK tracer provider, rayfleet's spans go through it, into its
    traces. Returns whether spans are exported."""
    global _tracer
    if not isinstance(_tracer, trace.NoOpTracer) or not enabled(environ):
        return not isinstance(_tracer, trace.NoOpTracer)
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    current = trace.get_tracer_provider()
    if isinstance(current, TracerProvider):
        provider = current  # its own ids: a run resumed elsewhere gets a new run span id
    else:
        # The SDK reads the rest of the standard variables itself: OTEL_SERVICE_NAME and
        # OTEL_RESOURCE_ATTRIBUTES (Resource.create), OTEL_TRACES_SAMPLER(_ARG), the
        # exporter's OTEL_EXPORTER_OTLP_* and the batch processor's OTEL_BSP_*.
        # process.pid tells which process (gateway, run host) made a span.
        attributes: dict[str, str | int] = {"process.pid": os.getpid()}
        named = environ.get("OTEL_SERVICE_NAME") or "service.name=" in environ.get(
            "OTEL_RESOURCE_ATTRIBUTES", ""
        )
        if not named:
            attributes["service.name"] = "rayfleet"
        resource = Resource.create(attributes)
        provider = TracerProvider(resource=resource, id_generator=PinnedIds())
        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
        trace.set_tracer_provider(provider)
    use_provider(provider)
    return True


def use_provider(provider: trace.TracerProvider) -> None:
    """Send rayfleet's spans through `provider` (tests: one with an in-memory exporter)."""
    global _tracer
    _tracer = provider.get_tracer("rayfleet")
