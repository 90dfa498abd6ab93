"""The simulator's HTTP app: OpenAI and Anthropic wire formats on one port, plus `/_sim/*`.

Routes:
    POST /v1/chat/completions   OpenAI chat completions (streaming or not)
    POST /v1/embeddings         OpenAI embeddings (deterministic unit vectors)
    GET  /v1/models             a model list both SDKs can parse
    POST /v1/messages           Anthropic messages (streaming or not)
    /_sim/*                     scripted replies, the request log, random faults, reset
                                (see serve_app.simulator.control); only with control_api

What answers a model request: the first matching scripted reply; else, when random fault
injection is on, maybe a fault (serve_app.simulator.faults); else the policy.

Latency: `ttft_ms` (or the `x-sim-ttft-ms` request header) before the first byte of a
non-streaming reply or the first chunk of a stream; `tokens_per_s` paces later chunks; a
scripted `delay_ms` comes before the response headers (a long one = a hanging provider).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator
from typing import Any, Literal

import uvicorn
from pydantic import BaseModel, ConfigDict, Field
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from serve_app.simulator import anthropic_wire, openai_wire
from serve_app.simulator.control import CONTROL_ROUTES, SimState, read_json, sim_state
from serve_app.simulator.policy import (
    Completion,
    Conversation,
    SimToolCall,
    SimUsage,
    WireError,
    embed_text,
    estimate_tokens,
    policy_completion,
    short_hash,
)
from serve_app.simulator.script import (
    DropReply,
    Reply,
    StatusReply,
    StreamErrorReply,
    TextReply,
    ToolCallReply,
    UsageOverride,
)

Wire = Literal["openai", "anthropic"]
_RECORDED_HEADERS = ("anthropic-version", "x-sim-ttft-ms", "content-type")


class SimSettings(BaseModel):
    """How the simulated providers behave by default."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    ttft_ms: float = Field(default=20.0, ge=0)
    """Time to first token (or to a non-streaming reply); header `x-sim-ttft-ms` overrides."""
    tokens_per_s: float = Field(default=0.0, ge=0)
    """Pace of streamed chunks after the first; 0 = no pacing."""
    embedding_dim: int = Field(default=64, ge=1)
    """Length of every embedding vector."""
    control_api: bool = False
    """Serve `/_sim/*` (scripted replies, the request log, faults, reset) and keep the log.
    Off (404, nothing logged) unless a test or a local experiment turns it on: the log holds
    every caller's prompts, and a script changes what every caller's next reply is."""


class DroppedConnection(Exception):
    """Raised inside a response body to make the server cut the connection mid-reply."""


class _DropFilter(logging.Filter):
    """Keeps uvicorn from logging our deliberate connection drops as application errors."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        return not _contains_drop(exc)


def _contains_drop(exc: BaseException | None) -> bool:
    if exc is None:
        return False
    if isinstance(exc, DroppedConnection):
        return True
    if isinstance(exc, BaseExceptionGroup):
        return any(_contains_drop(e) for e in exc.exceptions)
    return _contains_drop(exc.__cause__ or exc.__context__)


def install_log_filter() -> None:
    """Silence deliberate drops in uvicorn's error log (idempotent)."""
    logger = logging.getLogger("uvicorn.error")
    if not any(isinstance(f, _DropFilter) for f in logger.filters):
        logger.addFilter(_DropFilter())


def _record(request: Request, body: Any) -> dict[str, Any]:
    model = body.get("model") if isinstance(body, dict) else None
    headers = {h: request.headers[h] for h in _RECORDED_HEADERS if h in request.headers}
    auth = "authorization" in request.headers or "x-api-key" in request.headers
    log = sim_state(request).log
    return log.record(request.url.path, str(model or ""), body, auth=auth, headers=headers)


def _next_reply(
    state: SimState, model: str, endpoint: Literal["chat", "embeddings"], entry: dict[str, Any]
) -> Reply | None:
    """The scripted reply for this request; else maybe a random fault (noted in the log)."""
    reply = state.queue.take(model, endpoint)
    if reply is None and state.faults is not None:
        fault = state.faults.draw(endpoint)
        if fault is not None:
            entry["fault"] = fault.kind
            reply = fault.reply
    return reply


