"""The step loop: plain async code over ports, ending every run in exactly one terminal event.

A run is a small state machine (agents.replay): start a step, call the model, run the
tools it asked for, repeat. Because the state is a fold of the run's events, the same loop
starts a new run and resumes one whose host died, from its last durable event.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from opentelemetry import trace
from pydantic import BaseModel, ConfigDict

from agents.approvals import AwaitingApproval, paused_s
from agents.budget import RunBudget
from agents.calls import idempotency_key, with_stable_ids
from agents.errors import (
    ApprovalTimedOut,
    BudgetExceeded,
    Killed,
    RayfleetError,
    RunTimeout,
    ToolArgumentsInvalid,
)
from agents.eventlog import EventLog
from agents.events import (
    ApprovalRequested,
    BudgetExceededEvent,
    BudgetProgress,
    ContextPruned,
    MemoryDegraded,
    ModelCompleted,
    ModelDelta,
    ModelDiscarded,
    RunCancelled,
    RunCompleted,
    RunCreated,
    RunFailed,
    StepStarted,
    SubagentEvent,
    ToolCalled,
    ToolResulted,
    parse_event,
)
from agents.guardrails import (
    EndUser,
    cap_outcome,
    check_arguments,
    check_side_effects,
    side_effects_left,
)
from agents.logs import LOGGER, first_traceback
from agents.messages import Message, TextDelta, ToolCall, ToolSchema, Usage
from agents.ports import Discard, MemoryPort, ModelPort, ModelResult, ToolOutcome, ToolPort
from agents.pricing import PriceTable
from agents.pruning import Summary, View, build_view, summary_prompt, to_summarize, window_start
from agents.replay import RunState, replay, tool_message, wrap_up_message
from agents.spans import RunSpans, derived_span_id, summarize_span, tool_done, tool_span
from agents.spec import AgentSpec, TierSpec, ToolSpec
from agents.tokens import estimate_tokens
from agents.tracing import RunTrace

Tools = tuple[ToolSchema, ...]

logger = logging.getLogger(LOGGER)


@dataclass(frozen=True)
class Coalescing:
    """Token deltas are merged until this many characters or milliseconds have gathered:
    each event crossing a Ray boundary is one Ray object, so fewer is cheaper."""

    max_chars: int = 64
    max_ms: float = 20.0


class RunInput(BaseModel):
    """What a caller asked for."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    run_id: str
    input: str
    thread_id: str | None = None
    namespace: str = "default"
    """Memory namespace: the tenant's."""
    tenant: str = "default"
    assignment: str = "stable"
    """How the run got its version: stable, canary, shadow or pinned."""
    primary_run_id: str | None = None
    """For a shadow run: the run it mirrors."""
    trace: RunTrace | None = None
    """Where the run sits in a trace; stored with the run so a resumed run continues it.
    None only for runs stored before traces existed."""
    user: EndUser | None = None
    """The end user the run acts for (the caller's word for it); its tools receive it beside
    the tenant. Stored with the run, so a resumed run acts for the same user."""


@dataclass
class Ports:
    model: ModelPort
    tools: ToolPort
    memory: MemoryPort | None = None
    guard: Callable[[], str | None] | None = None
    """Checked at every step boundary: a reason (a kill switch) ends the run there."""
    prices: PriceTable | None = None
    """Prices each model call's worst case before it starts (the dollar budget); None: the
    dollar budget is only checked between steps."""
    model_for: Callable[[AgentSpec], ModelPort] | None = None
    """The model port for a sub-agent's spec (its own response cache); None: `model`."""
    durable: Callable[[int], Awaitable[None]] | None = None
    """Returns once the log's events up to a seq are in the run store (the run host: its
    EventLog's `wait_published`). A side-effecting tool waits for its `tool.call` to be
    durable before it runs, so a resumed run re-issues that call rather than a new one.
    None: the log is not stored anywhere, there is nothing to wait for."""


@dataclass
class _Run:
    """Everything one execution of the loop works with."""

    spec: AgentSpec
    request: RunInput
    ports: Ports
    log: EventLog
    budget: RunBudget
    state: RunState
    coalescing: Coalescing
    clock: Callable[[], float]
    spans: RunSpans
    request_index: int = 0
    """Where the request is in `state.messages` (after the recalled thread)."""


