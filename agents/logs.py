"""Logs: one JSON object per line, naming the run, tenant and trace each line belongs to.

Every rayfleet process calls `configure_logging()` when it starts (each actor's and each
Serve deployment's `__init__`, the CLI); rayfleet logs through the `rayfleet` logger. A line:

    {"ts": "2026-11-30T17:33:16.123456Z", "level": "ERROR", "logger": "rayfleet",
     "message": "...", "process": "run-host", "pid": 4242, "run_id": "run-h0-...",
     "tenant": "acme", "trace_id": "4bf9...", "span_id": "00f0...", "exc": "Traceback ..."}

`run_id`, `tenant`, `trace_id` and `span_id` appear where they exist: the run context is
bound per asyncio task (`bind_run`; tasks copy the context, so a run's task binds its own
run), and the ids of the current OpenTelemetry span win over the run's stored trace id.
"""

from __future__ import annotations

import datetime
import json
import logging
import os
import re
import sys
from collections.abc import Awaitable, Mapping
from contextvars import ContextVar
from dataclasses import dataclass, replace
from typing import IO, TypeVar

from opentelemetry import trace

LOGGER = "rayfleet"
"""The one logger name rayfleet's modules use (`logging.getLogger(LOGGER)`)."""
LEVEL_ENV = "RAYFLEET_LOG_LEVEL"
"""The level of rayfleet's logs (DEBUG, INFO, WARNING, ERROR); read once per process."""
DEFAULT_LEVEL = "INFO"

T = TypeVar("T")

logger = logging.getLogger(LOGGER)


@dataclass(frozen=True)
class RunContext:
    """What the current task works for, as its log lines name it."""

    run_id: str | None = None
    tenant: str | None = None
    trace_id: str | None = None


# A frozen dataclass: the shared default is never mutated, only replaced.
_context: ContextVar[RunContext] = ContextVar("rayfleet_log_context", default=RunContext())  # noqa: B039


def bind_run(
    run_id: str | None = None, tenant: str | None = None, trace_id: str | None = None
) -> None:
    """Name the run (or only the tenant, until the run id is known) in the current context's
    log lines. Fields given replace the bound ones, the others stay. Scoped to the current
    context: a task binds for itself and the tasks it creates afterwards, never its caller."""
    bound = _context.get()
    _context.set(
        replace(
            bound,
            run_id=run_id or bound.run_id,
            tenant=tenant or bound.tenant,
            trace_id=trace_id or bound.trace_id,
        )
    )


def current_run() -> RunContext:
    """The run context bound in the current context (all None outside a run)."""
    return _context.get()


async def in_run(
    work: Awaitable[T], run_id: str, tenant: str | None = None, trace_id: str | None = None
) -> T:
    """Await `work` with its run bound: wrap a task's coroutine in it, so the binding is the
    task's own (`asyncio.create_task(in_run(...))`)."""
    bind_run(run_id, tenant, trace_id)
    return await work


# What a log line must never carry, even inside an exception's text (a driver may echo a
# connection string): a Bearer token, the `sk-...` shape of provider keys, a URL's password.
# A backstop; the code does not log secrets in the first place.
_SECRETS = (
    (re.compile(r"(?i)(bearer\s+)[^\s\"',;]+"), r"\1***"),
    (re.compile(r"\bsk-[A-Za-z0-9_\-]{8,}"), "sk-***"),
    (re.compile(r"(\b[a-z][a-z0-9+.\-]*://[^/\s:@]*:)[^@\s/]+@"), r"\1***@"),
)


def _redact(text: str) -> str:
    for pattern, replacement in _SECRETS:
        text = pattern.sub(replacement, text)
    return text


class JsonFormatter(logging.Formatter):
    """One JSON object per line (newlines and non-ASCII escaped): the record, the process,
    the run context and the current span; `exc`: the formatted traceback, if any."""

    def __init__(self, process: str | None = None) -> None:
        super().__init__()
        self._process = process

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, object] = {
            "ts": _iso_utc(record.created),
            "level": record.levelname,
            "logger": record.name,
            "message": _redact(record.getMessage()),
        }
        if self._process is not None:
            line["process"] = self._process
        line["pid"] = record.process
        bound = _context.get()
        # `extra={"run_id": ...}` on a call names another run than the bound one.
        for field in ("run_id", "tenant"):
            value = getattr(record, field, None) or getattr(bound, field)
            if value is not None:
                line[field] = value
        span = trace.get_current_span().get_span_context()
        if span.is_valid:
            line["trace_id"] = format(span.trace_id, "032x")
            line["span_id"] = format(span.span_id, "016x")
        elif bound.trace_id is not None:
            line["trace_id"] = bound.trace_id
        if record.exc_info:
            line["exc"] = _redact(self.formatException(record.exc_info))
        if record.stack_info:
            line["stack"] = _redact(self.formatStack(record.stack_info))
        return json.dumps(line, default=str)


def _iso_utc(created: float) -> str:
    when = datetime.datetime.fromtimestamp(created, datetime.UTC)
    return when.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


_configured = False


def configure_logging(
    process: str | None = None,
    *,
    environ: Mapping[str, str] = os.environ,
    stream: IO[str] | None = None,
) -> None:
    """Send the `rayfleet` logger's records to stderr as JSON lines, at the level named by
    RAYFLEET_LOG_LEVEL (default INFO). Once per process: later calls change nothing.

    `process` names the process in every line (run-host, gateway, ...). The default stream
    is the process's real stderr (`sys.__stderr__`): Ray writes a worker's to its log files,
    and Serve, which may replace `sys.stderr` in its replicas, does not wrap these lines."""
    global _configured
    if _configured:
        return
    _configured = True
    raw = environ.get(LEVEL_ENV, DEFAULT_LEVEL).strip().upper() or DEFAULT_LEVEL
    level = logging.getLevelNamesMapping().get(raw)
    handler = logging.StreamHandler(stream or sys.__stderr__ or sys.stderr)
    handler.setFormatter(JsonFormatter(process))
    logger.handlers = [handler]
    logger.propagate = False  # Ray's and Serve's root handlers would print each line again
    logger.setLevel(level if level is not None else DEFAULT_LEVEL)
    if level is None:
        logger.warning(
            "%s=%r is not a log level (known: DEBUG, INFO, WARNING, ERROR): using %s",
            LEVEL_ENV,
            raw[:40],
            DEFAULT_LEVEL,
        )


def reset_logging() -> None:
    """Undo `configure_logging` (tests: each configures its own stream)."""
    global _configured
    _configured = False
    logger.handlers = []
    logger.propagate = True
    logger.setLevel(logging.NOTSET)


_traced: set[tuple[type[BaseException], str, int]] = set()
_TRACED_MAX = 1024


def first_traceback(exc: BaseException) -> BaseException | None:
    """`exc` the first time this process sees an error of its type raised at its line, else
    None: as `exc_info=` for a failure the caller survives and may meet again every retry
    (a store outage, a dead actor), it logs each distinct failure's traceback once. Bounded:
    past 1024 distinct failures a process logs no more tracebacks this way."""
    tb = exc.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    where = ("", 0) if tb is None else (tb.tb_frame.f_code.co_filename, tb.tb_lineno)
    key = (type(exc), *where)
    if key in _traced or len(_traced) >= _TRACED_MAX:
        return None
    _traced.add(key)
    return exc
