"""The OpenAI chat-completions and embeddings client (also any OpenAI-compatible server).

`base_url` follows the SDK's convention and includes the version: `https://api.openai.com/v1`.
Usage is normalised: input_tokens = prompt_tokens - cached_tokens.
"""

from __future__ import annotations

import base64
import json
import struct
from collections.abc import AsyncIterator
from contextlib import aclosing
from dataclasses import dataclass, field
from typing import Any

from actors.providers._http import (
    ClientBase,
    decode_data,
    parse_arguments,
    post_json,
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

_FINISH = {"stop": "stop", "tool_calls": "tool_calls", "function_call": "tool_calls"}


def to_wire_messages(messages: tuple[Message, ...]) -> list[dict[str, Any]]:
    """Our messages as chat-completions messages."""
    out: list[dict[str, Any]] = []
    for m in messages:
        if m.role == "tool":
            out.append({"role": "tool", "tool_call_id": m.tool_call_id or "", "content": m.content})
        elif m.role == "assistant" and m.tool_calls:
            out.append(
                {
                    "role": "assistant",
                    "content": m.content or None,
                    "tool_calls": [
                        {
                            "id": c.id,
                            "type": "function",
                            "function": {"name": c.name, "arguments": json.dumps(c.arguments)},
                        }
                        for c in m.tool_calls
                    ],
                }
            )
        else:
            out.append({"role": m.role, "content": m.content})
    return out


def request_body(request: ModelRequest) -> dict[str, Any]:
    """The streaming chat-completions body for a request."""
    body: dict[str, Any] = {
        "model": request.model,
        "messages": to_wire_messages(request.messages),
        "max_tokens": request.max_output_tokens,
        "temperature": request.temperature,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    if request.tools:
        body["tools"] = [
            {
                "type": "function",
                "function": {
                    "name": t.name,
                    "description": t.description,
                    "parameters": t.parameters,
                },
            }
            for t in request.tools
        ]
    return body


def normalise_usage(raw: Any) -> Usage:
    """OpenAI usage -> ours (prompt_tokens include the cached ones; ours do not)."""
    if not isinstance(raw, dict):
        return Usage()
    details = raw.get("prompt_tokens_details") or {}
    cached = int(details.get("cached_tokens") or 0) if isinstance(details, dict) else 0
    prompt = int(raw.get("prompt_tokens") or 0)
    return Usage(
        input_tokens=max(0, prompt - cached),
        cached_input_tokens=cached,
        output_tokens=int(raw.get("completion_tokens") or 0),
    )


@dataclass
class _PendingCall:
    id: str = ""
    name: str = ""
    arguments: list[str] = field(default_factory=list)


class OpenAIClient(ClientBase):
    """Streams chat completions and fetches embeddings over one shared httpx2 client."""

    def _auth(self, key: str) -> dict[str, str]:
        return {"authorization": f"Bearer {key}"}

    async def stream(
        self, request: ModelRequest, *, timeout_s: float, api_key: str | None = None
    ) -> AsyncIterator[StreamItem]:
        """Text deltas as they arrive, then exactly one ModelResponse. `api_key`, if given,
        replaces the client's own key for this call (a tenant's own key)."""
        key = api_key or self._api_key
        text: list[str] = []
        calls: dict[int, _PendingCall] = {}
        usage = Usage()
        finish = "stop"
        model = request.model
        done = False
        events = stream_events(
            self._http,
            f"{self.base_url}/chat/completions",
            provider=self.name,
            headers=self._headers(key),
            body=request_body(request),
            timeout_s=timeout_s,
            secret=key,
        )
        async with aclosing(events):
            async for event in events:
                if event.data.strip() == "[DONE]":
                    done = True
                    break
                data = decode_data(self.name, event)
                if "error" in data:
                    raise self._in_band_error(data["error"], key)
                model = str(data.get("model") or model)
                if data.get("usage"):
                    usage = normalise_usage(data["usage"])
                for choice in data.get("choices") or []:
                    delta = choice.get("delta") or {}
                    if delta.get("content"):
                        text.append(delta["content"])
                        yield TextDelta(text=delta["content"])
                    for tc in delta.get("tool_calls") or []:
                        pending = calls.setdefault(int(tc.get("index", 0)), _PendingCall())
                        pending.id = tc.get("id") or pending.id
                        fn = tc.get("function") or {}
                        pending.name = fn.get("name") or pending.name
                        if fn.get("arguments"):
                            pending.arguments.append(fn["arguments"])
                    if choice.get("finish_reason"):
                        finish = _FINISH.get(choice["finish_reason"], choice["finish_reason"])
        if not done:
            raise ProviderUnavailable(f"{self.name}: stream ended before [DONE]", self.name, 200)
        tool_calls = tuple(
            ToolCall(
                id=c.id,
                name=c.name,
                arguments=parse_arguments(self.name, c.name, "".join(c.arguments)),
            )
            for _, c in sorted(calls.items())
        )
        message = Message(role="assistant", content="".join(text), tool_calls=tool_calls)
        yield ModelResponse(message=message, usage=usage, model=model, finish_reason=finish)

    def _in_band_error(self, error: Any, key: str | None) -> ProviderUnavailable:
        detail = (
            error
            if not isinstance(error, dict)
            else (f"{error.get('type') or error.get('code')}: {error.get('message')}")
        )
        message = redact(f"{self.name}: error in stream: {detail}", key)
        return ProviderUnavailable(message, self.name)

    async def embed(
        self, model: str, inputs: list[str], *, timeout_s: float
    ) -> tuple[list[list[float]], Usage]:
        """One embedding per input, in order, and the usage of the call."""
        headers = self._headers()
        headers["accept"] = "application/json"
        reply = await post_json(
            self._http,
            f"{self.base_url}/embeddings",
            provider=self.name,
            headers=headers,
            body={"model": model, "input": inputs, "encoding_format": "float"},
            timeout_s=timeout_s,
            secret=self._api_key,
        )
        try:
            items = sorted(reply["data"], key=lambda d: int(d["index"]))
            vectors = [_decode_vector(d["embedding"]) for d in items]
        except (KeyError, TypeError, ValueError) as exc:
            raise ProviderUnavailable(
                f"{self.name}: malformed embeddings reply ({type(exc).__name__})", self.name, 200
            ) from None
        if len(vectors) != len(inputs):
            raise ProviderUnavailable(
                f"{self.name}: {len(vectors)} embeddings for {len(inputs)} inputs", self.name, 200
            )
        usage = Usage(input_tokens=int((reply.get("usage") or {}).get("prompt_tokens") or 0))
        return vectors, usage


def _decode_vector(raw: Any) -> list[float]:
    if isinstance(raw, str):  # base64 little-endian float32, if a server insists
        data = base64.b64decode(raw)
        return list(struct.unpack(f"<{len(data) // 4}f", data))
    return [float(x) for x in raw]
