"""agents.tracing: a run's trace context, the caller's traceparent, pinned run span ids."""

from __future__ import annotations

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from agents.tracing import (
    RunTrace,
    enabled,
    inbound_span,
    parse_traceparent,
    pinned_ids,
    tracer,
)

TRACE = "0af7651916cd43dd8448eb211c80319c"
CALLER = "b7ad6b7169203331"


def test_a_valid_traceparent_makes_the_run_its_child() -> None:
    run = RunTrace.start(f"00-{TRACE}-{CALLER}-01")
    assert (run.trace_id, run.parent_id, run.sampled) == (TRACE, CALLER, True)
    assert run.span_id != CALLER and len(run.span_id) == 16
    assert run.traceparent == f"00-{TRACE}-{run.span_id}-01"
    assert not RunTrace.start(f"00-{TRACE}-{CALLER}-00").sampled


@pytest.mark.parametrize(
    "bad",
    [
        "",
        "garbage",
        f"00-{'0' * 32}-{CALLER}-01",  # the all-zero ids are invalid (W3C)
        f"00-{TRACE}-{'0' * 16}-01",
        f"00-{TRACE[:-1]}-{CALLER}-01",
        f"01-{TRACE}-{CALLER}-01-extra",
    ],
)
def test_a_malformed_traceparent_is_ignored_and_the_run_starts_a_trace(bad: str) -> None:
    assert parse_traceparent(bad) is None
    run = RunTrace.start(bad)
    assert run.parent_id is None and run.trace_id != TRACE and len(run.trace_id) == 32


def test_a_child_run_keeps_the_trace() -> None:
    parent = RunTrace.start(f"00-{TRACE}-{CALLER}-01")
    child = parent.child("1111111111111111")
    assert (child.trace_id, child.parent_id, child.span_id) == (
        TRACE,
        parent.span_id,
        "1111111111111111",
    )


def test_the_run_span_takes_the_stored_ids_wherever_it_is_opened(
    spans: InMemorySpanExporter,
) -> None:
    run = RunTrace.start(f"00-{TRACE}-{CALLER}-01")
    for _host in range(2):  # as the first host and as the host that resumed the run
        with pinned_ids(run):
            span = tracer().start_span("invoke_agent x", context=run.parent_context())
        with trace.use_span(span, end_on_exit=True):
            tracer().start_span("step").end()
    step, first, _, second = spans.get_finished_spans()  # in the order they ended
    for got in (first, second):
        assert got.context is not None and got.parent is not None
        assert f"{got.context.trace_id:032x}" == TRACE
        assert f"{got.context.span_id:016x}" == run.span_id
        assert f"{got.parent.span_id:016x}" == CALLER
    assert step.parent is not None and f"{step.parent.span_id:016x}" == run.span_id
    assert step.context is not None and f"{step.context.span_id:016x}" != run.span_id


def test_a_root_run_has_no_parent(spans: InMemorySpanExporter) -> None:
    run = RunTrace.start()
    with pinned_ids(run):
        tracer().start_span("invoke_agent x", context=run.parent_context()).end()
    (span,) = spans.get_finished_spans()
    assert span.parent is None and span.context is not None
    assert f"{span.context.trace_id:032x}" == run.trace_id


def test_the_inbound_span_is_the_callers_child_and_hands_down_its_own(
    spans: InMemorySpanExporter,
) -> None:
    with inbound_span("POST /v1/agents/{agent}/runs", f"00-{TRACE}-{CALLER}-01") as handed:
        pass
    (span,) = spans.get_finished_spans()
    assert span.context is not None and span.parent is not None
    assert f"{span.parent.span_id:016x}" == CALLER
    assert handed == f"00-{TRACE}-{span.context.span_id:016x}-01"


def test_without_tracing_the_callers_traceparent_is_handed_down() -> None:
    caller = f"00-{TRACE}-{CALLER}-01"
    with inbound_span("POST /v1/agents/{agent}/runs", caller) as handed:
        assert handed == caller
    with inbound_span("POST /v1/agents/{agent}/runs", None) as handed:
        assert handed is None


@pytest.mark.parametrize(
    ("environ", "expected"),
    [
        ({}, False),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318"}, True),
        ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://127.0.0.1:4318/v1/traces"}, True),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://x", "OTEL_SDK_DISABLED": "true"}, False),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://x", "OTEL_TRACES_EXPORTER": "none"}, False),
    ],
)
def test_traces_are_on_only_when_the_standard_variables_ask(
    environ: dict[str, str], expected: bool
) -> None:
    assert enabled(environ) is expected
