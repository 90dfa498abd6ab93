"""A run's trace reaches a real OTLP/HTTP receiver (tests/otlp.py): the gateway's span and
the run host's spans, in one trace, under the `traceparent` the client sent."""

from __future__ import annotations

import asyncio
import secrets

import pytest

from tests.fixtures_sim import Sim
from tests.otlp import OtlpReceiver, ReceivedSpan
from tests.serve.conftest import Service
from tests.serve.test_runs_http import assert_complete_stream, read_sse

pytestmark = pytest.mark.serve

SERVER = 2  # OTLP Span.SpanKind.SPAN_KIND_SERVER
ROUTE = "POST /v1/agents/{agent}/runs"


def by_name(spans: list[ReceivedSpan], prefix: str) -> list[ReceivedSpan]:
    return [s for s in spans if s.name.startswith(prefix)]


def test_a_run_is_one_trace_under_the_callers_traceparent(
    service: Service, sim: Sim, otlp: OtlpReceiver
) -> None:
    trace_id, caller = secrets.token_hex(16), secrets.token_hex(8)
    events = read_sse(
        service.http,
        "POST",
        "/v1/agents/support/runs",
        json={"input": "Where is order 1003?"},
        headers={"traceparent": f"00-{trace_id}-{caller}-01"},
    )
    assert_complete_stream(events)
    assert {e.trace_id for e in events} == {trace_id}
    run_id = events[0].run_id

    def complete(spans: list[ReceivedSpan]) -> bool:
        return bool(by_name(spans, ROUTE) and by_name(spans, "invoke_agent"))

    spans = otlp.wait_for_spans(trace_id, complete)
    # The rest of the run's spans end before its own: all are in once it is (batches are
    # exported in order of ending, per process).
    (gateway,) = by_name(spans, ROUTE)
    (run,) = by_name(spans, "invoke_agent support")
    assert gateway.parent_id == caller and gateway.kind == SERVER
    assert run.parent_id == gateway.span_id
    assert run.attributes["rayfleet.run_id"] == run_id
    assert run.attributes["gen_ai.agent.name"] == "support"
    assert gateway.resource["process.pid"] != run.resource["process.pid"]  # two processes
    assert by_name(spans, "chat ") and by_name(spans, "execute_tool ")
    ids = {s.span_id for s in spans} | {caller}
    orphans = [s.name for s in spans if s.parent_id not in ids]
    assert not orphans, orphans


def test_a_malformed_traceparent_starts_a_trace_of_its_own(
    service: Service, sim: Sim, otlp: OtlpReceiver
) -> None:
    events = read_sse(
        service.http,
        "POST",
        "/v1/agents/support/runs",
        json={"input": "Hello"},
        headers={"traceparent": "00-not-a-trace-01"},
    )
    assert_complete_stream(events)
    (trace_id,) = {e.trace_id for e in events}
    assert trace_id is not None and len(trace_id) == 32
    # Two processes export: the gateway's span may arrive after the run's.
    spans = otlp.wait_for_spans(
        trace_id, lambda s: bool(by_name(s, ROUTE) and by_name(s, "invoke_agent"))
    )
    (gateway,) = by_name(spans, ROUTE)
    assert gateway.parent_id is None  # the root: nothing of the bad header was kept


async def test_a_handle_call_joins_the_callers_trace(
    service: Service, sim: Sim, otlp: OtlpReceiver
) -> None:
    from ray import serve

    trace_id, caller = secrets.token_hex(16), secrets.token_hex(8)
    handle = serve.get_app_handle("rayfleet").options(stream=True, method_name="stream_run")
    events = [
        event
        async for event in handle.remote(
            "support", "Hello", traceparent=f"00-{trace_id}-{caller}-01"
        )
    ]
    assert_complete_stream(events)
    assert {e.trace_id for e in events} == {trace_id}
    spans = await asyncio.to_thread(  # the gateway's span may arrive after the run's
        otlp.wait_for_spans,
        trace_id,
        lambda s: bool(by_name(s, "start_run") and by_name(s, "invoke_agent")),
    )
    (start,) = by_name(spans, "start_run")
    (run,) = by_name(spans, "invoke_agent support")
    assert start.parent_id == caller and run.parent_id == start.span_id