async def execute_run(
    spec: AgentSpec,
    request: RunInput,
    ports: Ports,
    log: EventLog,
    *,
    coalescing: Coalescing = Coalescing(),
    clock: Callable[[], float] = time.monotonic,
    wall_clock: Callable[[], float] = time.time,
) -> None:
    """Run the agent to its end, or resume it from the events already in `log`. Whatever
    happens, the log ends with exactly one terminal event.

    Cancelling the task running this coroutine cancels in-flight model and tool calls and
    ends the run with `run.cancelled`.
    """
    if log.closed:
        return
    resumed = log.last_seq > 0
    if not resumed:
        log.emit(
            RunCreated,
            agent=spec.name,
            version=spec.version,
            input=request.input,
            thread_id=request.thread_id,
            tenant=request.tenant,
            assignment=request.assignment,
            primary_run_id=request.primary_run_id,
            user=request.user,
        )
    created_ts, now = log.events()[0].ts, wall_clock()
    # Time spent waiting for a person is not the run's: its clock stood still meanwhile.
    elapsed_s = max(0.0, now - created_ts - paused_s(log.events(), now))
    budget = RunBudget(spec.budgets, clock=clock, elapsed_s=elapsed_s)
    spans = RunSpans(spec, request, created_ts, resumed)
    run = _Run(spec, request, ports, log, budget, RunState(messages=[]), coalescing, clock, spans)
    try:
        with spans.current():
            await _execute(run, resumed)
    finally:
        spans.end(log.events()[-1])  # only a terminal event ends them


async def _execute(run: _Run, resumed: bool) -> None:
    spec, log, budget = run.spec, run.log, run.budget
    deadline = asyncio.timeout(budget.remaining_s)
    try:
        async with deadline:
            await _prepare(run, resumed)
            output = await _loop(run)
    except AwaitingApproval:
        return  # paused: no terminal event; a decision resumes the run from its log
    except asyncio.CancelledError:
        log.emit(RunCancelled, reason="cancelled", **_spent(budget))
        return
    except Killed as exc:
        log.emit(RunCancelled, reason=f"killed: {exc.message}", **_spent(budget))
        return
    except TimeoutError as exc:
        # Only our own deadline is a run timeout; a TimeoutError escaping a port is a bug there.
        if deadline.expired():
            limit_s = spec.budgets.run_timeout_s
            _fail(log, budget, RunTimeout(f"run exceeded run_timeout_s={limit_s:g}"))
        else:
            _internal_error(log, budget, run.request, exc)
        return
    except RayfleetError as exc:
        _fail(log, budget, exc)
        return
    except Exception as exc:  # a bug or an untranslated library error: still one terminal event
        _internal_error(log, budget, run.request, exc)
        return
    log.emit(
        RunCompleted,
        output=output,
        degraded=run.state.degraded,
        wrapped_up=run.state.wrap_up is not None,
        **_spent(budget),
    )


def _spent(budget: RunBudget) -> dict[str, object]:
    return {"steps": budget.steps, "usage": budget.usage, "cost_usd": budget.cost_usd}


def _internal_error(log: EventLog, budget: RunBudget, request: RunInput, exc: Exception) -> None:
    # The event names only the type (its text may hold what callers must not see); the
    # traceback goes to the log, here and nowhere else.
    logger.error(
        "run %s failed: internal error (%s)", request.run_id, type(exc).__name__, exc_info=exc
    )
    _fail(log, budget, RayfleetError(f"internal error: {type(exc).__name__}"))


def _fail(log: EventLog, budget: RunBudget, error: RayfleetError) -> None:
    log.emit(
        RunFailed,
        code=error.code,
        message=error.message,
        retryable=error.retryable,
        **_spent(budget),
    )


async def _prepare(run: _Run, resumed: bool) -> None:
    """Build the prompt (recalling the thread), then fold in what the run already did."""
    spec, request = run.spec, run.request
    # A resumed run that already said memory was degraded does not say it again.
    history = await _recall(request, run.ports.memory, run.log, quiet=_degraded(run.log))
    prompt = [Message(role="system", content=spec.system_prompt), *history]
    prompt.append(Message(role="user", content=request.input))
    run.request_index = len(prompt) - 1
    state = replay(prompt, run.log.events()) if resumed else RunState(messages=prompt)
    state.degraded = state.degraded or _degraded(run.log)
    run.budget.steps, run.budget.usage, run.budget.cost_usd = (
        state.step,
        state.usage,
        state.cost_usd,
    )
    run.state = state
    if resumed:
        run.spans.resume_step(run.log.events(), state.step, done=state.phase == "next")
    if state.phase == "model" and state.streamed_partial:
        # Readers saw part of a model call that died with the host: void it, then redo it.
        run.log.emit(ModelDiscarded, step=state.step, reason="resumed after the run host stopped")