def _error(wire: Wire, status: int, message: str, retry_after_s: float | None = None) -> Response:
    body = (openai_wire if wire == "openai" else anthropic_wire).error_body(status, message)
    headers = {}
    if retry_after_s is not None:
        seconds = int(retry_after_s) if float(retry_after_s).is_integer() else retry_after_s
        headers["retry-after"] = str(seconds)
    return JSONResponse(body, status_code=status, headers=headers)


def _ttft_s(request: Request) -> float:
    raw = request.headers.get("x-sim-ttft-ms")
    try:
        return float(raw) / 1000 if raw is not None else sim_state(request).settings.ttft_ms / 1000
    except ValueError:
        return sim_state(request).settings.ttft_ms / 1000


def _apply_override(usage: SimUsage, override: UsageOverride | None) -> SimUsage:
    if override is None:
        return usage
    return SimUsage(
        input_tokens=_pick(override.input_tokens, usage.input_tokens),
        cached_tokens=_pick(override.cached_tokens, usage.cached_tokens),
        cache_write_tokens=_pick(override.cache_write_tokens, usage.cache_write_tokens),
        output_tokens=_pick(override.output_tokens, usage.output_tokens),
    )


def _pick(override: int | None, default: int) -> int:
    return default if override is None else override


async def _paced(
    chunks: list[tuple[str, int]], ttft_s: float, tokens_per_s: float, drop_after: int | None
) -> AsyncIterator[bytes]:
    if ttft_s > 0:
        await asyncio.sleep(ttft_s)
    for i, (data, tokens) in enumerate(chunks):
        if drop_after is not None and i >= drop_after:
            raise DroppedConnection(f"simulated drop after {drop_after} chunks")
        if i and tokens_per_s > 0 and tokens:
            await asyncio.sleep(tokens / tokens_per_s)
        yield data.encode()


