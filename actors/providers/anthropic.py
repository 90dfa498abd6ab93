"""The Anthropic messages client.

`base_url` follows the SDK's convention, without the version: `https://api.anthropic.com`.
System messages become the top-level `system` blocks, the last one marked
`cache_control: ephemeral` so the stable prefix (tools + system) is cached. Usage:
input_tokens as sent, cached_input_tokens = cache_read_input_tokens, cache_write_tokens =
cache_creation_input_tokens.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import aclosing
from dataclasses import dataclass, field
from typing import Any

from actors.providers._http import (
    ClientBase,
    decode_data,
    parse_arguments,
    redact,
    stream_events,
)
from agents.errors import ProviderUnavailable
from agents.messages import (
    Message,
    ModelRequest,
    ModelResponse,
    StreamItem,
    TextDelta,
    ToolCall,
    Usage,
)

ANTHROPIC_VERSION = "2023-06-01"
_FINISH = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "tool_use": "tool_calls",
    "max_tokens": "length",
}


def to_wire(messages: tuple[Message, ...]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Our messages as (system blocks, messages); consecutive same-role turns are merged."""
    system: list[dict[str, Any]] = []
    turns: list[dict[str, Any]] = []

    def add(role: str, blocks: list[dict[str, Any]]) -> None:
        if not blocks:
            return
        if turns and turns[-1]["role"] == role:
            turns[-1]["content"].extend(blocks)
        else:
            turns.append({"role": role, "content": blocks})

    for m in messages:
        text_block = [{"type": "text", "text": m.content}] if m.content else []
        if m.role == "system":
            system.extend(text_block)
        elif m.role == "user":
            add("user", text_block)
        elif m.role == "tool":
            result = {
                "type": "tool_result",
                "tool_use_id": m.tool_call_id or "",
                "content": m.content,
            }
            add("user", [result])
        else:
            uses = [
                {"type": "tool_use", "id": c.id, "name": c.name, "input": c.arguments}
                for c in m.tool_calls
            ]
            add("assistant", text_block + uses)
    if system:
        system[-1] = {**system[-1], "cache_control": {"type": "ephemeral"}}
    return system, turns


def request_body(request: ModelRequest) -> dict[str, Any]:
    """The streaming messages body for a request."""
    system, turns = to_wire(request.messages)
    body: dict[str, Any] = {
        "model": request.model,
        "messages": turns,
        "max_tokens": request.max_output_tokens,
        "temperature": request.temperature,
        "stream": True,
    }
    if system:
        body["system"] = system
    if request.tools:
        body["tools"] = [
            {"name": t.name, "description": t.description, "input_schema": t.parameters}
            for t in request.tools
        ]
        if not system:  # the prefix is tools, then system: without a system, end it here
            body["tools"][-1]["cache_control"] = {"type": "ephemeral"}
    return body


def _usage_update(usage: dict[str, int], raw: Any) -> None:
    if not isinstance(raw, dict):
        return
    for key in (
        "input_tokens",
        "output_tokens",
        "cache_read_input_tokens",
        "cache_creation_input_tokens",
    ):
        if isinstance(raw.get(key), int):
            usage[key] = raw[key]


def normalise_usage(raw: dict[str, int]) -> Usage:
    """Anthropic usage -> ours (its input_tokens already exclude the cache)."""
    return Usage(
        input_tokens=raw.get("input_tokens", 0),
        cached_input_tokens=raw.get("cache_read_input_tokens", 0),
        cache_write_tokens=raw.get("cache_creation_input_tokens", 0),
        output_tokens=raw.get("output_tokens", 0),
    )


@dataclass
class _Block:
    kind: str
    id: str = ""
    name: str = ""
    parts: list[str] = field(default_factory=list)


class AnthropicClient(ClientBase):
    """Streams Anthropic messages over one shared httpx2 client."""

    _fixed_headers = {"anthropic-version": ANTHROPIC_VERSION}

    def _auth(self, key: str) -> dict[str, str]:
        return {"x-api-key": key}

    async def stream(
        self, request: ModelRequest, *, timeout_s: float, api_key: str | None = None
    ) -> AsyncIterator[StreamItem]:
        """Text deltas as they arrive, then exactly one ModelResponse. `api_key`, if given,
        replaces the client's own key for this call (a tenant's own key)."""
        key = api_key or self._api_key
        blocks: dict[int, _Block] = {}
        usage: dict[str, int] = {}
        finish = "stop"
        model = request.model
        done = False
        events = stream_events(
            self._http,
            f"{self.base_url}/v1/messages",
            provider=self.name,
            headers=self._headers(key),
            body=request_body(request),
            timeout_s=timeout_s,
            secret=key,
        )
        async with aclosing(events):
            async for event in events:
                if event.event == "ping":
                    continue
                data = decode_data(self.name, event)
                kind = data.get("type") or event.event
                if kind == "error" or event.event == "error":
                    raise self._in_band_error(data.get("error"), key)
                if kind == "message_start":
                    message = data.get("message") or {}
                    model = str(message.get("model") or model)
                    _usage_update(usage, message.get("usage"))
                elif kind == "content_block_start":
                    first = data.get("content_block") or {}
                    block = _Block(kind=str(first.get("type")), id=first.get("id") or "")
                    block.name = first.get("name") or ""
                    if first.get("type") == "text" and first.get("text"):
                        block.parts.append(first["text"])
                        yield TextDelta(text=first["text"])
                    blocks[int(data.get("index", len(blocks)))] = block
                elif kind == "content_block_delta":
                    delta = data.get("delta") or {}
                    block = blocks.setdefault(int(data.get("index", 0)), _Block(kind="text"))
                    if delta.get("type") == "text_delta" and delta.get("text"):
                        block.parts.append(delta["text"])
                        yield TextDelta(text=delta["text"])
                    elif delta.get("type") == "input_json_delta":
                        block.parts.append(delta.get("partial_json") or "")
                elif kind == "message_delta":
                    reason = (data.get("delta") or {}).get("stop_reason")
                    if reason:
                        finish = _FINISH.get(reason, reason)
                    _usage_update(usage, data.get("usage"))
                elif kind == "message_stop":
                    done = True
                    break
        if not done:
            raise ProviderUnavailable(
                f"{self.name}: stream ended before message_stop", self.name, 200
            )
        ordered = [blocks[i] for i in sorted(blocks)]
        text = "".join("".join(b.parts) for b in ordered if b.kind == "text")
        calls = tuple(
            ToolCall(
                id=b.id, name=b.name, arguments=parse_arguments(self.name, b.name, "".join(b.parts))
            )
            for b in ordered
            if b.kind == "tool_use"
        )
        yield ModelResponse(
            message=Message(role="assistant", content=text, tool_calls=calls),
            usage=normalise_usage(usage),
            model=model,
            finish_reason=finish,
        )

    def _in_band_error(self, error: Any, key: str | None) -> ProviderUnavailable:
        detail = (
            f"{error.get('type')}: {error.get('message')}" if isinstance(error, dict) else error
        )
        message = redact(f"{self.name}: error in stream: {detail}", key)
        return ProviderUnavailable(message, self.name)