def _degraded(log: EventLog) -> bool:
    return any(isinstance(e, MemoryDegraded) for e in log.events())


async def _loop(run: _Run) -> str:
    spec, state, log, budget = run.spec, run.state, run.log, run.budget
    tools = tuple(tool.schema_for_model() for tool in spec.tools)
    while True:
        if state.phase == "answered":
            _progress(run)
            await _remember(run, state.answer)
            return state.answer
        if state.phase == "next":
            reason = run.ports.guard() if run.ports.guard is not None else None
            if reason is not None:
                raise Killed(reason)
            _check_budget(run)
            budget.steps = state.step = state.step + 1
            log.emit(StepStarted, step=state.step)
            run.spans.start_step(state.step)
            state.phase = "model"
        if state.phase == "model":
            wrapping_up = state.wrap_up is not None
            tier_name = spec.wrap_up_tier_name if wrapping_up else spec.loop_tier
            tier, offered = spec.tiers[tier_name], () if wrapping_up else tools
            view = await run.spans.in_step(_context(run, offered))
            if not _affordable(run, tier, view.tokens):
                _out_of_dollars(run, tier, view.tokens)
                continue  # now wrapping up: the call is rebuilt for the wrap-up tier
            result = await run.spans.in_step(_model_turn(run, tier, view.messages, offered))
            budget.record(result.response.usage, result.cost_usd)
            reply = result.response.message
            log.emit(
                ModelCompleted,
                step=state.step,
                tier=tier_name,
                provider=result.provider,
                model=result.response.model,
                text=reply.content,
                tool_calls=len(reply.tool_calls),
                usage=result.response.usage,
                cost_usd=result.cost_usd,
                latency_ms=result.latency_ms,
                tried=result.tried,
                cached=result.cached,
                usage_estimated=result.usage_estimated,
            )
            if not reply.tool_calls or wrapping_up:
                state.phase, state.answer = "answered", reply.content
                continue
            # Announce every call before running any: the log then holds the whole request,
            # so a resumed run repeats none and runs the missing ones with the same keys.
            # Ids are made unique in the step first: results are matched to calls by id.
            calls = with_stable_ids(reply.tool_calls, state.step)
            reply = reply.model_copy(update={"tool_calls": calls})
            for call in calls:
                log.emit(
                    ToolCalled,
                    step=state.step,
                    call_id=call.id,
                    tool=call.name,
                    arguments=call.arguments,
                )
            state.messages.append(reply)
            state.calls, state.pending, state.phase = list(calls), list(calls), "tools"
        if state.phase == "tools":
            # Before any call of the step runs, fresh or resumed: the step's calls are in
            # the log by now, so the count is the same whenever it is taken.
            check_side_effects(spec, log.events(), state.step)
            while state.pending:
                state.messages.append(await run.spans.in_step(_tool_turn(run, state.pending[0])))
                state.pending.pop(0)
            state.phase = "next"
            _progress(run)


def _progress(run: _Run) -> None:
    """The budget.progress event closing a step."""
    budget, spec = run.budget, run.spec.budgets
    run.log.emit(
        BudgetProgress,
        step=run.state.step,
        max_steps=spec.max_steps,
        tokens=budget.usage.total_tokens,
        max_tokens=spec.max_tokens,
        cost_usd=budget.cost_usd,
        max_cost_usd=spec.max_cost_usd,
        elapsed_s=round(budget.elapsed_s, 3),
        time_left_s=round(budget.remaining_s, 3),
    )
    run.spans.end_step()


def _worst_cost(run: _Run, tier: TierSpec, input_tokens: int) -> float:
    """What a call could cost at most: its estimated input, uncached, and a full output, at
    the price of the dearest model of the tier (any of them may answer)."""
    prices = run.ports.prices
    if prices is None:
        return 0.0
    worst = Usage(input_tokens=input_tokens, output_tokens=tier.max_output_tokens)
    return max(prices.cost_usd(ref.model, worst) for ref in tier.chain)


