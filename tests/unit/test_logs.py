"""rayfleet's logs: one JSON object per line, naming the run, tenant and trace where they
exist; an internal error of a run logs its traceback once."""

from __future__ import annotations

import asyncio
import datetime
import io
import json
import logging
import os
from collections.abc import Iterator
from typing import Any

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from actors.tool_pool import ToolPool
from agents.eventlog import EventLog
from agents.examples import example_specs
from agents.logs import (
    LEVEL_ENV,
    bind_run,
    configure_logging,
    current_run,
    first_traceback,
    in_run,
)
from agents.loop import Ports, RunInput, execute_run
from agents.tracing import PinnedIds, RunTrace, use_provider
from tests.scripted import ScriptedModel

logger = logging.getLogger("rayfleet")


@pytest.fixture
def out() -> Iterator[io.StringIO]:
    """rayfleet's log configured for this test, writing to a buffer (tests/conftest.py resets
    it after every test)."""
    stream = io.StringIO()
    configure_logging("test", environ={}, stream=stream)
    yield stream


def lines(out: io.StringIO) -> list[dict[str, Any]]:
    text = out.getvalue()
    assert text.endswith("\n") or not text
    return [json.loads(line) for line in text.splitlines()]


def test_a_line_is_one_json_object_with_the_records_fields(out: io.StringIO) -> None:
    logger.info("hello %s", "world")
    [line] = lines(out)
    assert set(line) == {"ts", "level", "logger", "message", "process", "pid"}
    assert line["level"] == "INFO" and line["logger"] == "rayfleet"
    assert line["message"] == "hello world"
    assert line["process"] == "test" and line["pid"] == os.getpid()
    assert line["ts"].endswith("Z")
    when = datetime.datetime.fromisoformat(line["ts"].removesuffix("Z") + "+00:00")
    assert abs((datetime.datetime.now(datetime.UTC) - when).total_seconds()) < 60


def test_newlines_and_non_ascii_stay_inside_one_ascii_line(out: io.StringIO) -> None:
    text = 'zwölf\nlines "quoted" \u2028 and \U0001f600 \x00'
    logger.warning(text)
    raw = out.getvalue()
    assert raw.count("\n") == 1 and raw.isascii()
    assert lines(out)[0]["message"] == text


def test_the_run_context_is_scoped_to_the_task_that_binds_it(out: io.StringIO) -> None:
    async def step(name: str) -> None:
        logger.info("in %s", name)
        await asyncio.sleep(0)  # the two runs interleave
        logger.info("still in %s", name)

    async def main() -> None:
        await asyncio.gather(
            asyncio.create_task(in_run(step("a"), "run-a", "acme", "a" * 32)),
            asyncio.create_task(in_run(step("b"), "run-b", "globex")),
        )
        logger.info("outside")

    asyncio.run(main())
    found = [
        (x["message"], x.get("run_id"), x.get("tenant"), x.get("trace_id")) for x in lines(out)
    ]
    assert sorted(found) == [
        ("in a", "run-a", "acme", "a" * 32),
        ("in b", "run-b", "globex", None),
        ("outside", None, None, None),
        ("still in a", "run-a", "acme", "a" * 32),
        ("still in b", "run-b", "globex", None),
    ]
    assert current_run().run_id is None


def test_a_tenant_bound_first_keeps_when_the_run_id_is_bound(out: io.StringIO) -> None:
    async def request() -> None:
        bind_run(tenant="acme")  # the gateway: the caller is known first
        logger.info("authenticated")
        bind_run(run_id="run-1")  # then the run it started
        logger.info("started")
        logger.info("for another run", extra={"run_id": "run-2"})

    asyncio.run(request())
    found = [(x["message"], x.get("run_id"), x.get("tenant")) for x in lines(out)]
    assert found == [
        ("authenticated", None, "acme"),
        ("started", "run-1", "acme"),
        ("for another run", "run-2", "acme"),
    ]


def test_the_current_spans_ids_win_over_the_runs_trace_id(out: io.StringIO) -> None:
    tracer = TracerProvider(id_generator=PinnedIds()).get_tracer("test")

    async def run() -> None:
        bind_run("run-1", "acme", "f" * 32)
        logger.info("before the span")
        with tracer.start_as_current_span("invoke_agent support") as span:
            logger.info("in the span")
            ids = span.get_span_context()
        [_, inside] = lines(out)
        assert inside["trace_id"] == format(ids.trace_id, "032x") != "f" * 32
        assert inside["span_id"] == format(ids.span_id, "016x")

    asyncio.run(run())
    before = lines(out)[0]
    assert before["trace_id"] == "f" * 32 and "span_id" not in before


