"""OpenAI chat-completions and embeddings wire format: parse requests, render replies.

Automatic prompt caching is simulated the way OpenAI describes it: a prefix (here: the
system messages and the tools) of at least 1024 estimated tokens that was seen before is
reported as `prompt_tokens_details.cached_tokens`.
"""

from __future__ import annotations

import base64
import json
import struct
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

CACHE_MIN_TOKENS = 1024

Chunk = tuple[str, int]
"""One SSE event as sent, and the tokens it carries (for pacing)."""


def _text_of(content: Any) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(
            str(p.get("text", "")) for p in content if isinstance(p, dict) and "text" in p
        )
    raise WireError(400, f"unsupported message content: {type(content).__name__}")


def _parse_arguments(raw: Any) -> dict[str, JsonValue]:
    if isinstance(raw, dict):
        return raw
    try:
        value = json.loads(raw) if isinstance(raw, str) and raw else {}
    except json.JSONDecodeError:
        return {}
    return value if isinstance(value, dict) else {}


def parse_chat(body: Any) -> Conversation:
    """A chat-completions request body as a Conversation (WireError 400 if malformed)."""
    if not isinstance(body, dict):
        raise WireError(400, "request body must be a JSON object")
    model, raw_messages = body.get("model"), body.get("messages")
    if not isinstance(model, str) or not model:
        raise WireError(400, "'model' is required")
    if not isinstance(raw_messages, list) or not raw_messages:
        raise WireError(400, "'messages' must be a non-empty list")
    messages: list[SimMessage] = []
    for i, raw in enumerate(raw_messages):
        if not isinstance(raw, dict):
            raise WireError(400, f"messages[{i}] must be an object")
        role = raw.get("role")
        text = _text_of(raw.get("content"))
        if role in ("system", "developer"):
            messages.append(SimMessage(role="system", text=text))
        elif role == "user":
            messages.append(SimMessage(role="user", text=text))
        elif role == "assistant":
            calls = tuple(
                SimToolCall(
                    id=str(c.get("id", "")),
                    name=str(c.get("function", {}).get("name", "")),
                    arguments=_parse_arguments(c.get("function", {}).get("arguments")),
                )
                for c in raw.get("tool_calls") or []
                if isinstance(c, dict)
            )
            messages.append(SimMessage(role="assistant", text=text, tool_calls=calls))
        elif role in ("tool", "function"):
            messages.append(
                SimMessage(role="tool", text=text, tool_call_id=raw.get("tool_call_id"))
            )
        else:
            raise WireError(400, f"messages[{i}].role {role!r} is not a known role")
    tools: list[SimTool] = []
    for t in body.get("tools") or []:
        fn = t.get("function", {}) if isinstance(t, dict) else {}
        if not isinstance(fn, dict) or not fn.get("name"):
            raise WireError(400, "each tool needs function.name")
        params = fn.get("parameters")
        tools.append(
            SimTool(
                name=str(fn["name"]),
                description=str(fn.get("description", "")),
                parameters=params if isinstance(params, dict) else {},
            )
        )
    return Conversation(model=model, messages=tuple(messages), tools=tuple(tools))


def input_usage(conv: Conversation, cache: PromptCache) -> SimUsage:
    """Input tokens, with a repeated long system + tools prefix reported as cached."""
    total = sum(m.tokens() for m in conv.messages) + sum(t.tokens() for t in conv.tools)
    system = [m for m in conv.messages if m.role == "system"]
    prefix_tokens = sum(m.tokens() for m in system) + sum(t.tokens() for t in conv.tools)
    cached = 0
    if prefix_tokens >= CACHE_MIN_TOKENS:
        key = short_hash([m.text for m in system], [t.__dict__ for t in conv.tools])
        if cache.seen(conv.model, key):
            cached = prefix_tokens
        cache.add(conv.model, key)
    return SimUsage(input_tokens=total - cached, cached_tokens=cached)


def usage_body(u: SimUsage) -> dict[str, Any]:
    prompt = u.input_tokens + u.cached_tokens + u.cache_write_tokens
    return {
        "prompt_tokens": prompt,
        "completion_tokens": u.output_tokens,
        "total_tokens": prompt + u.output_tokens,
        "prompt_tokens_details": {"cached_tokens": u.cached_tokens, "audio_tokens": 0},
        "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0},
    }


def _tool_call_body(call: SimToolCall) -> dict[str, Any]:
    return {
        "id": call.id,
        "type": "function",
        "function": {"name": call.name, "arguments": call.arguments_json},
    }