def _affordable(run: _Run, tier: TierSpec, input_tokens: int) -> bool:
    """Whether the dollar budget still covers the call's worst case."""
    worst = _worst_cost(run, tier, input_tokens)
    return run.budget.cost_usd + worst <= run.spec.budgets.max_cost_usd


def _out_of_dollars(run: _Run, tier: TierSpec, input_tokens: int) -> None:
    """The next call could break the dollar cap: wrap up instead if the run may and has not
    yet, else stop here, before spending."""
    budget, spec, state = run.budget, run.spec, run.state
    cap = spec.budgets.max_cost_usd
    if spec.budgets.wrap_up and state.wrap_up is None:
        state.wrap_up = run.log.emit(
            BudgetExceededEvent, limit="cost", used=budget.cost_usd, cap=cap
        )
        state.messages.append(wrap_up_message(state.wrap_up))
        return
    if state.wrap_up is None:
        run.log.emit(BudgetExceededEvent, limit="cost", used=budget.cost_usd, cap=cap)
    worst = _worst_cost(run, tier, input_tokens)
    raise BudgetExceeded(
        f"cost budget exhausted: spent {budget.cost_usd:g} of {cap:g}, and the next model "
        f"call could cost up to {worst:g}",
        "cost",
    )


async def _context(run: _Run, tools: Tools) -> View:
    """The conversation as the next call carries it (agents.pruning), summarising older
    turns on the cheap tier when they do not fit. A changed decision is announced."""
    spec, state = run.spec.context, run.state
    made: tuple[Summary, ModelResult] | None = None
    if spec.max_tokens is not None and spec.summarize:
        before = build_view(
            state.messages, run.request_index, tools, spec, state.summary, drop=False
        )
        if before.tokens > spec.max_tokens:
            made = await summarize_span(_summarize(run))
    view = build_view(state.messages, run.request_index, tools, spec, state.summary)
    decision = (view.truncated, view.summarized, view.dropped)
    if made is None and decision == state.pruning:
        return view
    state.pruning = decision
    summary, result = made if made is not None else (None, None)
    pruned = run.log.emit(
        ContextPruned,
        step=state.step,
        tokens_before=view.full_tokens,
        tokens_after=view.tokens,
        max_tokens=spec.max_tokens,
        truncated=view.truncated,
        summarized=view.summarized,
        dropped=view.dropped,
        summary=summary.text if summary is not None else None,
        summary_upto=summary.upto - run.request_index if summary is not None else None,
        provider=result.provider if result is not None else "",
        model=result.response.model if result is not None else "",
        usage=result.response.usage if result is not None else Usage(),
        cost_usd=result.cost_usd if result is not None else 0.0,
    )
    run.spans.pruned(pruned)
    return view


async def _summarize(run: _Run) -> tuple[Summary, ModelResult] | None:
    """Fold the turns before the recent window into the summary, on the cheap tier. None
    when there is nothing to fold or the dollar budget cannot cover the call (the loop then
    drops old turns instead)."""
    spec, state = run.spec, run.state
    old = to_summarize(state.messages, run.request_index, spec.context, state.summary)
    if not old:
        return None
    tier = spec.tiers[spec.cheap_tier_name]
    prompt = summary_prompt(state.summary, old)
    if not _affordable(run, tier, estimate_tokens(prompt)):
        return None
    timeout_s = run.budget.call_timeout_s(spec.timeouts.model_call_timeout_s)
    result: ModelResult | None = None
    try:
        async for item in run.ports.model.stream(tier, prompt, (), timeout_s=timeout_s):
            if isinstance(item, ModelResult):  # the summary's text is not the answer: no deltas
                result = item
            elif isinstance(item, Discard):
                run.budget.record(Usage(), item.cost_usd)
    except RayfleetError:  # a summary only saves money: without one, old turns are dropped
        return None
    if result is None:
        return None
    run.budget.record(result.response.usage, result.cost_usd)
    state.summary = Summary(
        window_start(state.messages, spec.context), result.response.message.content
    )
    return state.summary, result


