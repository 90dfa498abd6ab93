"""A run's status, derived from its events: what `GET /v1/runs/{id}` returns."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict

from agents.approvals import waiting
from agents.events import (
    ApprovalRequested,
    ContextPruned,
    Event,
    ModelCompleted,
    ModelDiscarded,
    RunCancelled,
    RunCompleted,
    RunCreated,
    RunFailed,
    StepStarted,
    ToolResulted,
)
from agents.messages import Usage

RunStatus = Literal["running", "awaiting_approval", "completed", "failed", "cancelled"]
"""`awaiting_approval`: paused until a person decides on a tool call (agents.approvals)."""


class RunSummary(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    run_id: str
    tenant: str = "default"
    assignment: str = "stable"
    agent: str
    version: str
    status: RunStatus
    input: str
    output: str | None = None
    error: dict[str, str] | None = None
    steps: int = 0
    usage: Usage = Usage()
    cost_usd: float = 0.0
    degraded: bool = False
    created_at: float = 0.0
    ended_at: float | None = None
    last_seq: int = 0
    approval: ApprovalRequested | None = None
    """While `awaiting_approval`: the tool call that waits (decide it with its call_id)."""


def summarize(events: list[Event]) -> RunSummary:
    """Fold a run's events (starting with run.created) into its summary."""
    first = events[0]
    if not isinstance(first, RunCreated):
        raise ValueError(f"a run's log starts with run.created, not {first.kind}")
    steps, usage, cost = 0, Usage(), 0.0
    for event in events:
        if isinstance(event, StepStarted):
            steps = event.step
        elif isinstance(event, ModelCompleted):
            usage, cost = usage + event.usage, cost + event.cost_usd
        elif isinstance(event, ModelDiscarded):  # a failed attempt, billed all the same
            cost += event.cost_usd
        elif isinstance(event, ContextPruned):
            usage, cost = usage + event.usage, cost + event.cost_usd
        elif isinstance(event, ToolResulted):  # a sub-agent's spend
            usage, cost = usage + event.usage, cost + event.cost_usd
    last = events[-1]
    base = {
        "run_id": first.run_id,
        "tenant": first.tenant,
        "assignment": first.assignment,
        "agent": first.agent,
        "version": first.version,
        "input": first.input,
        "created_at": first.ts,
        "last_seq": last.seq,
        "steps": steps,
        "usage": usage,
        "cost_usd": cost,
    }
    if isinstance(last, RunCompleted):
        return RunSummary(
            **base | {"usage": last.usage, "cost_usd": last.cost_usd},
            status="completed",
            output=last.output,
            degraded=last.degraded,
            ended_at=last.ts,
        )
    if isinstance(last, RunFailed):
        return RunSummary(
            **base,
            status="failed",
            error={"code": last.code, "message": last.message},
            ended_at=last.ts,
        )
    if isinstance(last, RunCancelled):
        return RunSummary(**base, status="cancelled", ended_at=last.ts)
    waits = waiting(events)
    if waits is None:
        return RunSummary(**base, status="running")
    return RunSummary(**base, status="awaiting_approval", approval=waits)
