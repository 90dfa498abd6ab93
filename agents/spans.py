"""The spans of a run, named and attributed per the OpenTelemetry GenAI semantic conventions.

    invoke_agent {agent}               the run (agents.loop); ended only with the run
    └── step                           one per step (rayfleet.step)
        ├── rayfleet.context.summarize   older turns folded into a summary
        │   └── chat {model}
        ├── rayfleet.limiter.reserve   waiting on the tenant limiter (actors.tenant_model)
        ├── chat {model}               one per model attempt (actors.router), or a
        │                              response-cache hit (actors.caches, no provider call)
        └── execute_tool {tool}        one per tool call
            └── invoke_agent {agent}   a sub-agent's run

A run that has a `RunTrace` opens its run span and its step spans with ids derived from it
(agents.tracing.pinned_ids), so a run resumed on another host re-opens the same spans, and
the spans the dead host exported stay attached to them.

Message content (the run's input and answer, tool arguments and results) is recorded only
for an agent with `trace_content`; keys and headers never. With tracing off (the no-op
tracer) every function here returns at once, and no attributes are built for a span that is
not recording.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import time
from collections.abc import Awaitable, Iterator
from typing import TYPE_CHECKING, TypeVar

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import INVALID_SPAN, NoOpTracer, Span, SpanKind, Status, StatusCode
from opentelemetry.util.types import AttributeValue

from agents.errors import ProviderError, RayfleetError
from agents.events import (
    BudgetProgress,
    ContextPruned,
    Event,
    RunCancelled,
    RunCompleted,
    RunFailed,
    StepStarted,
)
from agents.messages import ToolCall, Usage
from agents.ports import ModelResult, ToolOutcome
from agents.spec import AgentSpec
from agents.tracing import RunTrace, pinned_ids, tracer

if TYPE_CHECKING:
    from agents.loop import RunInput

T = TypeVar("T")


def on() -> bool:
    """Whether this process makes spans at all (the cheap test every hook starts with)."""
    return not isinstance(tracer(), NoOpTracer)


def current_context() -> otel_context.Context | None:
    """The caller's context, for a span started later inside a generator (which must never
    attach a context across a yield); None with tracing off."""
    return otel_context.get_current() if on() else None


def derived_span_id(*parts: str) -> str:
    """A span id (16 hex digits) the same on every host, from names the run's log holds."""
    return hashlib.sha256(":".join(parts).encode()).hexdigest()[:16]


def usage_attributes(usage: Usage) -> dict[str, AttributeValue]:
    # The conventions count cached and cache-write tokens inside input_tokens; Usage keeps
    # them apart (agents.messages), so they are added back here.
    return {
        "gen_ai.usage.input_tokens": (
            usage.input_tokens + usage.cached_input_tokens + usage.cache_write_tokens
        ),
        "gen_ai.usage.output_tokens": usage.output_tokens,
        "gen_ai.usage.cache_read.input_tokens": usage.cached_input_tokens,
        "gen_ai.usage.cache_creation.input_tokens": usage.cache_write_tokens,
    }


def error_type(exc: BaseException, timed_out: bool = False) -> str:
    """`error.type` for a failure: low cardinality, never the message."""
    if timed_out:
        return "timeout"
    if isinstance(exc, ProviderError) and exc.status_code is not None:
        return str(exc.status_code)
    if isinstance(exc, RayfleetError):
        return exc.code
    return type(exc).__qualname__


def _messages(role: str, text: str, finish_reason: str | None = None) -> str:
    """`gen_ai.input.messages` / `gen_ai.output.messages`: the conventions' JSON shape."""
    message: dict[str, object] = {"role": role, "parts": [{"type": "text", "content": text}]}
    if finish_reason is not None:
        message["finish_reason"] = finish_reason
    return json.dumps([message], ensure_ascii=False)


def _ns(ts: float) -> int:
    return int(ts * 1e9)