def _check_budget(run: _Run) -> None:
    """Before a step: fail on a spent hard limit; near one, switch to the wrap-up call."""
    budget, spec, state = run.budget, run.spec, run.state
    hard = budget.exceeded()
    if hard is not None and (hard[0] != "steps" or not spec.budgets.wrap_up or state.wrap_up):
        limit, used, cap = hard
        if state.wrap_up is None:
            run.log.emit(BudgetExceededEvent, limit=limit, used=used, cap=cap)
        raise BudgetExceeded(f"{limit} budget exhausted: used {used:g} of {cap:g}", limit)
    near = budget.near_limit(spec.budgets.wrap_up_reserve_s) if spec.budgets.wrap_up else None
    if near is not None and state.wrap_up is None:
        limit, used, cap = near
        state.wrap_up = run.log.emit(BudgetExceededEvent, limit=limit, used=used, cap=cap)
        state.messages.append(wrap_up_message(state.wrap_up))


async def _model_turn(
    run: _Run, tier: TierSpec, messages: tuple[Message, ...], tools: Tools
) -> ModelResult:
    log, step, coalescing, clock = run.log, run.state.step, run.coalescing, run.clock
    timeout_s = run.budget.call_timeout_s(run.spec.timeouts.model_call_timeout_s)
    pending: list[str] = []
    pending_chars = 0
    last_flush = clock()
    result: ModelResult | None = None
    stream = run.ports.model.stream(tier, messages, tools, timeout_s=timeout_s)
    async for item in stream:
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
            log.emit(
                ModelDiscarded,
                step=step,
                reason=item.reason,
                provider=item.provider,
                cost_usd=item.cost_usd,
            )
            run.budget.record(Usage(), item.cost_usd)
        else:
            result = item
    if pending:
        log.emit(ModelDelta, step=step, text="".join(pending))
    if result is None:
        raise RayfleetError("model stream ended without a result")
    return result


async def _tool_turn(run: _Run, call: ToolCall) -> Message:
    spec, log, state = run.spec, run.log, run.state
    step, position = state.step, len(state.calls) - len(state.pending)
    decided = await _approval(run, call)
    started = run.clock()
    with tool_span(call, spec.trace_content) as span:
        # Not approved: the tool never runs. Capped before it enters the run: the log, the
        # model and every reader get the cut.
        if not isinstance(decided, ToolOutcome):
            decided = await _run_tool(run, decided, position)
        outcome, size = cap_outcome(decided, spec)
        tool_done(span, outcome, spec.trace_content)
    event = log.emit(
        ToolResulted,
        step=step,
        call_id=call.id,
        tool=call.name,
        ok=outcome.ok,
        output=outcome.output,
        error=outcome.error,
        latency_ms=(run.clock() - started) * 1000,
        cached=outcome.cached,
        cost_usd=outcome.cost_usd,
        usage=outcome.usage,
        error_code=outcome.error_code,
        truncated=size is not None,
        output_bytes=size,
    )
    run.budget.record(outcome.usage, outcome.cost_usd)
    return tool_message(event)


async def _approval(run: _Run, call: ToolCall) -> ToolCall | ToolOutcome:
    """The call to run (the model's, or a person's edit of it), or the answer of a call a
    person did not approve. A call that needs a decision and has none pauses the run."""
    tool, state, request = run.spec.tool(call.name), run.state, run.request
    rule = tool.approval if tool is not None else None
    if rule is None or not rule.asks(call.arguments, request.tenant):
        return call
    assert tool is not None  # a rule is a tool's
    invalid = _invalid_arguments(tool, call)
    if invalid is not None:
        return invalid
    if request.assignment == "shadow":
        # A shadow never asks: its side effects are the primary's, replayed by the tool
        # port, and anything else that needs a person is not run at all.
        if tool.side_effects:
            return call
        return ToolOutcome(ok=False, output="", error="needs approval: not run in a shadow")
    decision = state.decided.get(call.id)
    if decision is None:
        asked = state.asked.get(call.id)
        if asked is None:  # once: a resumed run that still waits does not ask again
            asked = run.log.emit(
                ApprovalRequested,
                step=state.step,
                call_id=call.id,
                tool=call.name,
                arguments=call.arguments,
                deciders=rule.deciders,
                deadline=time.time() + rule.timeout_s,
            )
            state.asked[call.id] = asked
        await _durable(run)  # the pause outlives this process before the run lets go
        raise AwaitingApproval(asked)
    if decision.decision == "approve":
        return call
    if decision.decision == "edit" and decision.arguments is not None:
        return call.model_copy(update={"arguments": decision.arguments})
    if decision.decision == "timeout" and rule.on_timeout == "fail":
        raise ApprovalTimedOut(f"tool call {call.id} ({call.name}) was not decided in time")
    why = decision.message or (
        "no decision before the deadline" if decision.decision == "timeout" else "rejected"
    )
    return ToolOutcome(ok=False, output="", error=f"not approved by a person: {why}")


