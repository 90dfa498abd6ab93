"""The typed event stream: the one language between the loop, the run actor, Serve, SSE and logs.

Kind names are public API: lower case, dotted, never renamed. Every run's stream ends with
exactly one terminal event (run.completed, run.failed or run.cancelled). Clients must ignore
kinds they do not know.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, JsonValue, TypeAdapter

from agents.messages import Usage


class _Event(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    run_id: str
    seq: int
    """1, 2, 3 ... per run; the SSE id, used to resume."""
    ts: float = 0.0
    """Unix time the event was recorded."""
    trace_id: str | None = None
    """The run's trace (agents.tracing.RunTrace), for finding its spans and logs."""


class RunCreated(_Event):
    kind: Literal["run.created"] = "run.created"
    agent: str
    version: str
    input: str
    thread_id: str | None = None
    tenant: str = "default"
    assignment: str = "stable"
    """stable, canary, shadow or pinned (the caller chose the version)."""
    primary_run_id: str | None = None
    user: str | None = None
    """The end user the run acts for, as the caller named them (its tools receive it)."""


class StepStarted(_Event):
    kind: Literal["step.started"] = "step.started"
    step: int


class ModelDelta(_Event):
    """Streamed assistant text, coalesced (tens of ms or characters per event)."""

    kind: Literal["model.delta"] = "model.delta"
    step: int
    text: str


class ModelDiscarded(_Event):
    """Discard every `model.delta` text of this step received so far: the model call
    failed mid-stream (or the run resumed mid-step) and the step's turn starts again."""

    kind: Literal["model.discarded"] = "model.discarded"
    step: int
    reason: str
    provider: str = ""
    cost_usd: float = 0.0
    """The failed attempt's estimated cost: providers bill what they generated, so it is
    booked (apart from the answer's) and counts in the run's cost."""


class ModelCompleted(_Event):
    kind: Literal["model.completed"] = "model.completed"
    step: int
    tier: str
    provider: str
    model: str
    text: str
    tool_calls: int
    usage: Usage
    cost_usd: float
    latency_ms: float
    tried: tuple[str, ...] = ()
    """'provider/model' for every attempt before the one that answered."""
    cached: bool = False
    """Answered from rayfleet's response cache: no provider call, cost 0."""
    usage_estimated: bool = False
    """The provider reported no usage (e.g. a stream cut before it): usage and cost_usd
    are estimates (agents.tokens)."""


class ToolCalled(_Event):
    kind: Literal["tool.call"] = "tool.call"
    step: int
    call_id: str
    tool: str
    arguments: dict[str, JsonValue]


class ToolResulted(_Event):
    kind: Literal["tool.result"] = "tool.result"
    step: int
    call_id: str
    tool: str
    ok: bool
    output: str
    error: str | None = None
    latency_ms: float = 0.0
    cached: bool = False
    """Answered from the tool-result cache: the tool was not called."""
    cost_usd: float = 0.0
    """Model spend inside the call (a sub-agent); part of the run's cost."""
    usage: Usage = Usage()
    """The tokens behind `cost_usd`; part of the run's usage."""
    error_code: str | None = None
    """Set when rayfleet refused the call itself: 'tool_arguments_invalid' (the arguments
    fail the tool's schema; the tool did not run)."""
    truncated: bool = False
    """The output (or error) was cut to the agent's tool_output_max_bytes, and marked."""
    output_bytes: int | None = None
    """When truncated: the output's (or error's) size in UTF-8 bytes before the cut."""


class ApprovalRequested(_Event):
    """A tool call waits for a person (agents.approvals): the run pauses here, holding no
    slot, task or budget, until a decision (or the deadline) resumes it."""

    kind: Literal["approval.requested"] = "approval.requested"
    step: int
    call_id: str
    tool: str
    arguments: dict[str, JsonValue]
    deciders: tuple[str, ...]
    """Who may decide: `tenant` (the run's tenant's key) and/or `admin`."""
    deadline: float
    """Unix time after which the tool's `on_timeout` outcome applies."""