def _cut_body(payload: bytes) -> Response:
    """A response announcing the whole body that sends half of it, then drops."""

    async def half() -> AsyncIterator[bytes]:
        yield payload[: len(payload) // 2]
        raise DroppedConnection("simulated drop of a non-streaming reply")

    return StreamingResponse(
        half(), media_type="application/json", headers={"content-length": str(len(payload))}
    )


def _completion(
    reply: object, conv: Conversation, key: str, wire: Wire, input_usage: SimUsage
) -> Completion:
    prefix = "call_" if wire == "openai" else "toolu_"
    if isinstance(reply, TextReply):
        completion = Completion(text=reply.text)
    elif isinstance(reply, ToolCallReply):
        scripted = [(reply.id, reply.name, reply.arguments)]
        scripted += [(c.id, c.name, c.arguments) for c in reply.more]
        tool_calls = []
        for i, (call_id, name, arguments) in enumerate(scripted):
            # Like a provider's, an id is new for every request (the key) and call.
            parts = (key, name) if i == 0 else (key, name, i)
            if call_id is None:  # scripted "" stays empty: some providers send that
                call_id = f"{prefix}{short_hash(*parts, n=20)}"
            tool_calls.append(SimToolCall(call_id, name, arguments))
        completion = Completion(text=reply.text, tool_calls=tool_calls)
    else:
        completion = policy_completion(conv, key, id_prefix=prefix)
    input_usage.output_tokens = completion.output_tokens()
    override = getattr(reply, "usage", None)
    completion.usage = _apply_override(input_usage, override)
    return completion


async def _model_call(request: Request, wire: Wire) -> Response:
    state = sim_state(request)
    try:
        body = await read_json(request)
    except WireError as err:
        _record(request, None)
        return _error(wire, err.status, err.message)
    entry = _record(request, body)
    try:
        if wire == "openai":
            conv = openai_wire.parse_chat(body)
        else:
            conv, blocks = anthropic_wire.parse_messages(body)
    except WireError as err:
        return _error(wire, err.status, err.message)

    reply = _next_reply(state, conv.model, "chat", entry)
    if reply is not None and reply.delay_ms > 0:
        await asyncio.sleep(reply.delay_ms / 1000)
    if isinstance(reply, StatusReply):
        return _error(wire, reply.status, reply.message, reply.retry_after_s)

    key = short_hash(body, state.log.total)
    if wire == "openai":
        usage = openai_wire.input_usage(conv, state.cache)
    else:
        usage = anthropic_wire.input_usage(conv.model, blocks, state.cache)
    completion = _completion(reply, conv, key, wire, usage)
    ttft_s = _ttft_s(request)
    created = int(time.time())
    response_id = ("chatcmpl-" if wire == "openai" else "msg_") + key

    if not body.get("stream"):
        await asyncio.sleep(ttft_s)
        if isinstance(reply, StreamErrorReply):
            return _error(wire, 529 if wire == "anthropic" else 503, reply.message)
        if wire == "openai":
            payload = openai_wire.chat_response(completion, conv.model, response_id, created)
        else:
            payload = anthropic_wire.message_response(completion, conv.model, response_id)
        if isinstance(reply, DropReply):
            return _cut_body(json.dumps(payload).encode())
        return JSONResponse(payload)

    if wire == "openai":
        options = body.get("stream_options") or {}
        include_usage = isinstance(options, dict) and options.get("include_usage") is True
        chunks = openai_wire.chat_stream(
            completion, conv.model, response_id, created, include_usage=include_usage
        )
    else:
        chunks = anthropic_wire.message_stream(completion, conv.model, response_id)
    # A cut point past the end still cuts before the last chunk: the reply never completes.
    if isinstance(reply, StreamErrorReply):
        wire_module = openai_wire if wire == "openai" else anthropic_wire
        error_event = wire_module.stream_error_event(reply.error_type, reply.message)
        chunks = [*chunks[: min(reply.after_chunks, len(chunks) - 1)], (error_event, 0)]
    drop_after = min(reply.after_chunks, len(chunks) - 1) if isinstance(reply, DropReply) else None
    return StreamingResponse(
        _paced(chunks, ttft_s, state.settings.tokens_per_s, drop_after),
        media_type="text/event-stream",
        headers={"cache-control": "no-cache"},
    )


async def chat_completions(request: Request) -> Response:
    return await _model_call(request, "openai")


async def messages(request: Request) -> Response:
    return await _model_call(request, "anthropic")


async def embeddings(request: Request) -> Response:
    state = sim_state(request)
    entry: dict[str, Any] = {}
    try:
        body = await read_json(request)
        entry = _record(request, body)
        model, inputs = openai_wire.parse_embedding_inputs(body)
    except WireError as err:
        return _error("openai", err.status, err.message)
    reply = _next_reply(state, model, "embeddings", entry)
    if reply is not None and reply.delay_ms > 0:
        await asyncio.sleep(reply.delay_ms / 1000)
    if isinstance(reply, StatusReply):
        return _error("openai", reply.status, reply.message, reply.retry_after_s)
    await asyncio.sleep(_ttft_s(request))
    if isinstance(reply, StreamErrorReply):
        return _error("openai", 503, reply.message)
    tokens = sum(estimate_tokens(text) for text in inputs)
    if reply is not None and reply.usage is not None and reply.usage.input_tokens is not None:
        tokens = reply.usage.input_tokens
    vectors = [embed_text(text, state.settings.embedding_dim) for text in inputs]
    encoding = str(body.get("encoding_format") or "float")
    payload = openai_wire.embeddings_response(model, vectors, tokens, encoding)
    if isinstance(reply, DropReply):
        return _cut_body(json.dumps(payload).encode())
    return JSONResponse(payload)


async def list_models(request: Request) -> Response:
    """A list both SDKs accept: OpenAI's fields and Anthropic's side by side."""
    ids = ["sim-fast", "sim-strong"]
    data = [
        {
            "id": i,
            "object": "model",
            "type": "model",
            "created": 0,
            "created_at": "2025-01-01T00:00:00Z",
            "display_name": i,
            "owned_by": "rayfleet-simulator",
        }
        for i in ids
    ]
    return JSONResponse(
        {"object": "list", "data": data, "has_more": False, "first_id": ids[0], "last_id": ids[-1]}
    )


def build_simulator_app(settings: SimSettings | None = None) -> Starlette:
    """The simulator as a Starlette app (both wire formats on one port)."""
    app = Starlette(
        routes=[
            Route("/v1/chat/completions", chat_completions, methods=["POST"]),
            Route("/v1/embeddings", embeddings, methods=["POST"]),
            Route("/v1/models", list_models, methods=["GET"]),
            Route("/v1/messages", messages, methods=["POST"]),
            *(CONTROL_ROUTES if settings and settings.control_api else []),
        ]
    )
    app.state.sim = SimState(settings or SimSettings())
    return app


def run_simulator(
    host: str = "127.0.0.1", port: int = 8100, settings: SimSettings | None = None
) -> None:
    """Serve the simulator with uvicorn until interrupted (blocking)."""
    install_log_filter()
    uvicorn.run(build_simulator_app(settings), host=host, port=port, log_level="info")