def _invalid_arguments(tool: ToolSpec, call: ToolCall) -> ToolOutcome | None:
    """The answer to a call whose arguments break the tool's schema: the model's to fix,
    and the tool never sees them (nor does a person asked to approve them)."""
    try:
        check_arguments(tool, call.arguments)
    except ToolArgumentsInvalid as exc:
        return ToolOutcome(ok=False, output="", error=exc.message, error_code=exc.code)
    return None


async def _run_tool(run: _Run, call: ToolCall, position: int) -> ToolOutcome:
    spec = run.spec
    tool = spec.tool(call.name)
    if tool is None:
        known = ", ".join(t.name for t in spec.tools) or "none"
        error = f"unknown tool {call.name!r} (known: {known})"
        return ToolOutcome(ok=False, output="", error=error)
    invalid = _invalid_arguments(tool, call)
    if invalid is not None:
        return invalid
    if tool.agent is not None:
        return await _subagent(run, tool.agent, call)
    return await _call_tool(run, tool, call, position)


async def _call_tool(run: _Run, tool: ToolSpec, call: ToolCall, position: int) -> ToolOutcome:
    """A function tool's call, keyed by what the durable log holds (agents.calls)."""
    tool_timeout_s = tool.timeout_s or run.spec.timeouts.tool_call_timeout_s
    timeout_s = run.budget.call_timeout_s(tool_timeout_s)
    if tool.side_effects:
        # Only a side effect waits for its tool.call to be stored (one group commit): a
        # read-only call that a crash makes the run repeat costs nothing, and most calls are
        # read-only, so the common step pays no store round trip.
        if not await _durable(run, asyncio.get_running_loop().time() + timeout_s):
            error = f"the run store did not record the call in {timeout_s:g}s: not called"
            return ToolOutcome(ok=False, output="", error=error)
        # The tool gets its whole timeout after the wait (within the run's): one cut short
        # mid-effect by a slow store would be asked for again under a new step's key.
        timeout_s = run.budget.call_timeout_s(tool_timeout_s)
        if timeout_s <= 0:
            return ToolOutcome(ok=False, output="", error="the run's time ran out: not called")
    key = idempotency_key(run.log.run_id, run.state.step, position, tool.name, call.arguments)
    return await run.ports.tools.call(
        tool,
        call,
        idempotency_key=key,
        timeout_s=timeout_s,
        tenant=run.request.tenant,
        user=run.request.user,
    )


async def _durable(run: _Run, deadline_at: float | None = None) -> bool:
    """Wait until everything the run has logged so far is in the run store; False if that
    did not happen by `deadline_at` (loop time)."""
    if run.ports.durable is None:
        return True
    try:
        async with asyncio.timeout_at(deadline_at):
            await run.ports.durable(run.log.last_seq)
    except TimeoutError:
        return False
    return True