def fail(span: Span, exc: BaseException, timed_out: bool = False) -> None:
    """Mark `span` failed by `exc`; a cancellation (or a consumer closing a stream) is not
    a failure, and is marked as such."""
    if not span.is_recording():
        return
    if isinstance(exc, GeneratorExit | asyncio.CancelledError):
        span.set_attribute("rayfleet.cancelled", True)
        return
    span.set_attribute("error.type", error_type(exc, timed_out))
    # A provider's error message is redacted and quotes no content; others may (an unusable
    # reply quotes the model's tool arguments), so they are left to the run's events.
    described = isinstance(exc, ProviderError)
    span.set_status(Status(StatusCode.ERROR, str(exc) if described else None))


class RunSpans:
    """The spans one execution of a run keeps open: the run's, and its current step's."""

    def __init__(
        self, spec: AgentSpec, request: RunInput, created_ts: float, resumed: bool
    ) -> None:
        self._trace: RunTrace | None = request.trace if on() else None
        self._content = spec.trace_content
        self.step: Span = INVALID_SPAN
        if not on():
            self.run: Span = INVALID_SPAN
            return
        name = f"invoke_agent {spec.name}"
        start = _ns(created_ts)  # a resumed run's span covers the run from its creation
        if self._trace is not None:
            with pinned_ids(self._trace):
                self.run = tracer().start_span(
                    name, self._trace.parent_context(), SpanKind.INTERNAL, start_time=start
                )
        else:
            self.run = tracer().start_span(name, kind=SpanKind.INTERNAL, start_time=start)
        if not self.run.is_recording():
            return
        attributes: dict[str, AttributeValue] = {
            "gen_ai.operation.name": "invoke_agent",
            "gen_ai.agent.name": spec.name,
            "gen_ai.agent.version": spec.version,
            "rayfleet.run_id": request.run_id,
            "rayfleet.tenant": request.tenant,
            "rayfleet.assignment": request.assignment,
        }
        if request.thread_id is not None:
            attributes["gen_ai.conversation.id"] = request.thread_id
        if request.primary_run_id is not None:
            attributes["rayfleet.primary_run_id"] = request.primary_run_id
        if self._content:
            attributes["gen_ai.input.messages"] = _messages("user", request.input)
        self.run.set_attributes(attributes)
        if resumed:
            self.run.add_event("rayfleet.run.resumed")

    def current(self) -> contextlib.AbstractContextManager[object]:
        """The run span as the current span (its model and tool calls nest under it)."""
        if not self.run.get_span_context().is_valid:
            return contextlib.nullcontext()
        return trace.use_span(self.run, record_exception=False, set_status_on_exception=False)

    def start_step(self, step: int, started_ts: float | None = None) -> None:
        """Open step `step`'s span (the resumed one's from its `step.started`)."""
        self.end_step()
        if not self.run.get_span_context().is_valid:
            return
        parent = trace.set_span_in_context(self.run)
        start = None if started_ts is None else _ns(started_ts)
        attributes = {"rayfleet.step": step}
        if self._trace is not None:
            pinned = self._trace.child(derived_span_id(self._trace.span_id, "step", str(step)))
            with pinned_ids(pinned):
                self.step = tracer().start_span(
                    "step", parent, start_time=start, attributes=attributes
                )
        else:
            self.step = tracer().start_span("step", parent, start_time=start, attributes=attributes)

    async def in_step(self, work: Awaitable[T]) -> T:
        """Await `work` (a model or tool call of the step) with the step span current."""
        if not self.step.get_span_context().is_valid:
            return await work
        with trace.use_span(self.step, record_exception=False, set_status_on_exception=False):
            return await work

    def resume_step(self, events: list[Event], step: int, done: bool) -> None:
        """Re-open the span of the step a resumed run stopped in (the same span: its id is
        derived), from its `step.started`; `done`: the step's work was over, so end it too."""
        if step == 0 or not self.run.get_span_context().is_valid:
            return
        started: StepStarted | None = None
        for event in reversed(events):
            if isinstance(event, BudgetProgress) and event.step == step:
                return  # it ended on the host that ran it
            if isinstance(event, StepStarted):
                started = event
                break
        if started is None:
            return
        self.start_step(step, started.ts)
        if done:
            self.end_step(end_ts=events[-1].ts)

    def pruned(self, event: ContextPruned) -> None:
        """A changed pruning decision, as an event on the step (never the summary's text)."""
        if self.step.is_recording():
            attributes: dict[str, AttributeValue] = {
                "rayfleet.context.tokens_before": event.tokens_before,
                "rayfleet.context.tokens_after": event.tokens_after,
                "rayfleet.context.truncated": len(event.truncated),
                "rayfleet.context.summarized": event.summarized,
                "rayfleet.context.dropped": event.dropped,
            }
            if event.max_tokens is not None:
                attributes["rayfleet.context.max_tokens"] = event.max_tokens
            self.step.add_event("rayfleet.context.pruned", attributes)

    def end_step(self, error: str | None = None, end_ts: float | None = None) -> None:
        if self.step is INVALID_SPAN:
            return
        if error is not None and self.step.is_recording():
            self.step.set_attribute("error.type", error)
            self.step.set_status(Status(StatusCode.ERROR))
        self.step.end(end_time=None if end_ts is None else _ns(end_ts))
        self.step = INVALID_SPAN

    def end(self, last: Event) -> None:
        """End the run's spans if `last` is its terminal event; else (it cannot end) leave
        them open: a span is ended, and exported, only by the host that ends the run."""
        if not isinstance(last, RunCompleted | RunFailed | RunCancelled):
            return
        failed = last.code if isinstance(last, RunFailed) else None
        self.end_step(failed)
        span = self.run
        if span.is_recording():
            attributes = usage_attributes(last.usage)
            attributes["rayfleet.cost_usd"] = last.cost_usd
            attributes["rayfleet.steps"] = last.steps
            attributes["rayfleet.status"] = last.kind.removeprefix("run.")
            if isinstance(last, RunFailed):
                attributes["error.type"] = last.code
                # Its message may quote content (a tool's error, a model's reply): it is in
                # the run's events, under the same trace id.
                span.set_status(Status(StatusCode.ERROR, last.message if self._content else None))
            elif isinstance(last, RunCancelled):
                attributes["rayfleet.cancel_reason"] = last.reason
            elif self._content:
                attributes["gen_ai.output.messages"] = _messages("assistant", last.output, "stop")
            span.set_attributes(attributes)
        span.end(end_time=_ns(last.ts) if last.ts else None)


