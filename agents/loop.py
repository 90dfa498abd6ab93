"""The step loop: plain async code over ports, ending every run in exactly one terminal event."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from agents.budget import RunBudget
from agents.errors import BudgetExceeded, RayfleetError, RunTimeout
from agents.eventlog import EventLog
from agents.events import (
    BudgetExceededEvent,
    MemoryDegraded,
    ModelCompleted,
    ModelDelta,
    ModelDiscarded,
    RunCancelled,
    RunCompleted,
    RunCreated,
    RunFailed,
    StepStarted,
    ToolCalled,
    ToolResulted,
)
from agents.messages import Message, TextDelta, ToolCall, ToolSchema
from agents.ports import Discard, MemoryPort, ModelPort, ModelResult, ToolOutcome, ToolPort
from agents.spec import AgentSpec, TierSpec


@dataclass(frozen=True)
class Coalescing:
    """Token deltas are merged until this many characters or milliseconds have gathered:
    each event crossing a Ray boundary is one Ray object, so fewer is cheaper."""

    max_chars: int = 64
    max_ms: float = 20.0


@dataclass
class RunInput:
    """What a caller asked for."""

    run_id: str
    input: str
    thread_id: str | None = None
    namespace: str = "default"


@dataclass
class Ports:
    model: ModelPort
    tools: ToolPort
    memory: MemoryPort | None = None


@dataclass
class _Progress:
    messages: list[Message] = field(default_factory=list)
    degraded: bool = False


async def execute_run(
    spec: AgentSpec,
    request: RunInput,
    ports: Ports,
    log: EventLog,
    *,
    coalescing: Coalescing = Coalescing(),
    clock: Callable[[], float] = time.monotonic,
) -> None:
    """Run the agent to its end. Whatever happens, the log ends with one terminal event.

    Cancelling the task running this coroutine cancels in-flight model and tool calls and
    ends the run with `run.cancelled`.
    """
    budget = RunBudget(spec.budgets, clock=clock)
    if log.last_seq == 0:
        log.emit(
            RunCreated,
            agent=spec.name,
            version=spec.version,
            input=request.input,
            thread_id=request.thread_id,
        )
    progress = _Progress()
    deadline = asyncio.timeout(spec.budgets.run_timeout_s)
    try:
        async with deadline:
            output = await _loop(spec, request, ports, log, budget, progress, coalescing, clock)
    except asyncio.CancelledError:
        log.emit(
            RunCancelled,
            reason="cancelled",
            steps=budget.steps,
            usage=budget.usage,
            cost_usd=budget.cost_usd,
        )
        return
    except TimeoutError:
        # Only our own deadline is a run timeout; a TimeoutError escaping a port is a bug there.
        if deadline.expired():
            limit_s = spec.budgets.run_timeout_s
            _fail(log, budget, RunTimeout(f"run exceeded run_timeout_s={limit_s:g}"))
        else:
            _fail(log, budget, RayfleetError("internal error: TimeoutError"))
        return
    except RayfleetError as exc:
        _fail(log, budget, exc)
        return
    except Exception as exc:  # a bug or an untranslated library error: still one terminal event
        _fail(log, budget, RayfleetError(f"internal error: {type(exc).__name__}"))
        return
    log.emit(
        RunCompleted,
        output=output,
        steps=budget.steps,
        usage=budget.usage,
        cost_usd=budget.cost_usd,
        degraded=progress.degraded,
    )


def _fail(log: EventLog, budget: RunBudget, error: RayfleetError) -> None:
    log.emit(
        RunFailed,
        code=error.code,
        message=error.message,
        retryable=error.retryable,
        steps=budget.steps,
        usage=budget.usage,
        cost_usd=budget.cost_usd,
    )


async def _loop(
    spec: AgentSpec,
    request: RunInput,
    ports: Ports,
    log: EventLog,
    budget: RunBudget,
    progress: _Progress,
    coalescing: Coalescing,
    clock: Callable[[], float],
) -> str:
    history = await _recall(request, ports.memory, log, progress)
    messages = [Message(role="system", content=spec.system_prompt), *history]
    messages.append(Message(role="user", content=request.input))
    tools = tuple(tool.schema_for_model() for tool in spec.tools)
    tier = spec.tiers[spec.loop_tier]
    while True:
        hit = budget.exceeded()
        if hit is not None:
            limit, used, cap = hit
            log.emit(BudgetExceededEvent, limit=limit, used=used, cap=cap)
            raise BudgetExceeded(f"{limit} budget exhausted: used {used:g} of {cap:g}", limit)
        budget.steps += 1
        step = budget.steps
        log.emit(StepStarted, step=step)
        timeout_s = budget.call_timeout_s(spec.timeouts.model_call_timeout_s)
        result = await _model_turn(
            ports.model, tier, tuple(messages), tools, timeout_s, log, step, coalescing, clock
        )
        budget.record(result.response.usage, result.cost_usd)
        reply = result.response.message
        log.emit(
            ModelCompleted,
            step=step,
            tier=spec.loop_tier,
            provider=result.provider,
            model=result.response.model,
            text=reply.content,
            tool_calls=len(reply.tool_calls),
            usage=result.response.usage,
            cost_usd=result.cost_usd,
            latency_ms=result.latency_ms,
            tried=result.tried,
        )
        messages.append(reply)
        if not reply.tool_calls:
            await _remember(request, ports.memory, log, progress, reply)
            return reply.content
        for call in reply.tool_calls:
            messages.append(await _tool_turn(spec, ports.tools, call, log, step, budget, clock))


async def _model_turn(
    model: ModelPort,
    tier: TierSpec,
    messages: tuple[Message, ...],
    tools: tuple[ToolSchema, ...],
    timeout_s: float,
    log: EventLog,
    step: int,
    coalescing: Coalescing,
    clock: Callable[[], float],
) -> ModelResult:
    pending: list[str] = []
    pending_chars = 0
    last_flush = clock()
    result: ModelResult | None = None
    async for item in model.stream(tier, messages, tools, timeout_s=timeout_s):
        if isinstance(item, TextDelta):
            pending.append(item.text)
            pending_chars += len(item.text)
            now = clock()
            if (
                pending_chars >= coalescing.max_chars
                or (now - last_flush) * 1000 >= coalescing.max_ms
            ):
                log.emit(ModelDelta, step=step, text="".join(pending))
                pending, pending_chars, last_flush = [], 0, now
        elif isinstance(item, Discard):
            pending, pending_chars = [], 0
            log.emit(ModelDiscarded, step=step, reason=item.reason, provider=item.provider)
        else:
            result = item
    if pending:
        log.emit(ModelDelta, step=step, text="".join(pending))
    if result is None:
        raise RayfleetError("model stream ended without a result")
    return result


async def _tool_turn(
    spec: AgentSpec,
    tools: ToolPort,
    call: ToolCall,
    log: EventLog,
    step: int,
    budget: RunBudget,
    clock: Callable[[], float],
) -> Message:
    log.emit(ToolCalled, step=step, call_id=call.id, tool=call.name, arguments=call.arguments)
    started = clock()
    tool = spec.tool(call.name)
    if tool is None:
        known = ", ".join(t.name for t in spec.tools) or "none"
        outcome = ToolOutcome(
            ok=False, output="", error=f"unknown tool {call.name!r} (known: {known})"
        )
    else:
        own = tool.timeout_s or spec.timeouts.tool_call_timeout_s
        outcome = await tools.call(
            tool,
            call,
            idempotency_key=f"{log.run_id}:{step}:{call.id}",
            timeout_s=budget.call_timeout_s(own),
        )
    log.emit(
        ToolResulted,
        step=step,
        call_id=call.id,
        tool=call.name,
        ok=outcome.ok,
        output=outcome.output,
        error=outcome.error,
        latency_ms=(clock() - started) * 1000,
    )
    content = outcome.output if outcome.ok else json.dumps({"error": outcome.error})
    return Message(role="tool", content=content, tool_call_id=call.id)


async def _recall(
    request: RunInput, memory: MemoryPort | None, log: EventLog, progress: _Progress
) -> list[Message]:
    if request.thread_id is None or memory is None:
        return []
    try:
        return await memory.load_thread(request.namespace, request.thread_id)
    except Exception as exc:  # memory is optional: degrade, say so, go on
        progress.degraded = True
        log.emit(MemoryDegraded, reason=f"thread recall failed: {type(exc).__name__}")
        return []


async def _remember(
    request: RunInput,
    memory: MemoryPort | None,
    log: EventLog,
    progress: _Progress,
    reply: Message,
) -> None:
    if request.thread_id is None or memory is None:
        return
    turn = [
        Message(role="user", content=request.input),
        Message(role="assistant", content=reply.content),
    ]
    try:
        await memory.append_thread(request.namespace, request.thread_id, turn)
    except Exception as exc:
        progress.degraded = True
        log.emit(MemoryDegraded, reason=f"thread save failed: {type(exc).__name__}")