async def _subagent(run: _Run, spec: AgentSpec, call: ToolCall) -> ToolOutcome:
    """Run a sub-agent on the task the model handed it, in this run's task, with this run's
    ports (tenant, limits, kill switches, tools as the caller has them). Its events are
    nested in the caller's stream as they happen; they are also its checkpoint: a resumed
    caller resumes the sub-agent from them. Its cost is the caller's too."""
    key = f"{run.log.run_id}:{run.state.step}:{call.id}"
    earlier = [
        parse_event(json.dumps(e.event))
        for e in run.log.events()
        if isinstance(e, SubagentEvent) and e.event.get("run_id") == key
    ]

    def nest(log: EventLog) -> None:
        for event in log.take_unsent():
            run.log.emit(
                SubagentEvent,
                step=run.state.step,
                call_id=call.id,
                agent=spec.name,
                event=event.model_dump(mode="json"),
            )
        log.publish(log.last_seq)

    # Its limits are its own, within what the caller has left: the caller keeps enough
    # dollars for the call that will use the sub-agent's answer (on the wrap-up tier, the
    # cheapest it could fall back to); its side effects are the caller's too.
    parent, budget = run.spec, run.budget
    wrap_up = parent.tiers[parent.wrap_up_tier_name]
    keep_usd = _worst_cost(run, wrap_up, estimate_tokens(run.state.messages))
    left_usd = parent.budgets.max_cost_usd - budget.cost_usd - keep_usd
    left_tokens = parent.budgets.max_tokens - budget.usage.total_tokens
    ran_s = max(0.0, time.time() - earlier[0].ts) if earlier else 0.0  # before a resume
    limits = spec.budgets.model_copy(
        update={
            "max_cost_usd": max(1e-9, min(spec.budgets.max_cost_usd, left_usd)),
            "max_tokens": max(1, min(spec.budgets.max_tokens, left_tokens)),
            "run_timeout_s": max(1e-3, min(spec.budgets.run_timeout_s, budget.remaining_s + ran_s)),
            "max_side_effects": min(
                spec.budgets.max_side_effects,
                side_effects_left(parent, run.log.events(), run.state.step, call.id),
            ),
        }
    )
    arguments = call.arguments
    task = arguments.get("task")
    request = RunInput(
        run_id=key,
        input=task if isinstance(task, str) else json.dumps(arguments),
        namespace=run.request.namespace,
        tenant=run.request.tenant,
        assignment=run.request.assignment,
        trace=_nested_trace(run.request.trace, key),
        user=run.request.user,
    )
    log = EventLog(key, earlier, durable=True, on_append=nest, trace_id=run.log.trace_id)
    ports = run.ports
    if ports.model_for is not None:  # the sub-agent's own model settings (its cache)
        ports = dataclasses.replace(ports, model=ports.model_for(spec))
    if ports.durable is not None:

        async def durable(_seq: int) -> None:
            # Its events are durable once the caller's events nesting them are.
            await _durable(run)

        ports = dataclasses.replace(ports, durable=durable)
    # Its content is recorded only if its caller's may be too: its task is the caller's.
    content = spec.trace_content and parent.trace_content
    await execute_run(
        spec.model_copy(update={"budgets": limits, "trace_content": content}),
        request,
        ports,
        log,
        coalescing=run.coalescing,
        clock=run.clock,
    )
    end = log.events()[-1]
    if isinstance(end, RunCancelled) and end.reason == "cancelled":
        # The caller was cancelled (or timed out) meanwhile: what the sub-agent spent is the
        # caller's all the same (its terminal event reports it).
        run.budget.record(end.usage, end.cost_usd)
        raise asyncio.CancelledError
    if isinstance(end, RunCompleted):
        return ToolOutcome(ok=True, output=end.output, cost_usd=end.cost_usd, usage=end.usage)
    assert isinstance(end, RunFailed | RunCancelled)
    why = end.message if isinstance(end, RunFailed) else end.reason
    return ToolOutcome(
        ok=False,
        output="",
        error=f"sub-agent {spec.name} did not finish: {why}",
        cost_usd=end.cost_usd,
        usage=end.usage,
    )


def _nested_trace(caller: RunTrace | None, key: str) -> RunTrace | None:
    """A sub-agent's place in its caller's trace: under the current `execute_tool` span,
    with a span id from its run id, so a resumed caller re-opens the same sub-agent span."""
    if caller is None:
        return None
    tool = trace.get_current_span().get_span_context()
    parent_id = format(tool.span_id, "016x") if tool.is_valid else None
    return caller.child(derived_span_id(key), parent_id)


async def _recall(
    request: RunInput, memory: MemoryPort | None, log: EventLog, *, quiet: bool
) -> list[Message]:
    if request.thread_id is None or memory is None:
        return []
    try:
        return await memory.load_thread(request.namespace, request.thread_id)
    except Exception as exc:  # memory is optional: degrade, say so (once), go on
        logger.warning("thread recall failed: %r", exc, exc_info=first_traceback(exc))
        if not quiet:
            log.emit(MemoryDegraded, reason=f"thread recall failed: {type(exc).__name__}")
        return []


async def _remember(run: _Run, answer: str) -> None:
    request, memory = run.request, run.ports.memory
    if request.thread_id is None or memory is None:
        return
    turn = [
        Message(role="user", content=request.input),
        Message(role="assistant", content=answer),
    ]
    try:
        await memory.append_thread(request.namespace, request.thread_id, turn)
    except Exception as exc:
        logger.warning("thread save failed: %r", exc, exc_info=first_traceback(exc))
        run.state.degraded = True
        run.log.emit(MemoryDegraded, reason=f"thread save failed: {type(exc).__name__}")
