"""Anthropic messages wire format: parse requests, render replies and stream events.

Prompt caching follows `cache_control` breakpoints. The prompt is read in Anthropic's order
(tools, system, messages) as a list of blocks; each block with `cache_control` ends a
cacheable prefix. The longest prefix seen before is reported as `cache_read_input_tokens`,
the rest up to the last breakpoint as `cache_creation_input_tokens` (and remembered), what
follows the last breakpoint as `input_tokens`. There is no minimum prefix length here.
"""

from __future__ import annotations

import json
from typing import Any

from pydantic import JsonValue

from serve_app.simulator.policy import (
    Completion,
    Conversation,
    PromptCache,
    SimMessage,
    SimTool,
    SimToolCall,
    SimUsage,
    WireError,
    estimate_tokens,
    short_hash,
    split_fragments,
    split_text,
)

Chunk = tuple[str, int]


def _block_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(
            str(b.get("text", ""))
            for b in content
            if isinstance(b, dict) and b.get("type") == "text"
        )
    return ""


def _message_blocks(raw: dict[str, Any], i: int) -> list[dict[str, Any]]:
    content = raw.get("content")
    if isinstance(content, str):
        return [{"type": "text", "text": content}]
    if isinstance(content, list) and all(isinstance(b, dict) for b in content):
        return content
    raise WireError(400, f"messages.{i}.content: must be a string or a list of blocks")


def parse_messages(body: Any) -> tuple[Conversation, list[tuple[dict[str, Any], int]]]:
    """The request as a Conversation, plus its prompt blocks with their token counts."""
    if not isinstance(body, dict):
        raise WireError(400, "request body must be a JSON object")
    model, raw_messages = body.get("model"), body.get("messages")
    if not isinstance(model, str) or not model:
        raise WireError(400, "model: Field required")
    if not isinstance(body.get("max_tokens"), int):
        raise WireError(400, "max_tokens: Field required")
    if not isinstance(raw_messages, list) or not raw_messages:
        raise WireError(400, "messages: must be a non-empty list")

    blocks: list[tuple[dict[str, Any], int]] = []
    tools: list[SimTool] = []
    for t in body.get("tools") or []:
        if not isinstance(t, dict) or not t.get("name"):
            raise WireError(400, "tools: each tool needs a name")
        schema = t.get("input_schema")
        tool = SimTool(str(t["name"]), str(t.get("description", "")), schema or {})
        tools.append(tool)
        blocks.append((t, tool.tokens()))

    messages: list[SimMessage] = []
    system = body.get("system")
    system_blocks = [{"type": "text", "text": system}] if isinstance(system, str) else system
    for b in system_blocks or []:
        text = str(b.get("text", ""))
        messages.append(SimMessage(role="system", text=text))
        blocks.append((b, estimate_tokens(text)))

    for i, raw in enumerate(raw_messages):
        if not isinstance(raw, dict) or raw.get("role") not in ("user", "assistant"):
            raise WireError(400, f"messages.{i}.role: must be 'user' or 'assistant'")
        role = raw["role"]
        texts: list[str] = []
        calls: list[SimToolCall] = []
        for b in _message_blocks(raw, i):
            kind = b.get("type")
            if kind == "text":
                texts.append(str(b.get("text", "")))
                blocks.append((b, estimate_tokens(texts[-1])))
            elif kind == "tool_use":
                raw_input = b.get("input")
                args: dict[str, JsonValue] = raw_input if isinstance(raw_input, dict) else {}
                call = SimToolCall(str(b.get("id", "")), str(b.get("name", "")), args)
                calls.append(call)
                blocks.append((b, estimate_tokens(call.name + call.arguments_json)))
            elif kind == "tool_result":
                text = _block_text(b.get("content", ""))
                messages.append(
                    SimMessage(role="tool", text=text, tool_call_id=b.get("tool_use_id"))
                )
                blocks.append((b, estimate_tokens(text)))
        if texts or calls:
            messages.append(SimMessage(role=role, text="".join(texts), tool_calls=tuple(calls)))
    return Conversation(model=model, messages=tuple(messages), tools=tuple(tools)), blocks


def _strip_cache_control(block: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in block.items() if k != "cache_control"}