class Bug(Exception):
    """What an untranslated error inside the loop looks like."""


async def test_an_internal_error_logs_its_traceback_once_with_the_runs_context(
    out: io.StringIO,
) -> None:
    spec = next(s for s in example_specs() if s.name == "support")
    model = ScriptedModel([Bug("a bug in a port")])
    log = EventLog("run-1")
    request = RunInput(run_id="run-1", input="hi", tenant="acme")
    await asyncio.create_task(
        in_run(
            execute_run(spec, request, Ports(model=model, tools=ToolPool()), log), "run-1", "acme"
        )
    )
    failed: Any = log.events()[-1]
    assert failed.kind == "run.failed" and failed.message == "internal error: Bug"
    [line] = lines(out)
    assert line["level"] == "ERROR" and line["run_id"] == "run-1" and line["tenant"] == "acme"
    assert "internal error (Bug)" in line["message"]
    assert line["exc"].startswith("Traceback (most recent call last):")
    assert line["exc"].count("Traceback") == 1
    assert "Bug: a bug in a port" in line["exc"] and "scripted.py" in line["exc"]


def test_keys_are_redacted_even_inside_an_exceptions_text(out: io.StringIO) -> None:
    try:
        raise ValueError("provider said: Incorrect API key sk-proj-abcdef0123456789")
    except ValueError:
        logger.exception(
            "request failed with Authorization: Bearer t0ken-Secret on %s",
            "postgresql://rayfleet:pa55word@127.0.0.1/rayfleet",
        )
    [line] = lines(out)
    text = json.dumps(line)
    assert all(s not in text for s in ("abcdef0123456789", "t0ken-Secret", "pa55word"))
    assert "Bearer ***" in line["message"] and "sk-***" in line["exc"]
    assert "postgresql://rayfleet:***@127.0.0.1/rayfleet" in line["message"]


def test_the_level_comes_from_the_environment_once() -> None:
    stream = io.StringIO()
    configure_logging(environ={LEVEL_ENV: "warning"}, stream=stream)
    configure_logging(environ={LEVEL_ENV: "DEBUG"}, stream=io.StringIO())  # changes nothing
    logger.info("dropped")
    logger.warning("kept")
    assert [x["message"] for x in lines(stream)] == ["kept"]
    assert "process" not in lines(stream)[0]


def test_an_unknown_level_is_reported_and_info_used() -> None:
    stream = io.StringIO()
    configure_logging(environ={LEVEL_ENV: "LOUD"}, stream=stream)
    logger.debug("dropped")
    logger.info("kept")
    warned, kept = lines(stream)
    assert warned["level"] == "WARNING" and "'LOUD'" in warned["message"]
    assert kept["message"] == "kept"


def test_first_traceback_names_each_distinct_failure_once() -> None:
    def fail(kind: type[Exception]) -> Exception:
        try:
            raise kind("down")
        except Exception as exc:
            return exc

    first, again, other = fail(ConnectionError), fail(ConnectionError), fail(OSError)
    assert first_traceback(first) is first
    assert first_traceback(again) is None  # the same type raised at the same line
    assert first_traceback(other) is other


async def test_with_traces_on_the_internal_error_names_the_run_span(out: io.StringIO) -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider(id_generator=PinnedIds())
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    use_provider(provider)
    try:
        spec = next(s for s in example_specs() if s.name == "support")
        run_trace = RunTrace.start()
        request = RunInput(run_id="run-1", input="hi", tenant="acme", trace=run_trace)
        ports = Ports(model=ScriptedModel([Bug("a bug in a port")]), tools=ToolPool())
        log = EventLog("run-1", trace_id=run_trace.trace_id)
        work = execute_run(spec, request, ports, log)
        await asyncio.create_task(in_run(work, "run-1", "acme", run_trace.trace_id))
    finally:
        use_provider(trace.NoOpTracerProvider())
        provider.shutdown()
    [line] = lines(out)
    assert line["level"] == "ERROR" and line["trace_id"] == run_trace.trace_id
    # The span the loop was in when it failed: the run's own, or one inside it.
    span_ids = {format(s.context.span_id, "016x") for s in exporter.get_finished_spans()}
    assert line["span_id"] in span_ids
