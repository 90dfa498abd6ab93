"""Scripted replies and the request log: how tests tell the simulator what to do next.

A test posts replies to `/_sim/script`; each model request consumes the first queued reply
whose `model` matches (absent = any) and whose `endpoint` matches the request ("chat" for
chat completions and messages, "embeddings" for embeddings). No matching reply: the policy
answers.
"""

from __future__ import annotations

from collections import deque
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, JsonValue, TypeAdapter


class UsageOverride(BaseModel):
    """Token counts that replace the estimate (provider-neutral; input excludes cached)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    input_tokens: int | None = None
    """Uncached input tokens (OpenAI prompt_tokens = input + cached + cache_write)."""
    cached_tokens: int | None = None
    cache_write_tokens: int | None = None
    output_tokens: int | None = None


class _Reply(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    model: str | None = None
    """Only a request for this model consumes the reply; None = any model."""
    endpoint: Literal["chat", "embeddings"] = "chat"
    delay_ms: float = 0.0
    """Wait this long before any byte of the response (a huge value = a hanging provider)."""
    usage: UsageOverride | None = None


class TextReply(_Reply):
    type: Literal["text"]
    text: str


class ScriptedCall(BaseModel):
    """One more tool call in a `tool_call` reply."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    arguments: dict[str, JsonValue] = Field(default_factory=dict)
    id: str | None = None


class ToolCallReply(_Reply):
    type: Literal["tool_call"]
    name: str
    arguments: dict[str, JsonValue] = Field(default_factory=dict)
    id: str | None = None
    """None: a fresh id, as a provider's; "" is sent as is (some providers send no ids)."""
    text: str = ""
    """Optional assistant text streamed before the call."""
    more: list[ScriptedCall] = Field(default_factory=list)
    """Further calls in the same reply, after this one (parallel tool calls)."""


class StatusReply(_Reply):
    type: Literal["status"]
    status: int
    retry_after_s: float | None = None
    message: str = "simulated error"


class DelayReply(_Reply):
    """Only a delay; the policy answers afterwards."""

    type: Literal["delay"]


class DropReply(_Reply):
    """Send `after_chunks` chunks, then cut the connection without finishing."""

    type: Literal["drop"]
    after_chunks: int = 0


class StreamErrorReply(_Reply):
    """Answer 200, send `after_chunks` chunks, then an in-band error event."""

    type: Literal["stream_error"]
    after_chunks: int = 0
    error_type: str = "overloaded_error"
    message: str = "simulated in-band error"


Reply = Annotated[
    TextReply | ToolCallReply | StatusReply | DelayReply | DropReply | StreamErrorReply,
    Field(discriminator="type"),
]
_replies_adapter: TypeAdapter[list[Reply]] = TypeAdapter(list[Reply])


def parse_replies(raw: Any) -> list[Reply]:
    """Validate a list of reply dicts (raises pydantic.ValidationError)."""
    return _replies_adapter.validate_python(raw)


class ReplyQueue:
    """Scripted replies in order; consumed by the first request that matches."""

    def __init__(self) -> None:
        self._items: deque[Reply] = deque()

    def extend(self, replies: list[Reply]) -> None:
        self._items.extend(replies)

    def take(self, model: str, endpoint: Literal["chat", "embeddings"]) -> Reply | None:
        for i, reply in enumerate(self._items):
            if reply.endpoint == endpoint and reply.model in (None, model):
                del self._items[i]
                return reply
        return None

    def __len__(self) -> int:
        return len(self._items)

    def clear(self) -> None:
        self._items.clear()


class RequestLog:
    """The model requests the simulator saw (the latest `max_entries`). Keys are never kept.

    Each entry: path, model, body, auth (a key was sent), headers (a few), and fault (the
    kind injected by random fault injection, or None).
    """

    def __init__(self, max_entries: int = 10_000) -> None:
        self.entries: deque[dict[str, JsonValue]] = deque(maxlen=max_entries)
        self.total = 0
        """Requests seen since the last reset, including those no longer kept."""

    def record(
        self, path: str, model: str, body: JsonValue, *, auth: bool, headers: dict[str, str]
    ) -> dict[str, JsonValue]:
        """Log a request; the entry is returned so its `fault` can be set once drawn."""
        self.total += 1
        entry: dict[str, JsonValue] = {
            "path": path,
            "model": model,
            "body": body,
            "auth": auth,
            "headers": dict(headers),
            "fault": None,
        }
        self.entries.append(entry)
        return entry

    def clear(self) -> None:
        self.entries.clear()
        self.total = 0