def input_usage(
    model: str, blocks: list[tuple[dict[str, Any], int]], cache: PromptCache
) -> SimUsage:
    """Input, cache-read and cache-write tokens from the `cache_control` breakpoints."""
    total = sum(tokens for _, tokens in blocks)
    prefixes: list[tuple[str, int]] = []  # (key, tokens up to and including the breakpoint)
    running, seen_so_far = 0, []
    for block, tokens in blocks:
        running += tokens
        seen_so_far.append(_strip_cache_control(block))
        if isinstance(block.get("cache_control"), dict):
            prefixes.append((short_hash(seen_so_far), running))
    if not prefixes:
        return SimUsage(input_tokens=total)
    read = max((t for key, t in prefixes if cache.seen(model, key)), default=0)
    last = prefixes[-1][1]
    for key, _ in prefixes:
        cache.add(model, key)
    return SimUsage(input_tokens=total - last, cached_tokens=read, cache_write_tokens=last - read)


def usage_body(u: SimUsage, *, output_tokens: int | None = None) -> dict[str, Any]:
    return {
        "input_tokens": u.input_tokens,
        "cache_creation_input_tokens": u.cache_write_tokens,
        "cache_read_input_tokens": u.cached_tokens,
        "output_tokens": u.output_tokens if output_tokens is None else output_tokens,
    }


def _content_blocks(c: Completion) -> list[dict[str, Any]]:
    content: list[dict[str, Any]] = []
    if c.text:
        content.append({"type": "text", "text": c.text})
    for call in c.tool_calls:
        content.append(
            {"type": "tool_use", "id": call.id, "name": call.name, "input": call.arguments}
        )
    return content


def stop_reason(c: Completion) -> str:
    return "tool_use" if c.tool_calls else "end_turn"


def message_response(c: Completion, model: str, message_id: str) -> dict[str, Any]:
    """A non-streaming Message object."""
    return {
        "id": message_id,
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": _content_blocks(c),
        "stop_reason": stop_reason(c),
        "stop_sequence": None,
        "usage": usage_body(c.usage),
    }


def _event(name: str, payload: dict[str, Any]) -> str:
    return f"event: {name}\ndata: {json.dumps(payload, separators=(',', ':'))}\n\n"


def message_stream(c: Completion, model: str, message_id: str) -> list[Chunk]:
    """message_start, ping, content blocks with their deltas, message_delta, message_stop."""
    start = message_response(Completion(usage=c.usage), model, message_id)
    start.update(content=[], stop_reason=None, usage=usage_body(c.usage, output_tokens=1))
    out: list[Chunk] = [
        (_event("message_start", {"type": "message_start", "message": start}), 0),
        (_event("ping", {"type": "ping"}), 0),
    ]
    index = 0

    def block(first: dict[str, Any], deltas: list[tuple[dict[str, Any], int]]) -> None:
        nonlocal index
        out.append(
            (
                _event(
                    "content_block_start",
                    {"type": "content_block_start", "index": index, "content_block": first},
                ),
                0,
            )
        )
        for delta, tokens in deltas:
            payload = {"type": "content_block_delta", "index": index, "delta": delta}
            out.append((_event("content_block_delta", payload), tokens))
        out.append(
            (_event("content_block_stop", {"type": "content_block_stop", "index": index}), 0)
        )
        index += 1

    if c.text:
        pieces = split_text(c.text)
        block(
            {"type": "text", "text": ""},
            [({"type": "text_delta", "text": p}, estimate_tokens(p)) for p in pieces],
        )
    for call in c.tool_calls:
        frags = split_fragments(call.arguments_json)
        block(
            {"type": "tool_use", "id": call.id, "name": call.name, "input": {}},
            [({"type": "input_json_delta", "partial_json": f}, estimate_tokens(f)) for f in frags],
        )
    delta = {
        "type": "message_delta",
        "delta": {"stop_reason": stop_reason(c), "stop_sequence": None},
        "usage": {"output_tokens": c.usage.output_tokens},
    }
    out.append((_event("message_delta", delta), 0))
    out.append((_event("message_stop", {"type": "message_stop"}), 0))
    return out


_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    529: "overloaded_error",
    503: "overloaded_error",
}


def error_body(status: int, message: str) -> dict[str, Any]:
    """Anthropic's error shape for an HTTP status."""
    kind = _ERROR_TYPES.get(status, "api_error" if status >= 500 else "invalid_request_error")
    return {"type": "error", "error": {"type": kind, "message": message}}


def stream_error_event(error_type: str, message: str) -> str:
    """An in-band `event: error` after a 200."""
    return _event("error", {"type": "error", "error": {"type": error_type, "message": message}})