def chat_response(c: Completion, model: str, response_id: str, created: int) -> dict[str, Any]:
    """A non-streaming chat.completion object."""
    message: dict[str, Any] = {"role": "assistant", "content": c.text or None, "refusal": None}
    if c.tool_calls:
        message["tool_calls"] = [_tool_call_body(t) for t in c.tool_calls]
    return {
        "id": response_id,
        "object": "chat.completion",
        "created": created,
        "model": model,
        "choices": [{"index": 0, "message": message, "finish_reason": c.finish, "logprobs": None}],
        "usage": usage_body(c.usage),
    }


def _sse(payload: dict[str, Any] | str) -> str:
    data = payload if isinstance(payload, str) else json.dumps(payload, separators=(",", ":"))
    return f"data: {data}\n\n"


def chat_stream(
    c: Completion, model: str, response_id: str, created: int, *, include_usage: bool
) -> list[Chunk]:
    """The chat.completion.chunk events of a streamed reply, `[DONE]` last."""

    def chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
        body: dict[str, Any] = {
            "id": response_id,
            "object": "chat.completion.chunk",
            "created": created,
            "model": model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}],
        }
        if include_usage:
            body["usage"] = None
        return body

    out: list[Chunk] = [(_sse(chunk({"role": "assistant", "content": ""})), 0)]
    if c.text:
        out += [(_sse(chunk({"content": p})), estimate_tokens(p)) for p in split_text(c.text)]
    for index, call in enumerate(c.tool_calls):
        head = {"index": index, "id": call.id, "type": "function"}
        head["function"] = {"name": call.name, "arguments": ""}
        out.append((_sse(chunk({"tool_calls": [head]})), estimate_tokens(call.name)))
        for frag in split_fragments(call.arguments_json):
            delta = {"tool_calls": [{"index": index, "function": {"arguments": frag}}]}
            out.append((_sse(chunk(delta)), estimate_tokens(frag)))
    out.append((_sse(chunk({}, c.finish)), 0))
    if include_usage:
        final = chunk({})
        final["choices"] = []
        final["usage"] = usage_body(c.usage)
        out.append((_sse(final), 0))
    out.append((_sse("[DONE]"), 0))
    return out


_ERROR_TYPES = {
    400: ("invalid_request_error", "invalid_request"),
    401: ("authentication_error", "invalid_api_key"),
    403: ("permission_error", "permission_denied"),
    404: ("invalid_request_error", "model_not_found"),
    408: ("timeout_error", "timeout"),
    409: ("conflict_error", "conflict"),
    422: ("invalid_request_error", "unprocessable"),
    429: ("rate_limit_error", "rate_limit_exceeded"),
}


def error_body(status: int, message: str) -> dict[str, Any]:
    """OpenAI's error shape for an HTTP status."""
    kind, code = _ERROR_TYPES.get(status, ("server_error", "server_error"))
    return {"error": {"message": message, "type": kind, "code": code, "param": None}}


def stream_error_event(error_type: str, message: str) -> str:
    """An in-band error after a 200: `data: {"error": {...}}`."""
    return _sse({"error": {"message": message, "type": error_type, "code": error_type}})


def parse_embedding_inputs(body: Any) -> tuple[str, list[str]]:
    """The model and the input texts of an embeddings request."""
    if not isinstance(body, dict) or not isinstance(body.get("model"), str):
        raise WireError(400, "'model' is required")
    raw = body.get("input")
    if isinstance(raw, str):
        return body["model"], [raw]
    if isinstance(raw, list) and raw:
        if all(isinstance(x, int) for x in raw):  # one pre-tokenised input
            return body["model"], [json.dumps(raw)]
        return body["model"], [x if isinstance(x, str) else json.dumps(x) for x in raw]
    raise WireError(400, "'input' must be a string or a non-empty list")


def embeddings_response(
    model: str, vectors: list[list[float]], tokens: int, encoding: str
) -> dict[str, Any]:
    """The embeddings list, floats or base64 little-endian float32 (the SDK's default)."""

    def encode(vec: list[float]) -> list[float] | str:
        if encoding == "base64":
            return base64.b64encode(struct.pack(f"<{len(vec)}f", *vec)).decode()
        return vec

    return {
        "object": "list",
        "model": model,
        "data": [
            {"object": "embedding", "index": i, "embedding": encode(v)}
            for i, v in enumerate(vectors)
        ],
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    }
