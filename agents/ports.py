"""The ports the step loop talks to: model, tools, memory. Adapters live in `actors/`."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Protocol

from pydantic import BaseModel, ConfigDict, Field

from agents.messages import Message, ModelResponse, TextDelta, ToolCall, ToolSchema, Usage
from agents.spec import TierSpec, ToolSpec


class ModelResult(BaseModel):
    """A finished model call as the router reports it: who answered and what it cost."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    kind: str = "result"
    response: ModelResponse
    provider: str
    cost_usd: float
    latency_ms: float
    tried: tuple[str, ...] = ()
    cached: bool = False
    """Answered from rayfleet's response cache: no provider call, no cost."""
    usage_estimated: bool = False
    """The provider reported no usage: usage and cost are estimates (agents.tokens)."""


class Discard(BaseModel):
    """The text streamed so far in this turn is void: the attempt failed after it began
    streaming, and the turn is being redone from its start (on a fallback model)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    kind: str = "discard"
    reason: str
    provider: str
    cost_usd: float = 0.0
    """The failed attempt's estimated cost (providers bill what they generated)."""


class ModelPort(Protocol):
    """Streams one model turn on a tier: TextDelta items, then exactly one ModelResult.

    A Discard item may come between deltas: everything streamed before it is void."""

    def stream(
        self,
        tier: TierSpec,
        messages: tuple[Message, ...],
        tools: tuple[ToolSchema, ...],
        *,
        timeout_s: float,
    ) -> AsyncIterator[TextDelta | Discard | ModelResult]: ...


class ToolOutcome(BaseModel):
    """The result of one tool call. A failure the model can react to is ok=False, not an error."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    ok: bool
    output: str
    error: str | None = None
    cached: bool = False
    """Answered from the tool-result cache: the tool was not called."""
    cost_usd: float = 0.0
    """What the call spent on models (a sub-agent used as a tool); booked to the run."""
    usage: Usage = Usage()
    """The tokens behind `cost_usd`; booked to the run too."""
    error_code: str | None = None
    """The code of a refusal by rayfleet itself (agents.errors), e.g. invalid arguments."""
    # What happened to this call, for its span: they travel with the outcome (pickled across
    # Ray) but are never part of a stored one (the effect ledger, the tool-result cache).
    attempts: int = Field(0, exclude=True)
    """How many times the tool was called for this outcome, retries included; 0: not at all
    (a cache or ledger answer, a refusal)."""
    replayed: bool = Field(False, exclude=True)
    """Answered from the effect ledger: the side effect happened before, and not again."""

    def __eq__(self, other: object) -> bool:
        """Equal when they give the same answer, however each call came to it."""
        if not isinstance(other, ToolOutcome):
            return NotImplemented
        return self.model_dump() == other.model_dump()

    def __hash__(self) -> int:
        return hash(self.model_dump_json())


class ToolPort(Protocol):
    """Runs one tool call for a run of `tenant` on behalf of `user` (the caller's end user,
    if it named one); a tool function that takes a `tenant` or `user` argument receives it
    (per-tenant accounting; "is this order the caller's"), whatever the model passed."""

    async def call(
        self,
        tool: ToolSpec,
        call: ToolCall,
        *,
        idempotency_key: str,
        timeout_s: float,
        tenant: str = "default",
        user: str | None = None,
    ) -> ToolOutcome: ...


class EffectLedger(Protocol):
    """Durable record of side-effecting tool calls by idempotency key: a retried or resumed
    call gets the recorded outcome instead of acting twice."""

    async def recall(self, key: str) -> ToolOutcome | None: ...

    async def record(self, key: str, outcome: ToolOutcome) -> None: ...


class MemoryPort(Protocol):
    """Conversation threads. Optional: the loop degrades without it."""

    async def load_thread(self, namespace: str, thread_id: str) -> list[Message]: ...

    async def append_thread(
        self, namespace: str, thread_id: str, messages: list[Message]
    ) -> None: ...