class ApprovalDecided(_Event):
    """The decision on a call that waited: the run resumes from here."""

    kind: Literal["approval.decided"] = "approval.decided"
    step: int
    call_id: str
    tool: str
    decision: Literal["approve", "edit", "reject", "timeout"]
    arguments: dict[str, JsonValue] | None = None
    """An `edit`'s arguments: the tool runs with these instead of the model's."""
    message: str | None = None
    """A `reject`'s message: the model gets it as the tool's answer."""
    by: str
    """Who decided: `tenant:<id>`, `admin`, or `deadline`."""


class ContextPruned(_Event):
    """A model call carries less than the whole conversation (C7); the run log keeps all
    of it. Emitted when the pruning decision changes, before the call it applies to."""

    kind: Literal["context.pruned"] = "context.pruned"
    step: int
    tokens_before: int
    """Estimated input tokens of the call unpruned (agents.tokens)."""
    tokens_after: int
    max_tokens: int | None
    truncated: tuple[str, ...] = ()
    """Tool call ids whose outputs were sent cut to head and tail."""
    summarized: int = 0
    """Messages the summary stands for."""
    dropped: int = 0
    """Messages left out of the call entirely."""
    summary: str | None = None
    """A new summary, made for this call by the cheap tier."""
    summary_upto: int | None = None
    """The summary covers the conversation's messages before this position, counted from
    the request's (negative: within the recalled thread); never the request itself."""
    provider: str = ""
    model: str = ""
    usage: Usage = Usage()
    cost_usd: float = 0.0
    """What the summary call cost; part of the run's cost."""


class BudgetProgress(_Event):
    """Where the run stands against its budgets, after each step."""

    kind: Literal["budget.progress"] = "budget.progress"
    step: int
    max_steps: int
    tokens: int
    max_tokens: int
    cost_usd: float
    max_cost_usd: float
    elapsed_s: float
    time_left_s: float


class SubagentEvent(_Event):
    """An event of a sub-agent run (an agent used as a tool), nested in its caller's stream.
    `event` is the sub-agent's own event as JSON; its `run_id` is the tool call's
    idempotency key ('run:step:call')."""

    kind: Literal["subagent.event"] = "subagent.event"
    step: int
    call_id: str
    agent: str
    event: dict[str, JsonValue]


class MemoryDegraded(_Event):
    """An optional dependency was unavailable; the run goes on without it."""

    kind: Literal["memory.degraded"] = "memory.degraded"
    reason: str


class BudgetExceededEvent(_Event):
    kind: Literal["budget.exceeded"] = "budget.exceeded"
    limit: Literal["steps", "tokens", "cost", "time"]
    used: float
    cap: float


class RunCompleted(_Event):
    kind: Literal["run.completed"] = "run.completed"
    output: str
    steps: int
    usage: Usage
    cost_usd: float
    degraded: bool = False
    wrapped_up: bool = False
    """True if a budget ran out and the output is the wrap-up call's answer."""


class RunFailed(_Event):
    kind: Literal["run.failed"] = "run.failed"
    code: str
    message: str
    retryable: bool
    steps: int
    usage: Usage
    cost_usd: float


class RunCancelled(_Event):
    kind: Literal["run.cancelled"] = "run.cancelled"
    reason: str
    steps: int
    usage: Usage
    cost_usd: float


Event = Annotated[
    RunCreated
    | StepStarted
    | ModelDelta
    | ModelDiscarded
    | ModelCompleted
    | ToolCalled
    | ToolResulted
    | ApprovalRequested
    | ApprovalDecided
    | ContextPruned
    | BudgetProgress
    | SubagentEvent
    | MemoryDegraded
    | BudgetExceededEvent
    | RunCompleted
    | RunFailed
    | RunCancelled,
    Field(discriminator="kind"),
]
TerminalEvent = RunCompleted | RunFailed | RunCancelled
TERMINAL_KINDS = frozenset({"run.completed", "run.failed", "run.cancelled"})

event_adapter: TypeAdapter[Event] = TypeAdapter(Event)


def parse_event(data: str | bytes) -> Event:
    """Parse one event from its JSON form (an SSE `data:` line, a log line)."""
    return event_adapter.validate_json(data)


def is_terminal(event: Event) -> bool:
    return event.kind in TERMINAL_KINDS
