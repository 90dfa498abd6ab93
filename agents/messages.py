"""Messages, tool calls and usage: the provider-neutral shapes that models and the loop share.

Provider clients translate their wire formats into these; the loop never sees a wire format.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, JsonValue


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class ToolCall(_Frozen):
    """A model's request to call one tool."""

    id: str
    name: str
    arguments: dict[str, JsonValue] = Field(default_factory=dict)


class Message(_Frozen):
    """One chat message in provider-neutral form."""

    role: Literal["system", "user", "assistant", "tool"]
    content: str = ""
    tool_calls: tuple[ToolCall, ...] = ()
    tool_call_id: str | None = None
    """For role 'tool': the id of the call this message answers."""


class ToolSchema(_Frozen):
    """What the model is told about a tool."""

    name: str
    description: str
    parameters: dict[str, JsonValue]
    """A JSON schema object for the arguments."""


class Usage(_Frozen):
    """Token usage, normalised across providers.

    `input_tokens` never includes cached or cache-write tokens (OpenAI's prompt_tokens do,
    Anthropic's input_tokens do not: the clients normalise to this shape).
    """

    input_tokens: int = 0
    cached_input_tokens: int = 0
    cache_write_tokens: int = 0
    output_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        return (
            self.input_tokens
            + self.cached_input_tokens
            + self.cache_write_tokens
            + self.output_tokens
        )

    def __add__(self, other: Usage) -> Usage:
        return Usage(
            input_tokens=self.input_tokens + other.input_tokens,
            cached_input_tokens=self.cached_input_tokens + other.cached_input_tokens,
            cache_write_tokens=self.cache_write_tokens + other.cache_write_tokens,
            output_tokens=self.output_tokens + other.output_tokens,
        )


class ModelRequest(_Frozen):
    """One call to one model: what a provider client sends."""

    model: str
    messages: tuple[Message, ...]
    tools: tuple[ToolSchema, ...] = ()
    max_output_tokens: int = 1024
    temperature: float = 0.0


class TextDelta(_Frozen):
    """A piece of streamed assistant text."""

    kind: Literal["text"] = "text"
    text: str


class ModelResponse(_Frozen):
    """The end of one model call: the whole assistant message and its usage."""

    kind: Literal["response"] = "response"
    message: Message
    usage: Usage
    model: str
    finish_reason: str = "stop"


StreamItem = TextDelta | ModelResponse
"""What a provider client's `stream()` yields: deltas, then exactly one ModelResponse."""