@contextlib.contextmanager
def tool_span(call: ToolCall, content: bool) -> Iterator[Span]:
    """An `execute_tool` span, current while the tool (or sub-agent) runs."""
    if not on():
        yield INVALID_SPAN
        return
    # Attributes given at the start cost less than set afterwards (one pass, no lock).
    attributes: dict[str, AttributeValue] = {
        "gen_ai.operation.name": "execute_tool",
        "gen_ai.tool.name": call.name,
        "gen_ai.tool.call.id": call.id,
        "gen_ai.tool.type": "function",
    }
    if content:
        attributes["gen_ai.tool.call.arguments"] = json.dumps(call.arguments)
    span = tracer().start_span(
        f"execute_tool {call.name}", kind=SpanKind.INTERNAL, attributes=attributes
    )
    try:
        with trace.use_span(span, record_exception=False, set_status_on_exception=False):
            yield span
    except BaseException as exc:
        fail(span, exc)
        raise
    finally:
        span.end()


def tool_done(span: Span, outcome: ToolOutcome, content: bool) -> None:
    """What a tool call came to, on its `execute_tool` span."""
    if not span.is_recording():
        return
    attributes: dict[str, AttributeValue] = {
        "rayfleet.tool.attempts": outcome.attempts,
        "rayfleet.tool.replayed": outcome.replayed,
        "rayfleet.cache_hit": outcome.cached,
    }
    if outcome.cost_usd:
        attributes["rayfleet.cost_usd"] = outcome.cost_usd
    if content:
        attributes["gen_ai.tool.call.result"] = outcome.output
    span.set_attributes(attributes)
    if not outcome.ok:
        # The error is what the model reads: it may quote the arguments, so it is content.
        span.set_attribute("error.type", "tool_failed")
        span.set_status(Status(StatusCode.ERROR, outcome.error if content else None))


