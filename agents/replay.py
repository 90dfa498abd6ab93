"""Where a run stands, folded from its events: how a resumed run picks up where it left.

The durable event log is the run's checkpoint. Folding it gives the conversation so far,
the budget spent, and the phase the run was in when its host stopped:

    next     between steps: check budgets, start the next step
    model    a step started but its model call did not complete: redo the call
    tools    the model asked for tools; `pending` are the calls without a result
             (re-issued as the log holds them: the same keys, agents.calls)
    answered the model answered; only the terminal event is missing
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Literal

from agents.events import (
    ApprovalDecided,
    ApprovalRequested,
    BudgetExceededEvent,
    ContextPruned,
    Event,
    MemoryDegraded,
    ModelCompleted,
    ModelDelta,
    ModelDiscarded,
    StepStarted,
    ToolCalled,
    ToolResulted,
)
from agents.messages import Message, ToolCall, Usage
from agents.pruning import Summary

Phase = Literal["next", "model", "tools", "answered"]


@dataclass
class RunState:
    """A run's progress. Fresh runs start in phase `next` with only the prompt."""

    messages: list[Message]
    phase: Phase = "next"
    step: int = 0
    usage: Usage = field(default_factory=Usage)
    cost_usd: float = 0.0
    degraded: bool = False
    wrap_up: BudgetExceededEvent | None = None
    """Set once a budget ran out: the next model call is the wrap-up."""
    calls: list[ToolCall] = field(default_factory=list)
    """The step's tool calls in the order the model made them: a call's position is its
    index (part of its idempotency key)."""
    pending: list[ToolCall] = field(default_factory=list)
    """The tail of `calls` still without a result."""
    streamed_partial: bool = False
    """Deltas of an unfinished model call reached readers: they must be discarded."""
    answer: str = ""
    summary: Summary | None = None
    """The cheap tier's summary of older turns, once context pruning made one."""
    pruning: tuple[object, ...] = ((), 0, 0)
    """The last pruning decision announced (a context.pruned event is sent on a change)."""
    asked: dict[str, ApprovalRequested] = field(default_factory=dict)
    """Tool calls that asked for a person's decision, by call id."""
    decided: dict[str, ApprovalDecided] = field(default_factory=dict)
    """The decisions made on them, by call id."""


def wrap_up_message(event: BudgetExceededEvent) -> Message:
    """The instruction that turns the next model call into the wrap-up."""
    return Message(
        role="user",
        content=(
            f"[rayfleet] This run's {event.limit} budget is used up. Answer the request now "
            "with what you have found so far, in a few sentences. Do not call tools."
        ),
    )


def replay(prompt: list[Message], events: list[Event]) -> RunState:
    """Fold `events` (a run's durable log) onto its initial `prompt` messages."""
    state = RunState(messages=list(prompt))
    results: list[Message] = []  # the step's tool results: the loop runs calls in order
    reply_text = ""
    announced = 0  # tool calls the last model.completed said it made
    for event in events:
        if isinstance(event, StepStarted):
            state.step, state.phase, state.streamed_partial = event.step, "model", False
        elif isinstance(event, ModelDelta):
            state.streamed_partial = True
        elif isinstance(event, ModelDiscarded):
            state.streamed_partial = False
            state.cost_usd += event.cost_usd
        elif isinstance(event, ModelCompleted):
            state.usage += event.usage
            state.cost_usd += event.cost_usd
            state.streamed_partial = False
            reply_text = event.text
            announced = event.tool_calls
            state.phase = "tools" if event.tool_calls else "answered"
            state.answer = event.text
            state.calls, results = [], []
        elif isinstance(event, ToolCalled):
            state.calls.append(
                ToolCall(id=event.call_id, name=event.tool, arguments=event.arguments)
            )
        elif isinstance(event, ToolResulted):
            results.append(tool_message(event))
            state.usage += event.usage
            state.cost_usd += event.cost_usd
        elif isinstance(event, ContextPruned):
            state.usage += event.usage
            state.cost_usd += event.cost_usd
            if event.summary is not None and event.summary_upto is not None:
                # Relative to the request: the recalled thread before it may differ now.
                upto = max(1, len(prompt) - 1 + event.summary_upto)
                state.summary = Summary(upto, event.summary)
        elif isinstance(event, ApprovalRequested):
            state.asked[event.call_id] = event
        elif isinstance(event, ApprovalDecided):
            state.decided[event.call_id] = event
        elif isinstance(event, MemoryDegraded):
            state.degraded = True
        elif isinstance(event, BudgetExceededEvent):
            state.wrap_up = event
            state.messages.append(wrap_up_message(event))
        if state.phase == "tools" and announced == len(state.calls) == len(results):
            # Every call of the step has its result: the step is done.
            state.messages.append(
                Message(role="assistant", content=reply_text, tool_calls=tuple(state.calls))
            )
            state.messages.extend(results)
            state.phase = "next"
    if state.phase == "tools" and len(state.calls) < announced:
        # The log lost some of the step's tool.call events (the loop emits them with
        # model.completed in one go, so only a damaged log does this): redo the model call.
        state.phase, state.calls, state.streamed_partial = "model", [], True
    if state.phase == "tools":
        # Interrupted among the step's tools: keep the reply and the results there are, and
        # leave the rest pending: they run again as the log holds them (same step, position,
        # tool and arguments, hence the same idempotency keys), not as a new model call.
        state.messages.append(
            Message(role="assistant", content=reply_text, tool_calls=tuple(state.calls))
        )
        state.messages.extend(results)
        state.pending = state.calls[len(results) :]
    return state


def tool_message(event: ToolResulted) -> Message:
    """The message a tool result becomes in the conversation."""
    content = event.output if event.ok else json.dumps({"error": event.error})
    return Message(role="tool", content=content, tool_call_id=event.call_id)