def start_chat(
    parent: otel_context.Context | None,
    provider_kind: str,
    provider: str,
    model: str,
    attempt: int,
    fallback: bool,
) -> Span:
    """A `chat {model}` span for one model attempt, under `parent` (captured before the
    generator that makes the attempt started: it is never attached across a yield)."""
    if parent is None:
        return INVALID_SPAN
    attributes: dict[str, AttributeValue] = {
        "gen_ai.operation.name": "chat",
        "gen_ai.provider.name": provider_kind,
        "gen_ai.request.model": model,
        "rayfleet.provider": provider,
        "rayfleet.attempt": attempt,
    }
    if fallback:
        attributes["rayfleet.fallback"] = True
    return tracer().start_span(f"chat {model}", parent, SpanKind.CLIENT, attributes=attributes)


def chat_result(span: Span, result: ModelResult) -> None:
    """The answer of a model attempt, on its `chat` span (ended here)."""
    if span.is_recording():
        response = result.response
        attributes = usage_attributes(response.usage)
        attributes["gen_ai.response.model"] = response.model
        attributes["gen_ai.response.finish_reasons"] = (response.finish_reason,)
        attributes["rayfleet.cost_usd"] = result.cost_usd
        if result.usage_estimated:
            attributes["rayfleet.usage_estimated"] = True
        span.set_attributes(attributes)
    span.end()


def cache_hit(
    parent: otel_context.Context | None, model: str, result: ModelResult, started_ns: int
) -> None:
    """A response-cache hit as a `chat` span: no provider was called. Its provider is
    rayfleet's cache (`rayfleet.provider` names the one that first answered)."""
    if parent is None:
        return
    span = tracer().start_span(f"chat {model}", parent, SpanKind.CLIENT, start_time=started_ns)
    if span.is_recording():
        span.set_attributes(
            {
                "gen_ai.operation.name": "chat",
                "gen_ai.provider.name": "rayfleet",
                "gen_ai.request.model": model,
                "gen_ai.response.model": result.response.model,
                "rayfleet.provider": result.provider,
                "rayfleet.cache_hit": True,
                **usage_attributes(Usage()),
            }
        )
    span.end()


async def summarize_span(work: Awaitable[T]) -> T:
    """Await `work` (folding older turns into a summary) in a `rayfleet.context.summarize`
    span: its model call nests under it. `rayfleet.context.summary_made`: whether a summary
    came of it (without one, older turns are dropped)."""
    if not on():
        return await work
    with tracer().start_as_current_span("rayfleet.context.summarize") as span:
        made = await work
        if span.is_recording():
            span.set_attribute("rayfleet.context.summary_made", made is not None)
        return made


def start_reserve(parent: otel_context.Context | None, tenant: str) -> Span:
    """A `rayfleet.limiter.reserve` span: the wait on the tenant limiter before a call."""
    if parent is None:
        return INVALID_SPAN
    span = tracer().start_span("rayfleet.limiter.reserve", parent)
    if span.is_recording():
        span.set_attribute("rayfleet.tenant", tenant)
    return span


def reserved(span: Span, refused_by: str | None) -> None:
    """End a `rayfleet.limiter.reserve` span: admitted, or refused by the limit named."""
    if refused_by is not None and span.is_recording():
        span.set_attributes(
            {"error.type": "tenant_limited", "rayfleet.limiter.refused": refused_by}
        )
        span.set_status(Status(StatusCode.ERROR))
    span.end()


def now_ns() -> int:
    """Wall-clock ns for a span's start taken before it is known whether one is needed."""
    return time.time_ns()
