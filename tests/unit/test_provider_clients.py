"""Our provider clients against the simulator: streaming, tools, usage, every failure mode."""

from __future__ import annotations

import email.utils
import socket
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx2
import pytest

from actors.providers import AnthropicClient, OpenAIClient
from actors.providers._http import parse_retry_after
from actors.providers._sse import SSEEvent, SSEParser
from agents.errors import ProviderRejected, ProviderUnavailable
from agents.messages import (
    Message,
    ModelRequest,
    ModelResponse,
    StreamItem,
    TextDelta,
    ToolCall,
    ToolSchema,
)
from tests.fixtures_sim import Sim

Client = OpenAIClient | AnthropicClient
KEY = "sk-secret-key-123"
TOOLS = (
    ToolSchema(
        name="lookup_order",
        description="Look up an order's status and delivery date by order id",
        parameters={
            "type": "object",
            "properties": {"order_id": {"type": "integer"}},
            "required": ["order_id"],
        },
    ),
    ToolSchema(
        name="issue_refund",
        description="Refund a payment to the customer",
        parameters={
            "type": "object",
            "properties": {"payment_id": {"type": "string"}, "reason": {"type": "string"}},
            "required": ["payment_id", "reason"],
        },
    ),
    ToolSchema(
        name="search_kb",
        description="Search the help articles",
        parameters={"type": "object", "properties": {"query": {"type": "string"}}},
    ),
)


@pytest.fixture
async def http() -> AsyncIterator[httpx2.AsyncClient]:
    async with httpx2.AsyncClient() as client:
        yield client


def _openai(sim: Sim, http: httpx2.AsyncClient) -> Client:
    return OpenAIClient("openai-sim", sim.openai_base_url, KEY, http)


def _anthropic(sim: Sim, http: httpx2.AsyncClient) -> Client:
    return AnthropicClient("anthropic-sim", sim.base_url, KEY, http)


MakeClient = Callable[[Sim, httpx2.AsyncClient], Client]
both = pytest.mark.parametrize("make", [_openai, _anthropic], ids=["openai", "anthropic"])


def _request(text: str = "hello", **kw: Any) -> ModelRequest:
    messages = (Message(role="system", content="You help."), Message(role="user", content=text))
    return ModelRequest(model=kw.pop("model", "sim"), messages=messages, **kw)


async def _collect(
    client: Client, request: ModelRequest, timeout_s: float = 5.0
) -> tuple[list[TextDelta], ModelResponse]:
    items: list[StreamItem] = [i async for i in client.stream(request, timeout_s=timeout_s)]
    responses = [i for i in items if isinstance(i, ModelResponse)]
    assert len(responses) == 1 and items[-1] is responses[0]
    return [i for i in items if isinstance(i, TextDelta)], responses[0]


@both
async def test_streams_text_then_one_response(
    sim: Sim, http: httpx2.AsyncClient, make: MakeClient
) -> None:
    sim.script({"type": "text", "text": "one two three four five six seven eight"})
    deltas, response = await _collect(make(sim, http), _request())
    assert len(deltas) >= 3
    assert "".join(d.text for d in deltas) == response.message.content
    assert response.message.content == "one two three four five six seven eight"
    assert response.message.role == "assistant" and response.finish_reason == "stop"
    usage = response.usage  # "You help." = 3 tokens (cache-written on Anthropic), "hello" = 2
    assert usage.input_tokens + usage.cache_write_tokens == 3 + 2 and usage.output_tokens == 10
    assert response.model == "sim"


@both
async def test_policy_calls_lookup_order_then_answers(
    sim: Sim, http: httpx2.AsyncClient, make: MakeClient
) -> None:
    client = make(sim, http)
    first = _request("Where is order 1234?", tools=TOOLS)
    _, response = await _collect(client, first)
    assert response.finish_reason == "tool_calls"
    [call] = response.message.tool_calls
    assert call.name == "lookup_order" and call.arguments == {"order_id": 1234}
    assert call.id

    result = Message(role="tool", tool_call_id=call.id, content='{"status": "shipped"}')
    second = first.model_copy(update={"messages": (*first.messages, response.message, result)})
    deltas, answer = await _collect(client, second)
    assert answer.finish_reason == "stop" and not answer.message.tool_calls
    assert "shipped" in answer.message.content and len(deltas) > 1
    assert len(sim.requests()) == 2


@both
async def test_scripted_tool_call_with_text(
    sim: Sim, http: httpx2.AsyncClient, make: MakeClient
) -> None:
    args = {"query": "refund policy for damaged items", "limit": 3, "tags": ["a", "b"]}
    sim.script(
        {"type": "tool_call", "name": "search_kb", "arguments": args, "text": "Let me look."}
    )
    deltas, response = await _collect(make(sim, http), _request(tools=TOOLS))
    assert response.message.content == "Let me look."
    assert response.message.tool_calls[0].arguments == args
    assert "".join(d.text for d in deltas) == "Let me look."


async def test_openai_wire_translation_and_usage(sim: Sim, http: httpx2.AsyncClient) -> None:
    client = _openai(sim, http)
    call = ToolCall(id="call_1", name="lookup_order", arguments={"order_id": 7})
    messages = (
        Message(role="system", content="You are careful. " * 300),
        Message(role="user", content="order 7?"),
        Message(role="assistant", tool_calls=(call,)),
        Message(role="tool", tool_call_id="call_1", content="shipped"),
    )
    request = ModelRequest(model="gpt-sim", messages=messages, tools=TOOLS)
    _, first = await _collect(client, request)
    _, second = await _collect(client, request)
    assert first.usage.cached_input_tokens == 0
    prefix = second.usage.cached_input_tokens
    assert prefix > 1024
    assert second.usage.input_tokens == first.usage.input_tokens - prefix
    body = sim.requests()[0]["body"]
    assert body["stream"] is True and body["stream_options"] == {"include_usage": True}
    assert body["messages"][2]["tool_calls"][0]["function"] == {
        "name": "lookup_order",
        "arguments": '{"order_id": 7}',
    }
    assert body["messages"][3] == {"role": "tool", "tool_call_id": "call_1", "content": "shipped"}
    assert body["tools"][0]["function"]["name"] == "lookup_order"
    assert sim.requests()[0]["auth"] is True


async def test_anthropic_wire_translation_and_cache(sim: Sim, http: httpx2.AsyncClient) -> None:
    client = _anthropic(sim, http)
    call = ToolCall(id="toolu_1", name="lookup_order", arguments={"order_id": 7})
    messages = (
        Message(role="system", content="You are careful. " * 30),
        Message(role="user", content="order 7?"),
        Message(role="assistant", content="Checking.", tool_calls=(call,)),
        Message(role="tool", tool_call_id="toolu_1", content="shipped"),
    )
    request = ModelRequest(model="claude-sim", messages=messages, tools=TOOLS)
    _, first = await _collect(client, request)
    _, second = await _collect(client, request)
    assert first.usage.cache_write_tokens > 0 and first.usage.cached_input_tokens == 0
    assert second.usage.cached_input_tokens == first.usage.cache_write_tokens
    assert second.usage.cache_write_tokens == 0
    assert second.usage.input_tokens == first.usage.input_tokens
    recorded = sim.requests()[0]
    body = recorded["body"]
    assert recorded["headers"]["anthropic-version"] == "2023-06-01" and recorded["auth"]
    assert body["system"][-1]["cache_control"] == {"type": "ephemeral"}
    assert [m["role"] for m in body["messages"]] == ["user", "assistant", "user"]
    assert body["messages"][1]["content"][1] == {
        "type": "tool_use",
        "id": "toolu_1",
        "name": "lookup_order",
        "input": {"order_id": 7},
    }
    assert body["messages"][2]["content"][0]["type"] == "tool_result"
    assert body["tools"][0]["input_schema"]["required"] == ["order_id"]


@both
async def test_429_is_unavailable_with_retry_after_and_no_retry(
    sim: Sim, http: httpx2.AsyncClient, make: MakeClient
) -> None:
    sim.script({"type": "status", "status": 429, "retry_after_s": 2, "message": "slow down"})
    with pytest.raises(ProviderUnavailable) as info:
        await _collect(make(sim, http), _request())
    assert info.value.status_code == 429 and info.value.retry_after_s == 2.0
    assert "slow down" in str(info.value) and info.value.provider.endswith("-sim")
    assert len(sim.requests()) == 1


@both
@pytest.mark.parametrize("status", [408, 409, 500, 503, 529])
async def test_retryable_statuses_are_unavailable(
    sim: Sim, http: httpx2.AsyncClient, make: MakeClient, status: int
) -> None:
    sim.script({"type": "status", "status": status})
    with pytest.raises(ProviderUnavailable) as info:
        await _collect(make(sim, http), _request())
    assert info.value.status_code == status and len(sim.requests()) == 1


@both
async def test_400_is_rejected_and_key_never_leaks(
    sim: Sim, http: httpx2.AsyncClient, make: MakeClient
) -> None:
    sim.script({"type": "status", "status": 400, "message": f"bad request with key {KEY}"})
    with pytest.raises(ProviderRejected) as info:
        await _collect(make(sim, http), _request())
    assert info.value.status_code == 400
    assert KEY not in str(info.value) and KEY not in repr(info.value.args)
    assert "bad request" in str(info.value)
    assert len(sim.requests()) == 1


@both
async def test_dropped_stream_is_unavailable(
    sim: Sim, http: httpx2.AsyncClient, make: MakeClient
) -> None:
    sim.script({"type": "drop", "after_chunks": 3})
    with pytest.raises(ProviderUnavailable):
        await _collect(make(sim, http), _request())
    assert len(sim.requests()) == 1


@both
async def test_in_band_error_is_unavailable(
    sim: Sim, http: httpx2.AsyncClient, make: MakeClient
) -> None:
    sim.script({"type": "stream_error", "after_chunks": 2, "error_type": "overloaded_error"})
    with pytest.raises(ProviderUnavailable, match="overloaded_error"):
        await _collect(make(sim, http), _request())


@both
async def test_delay_beyond_timeout_is_unavailable(
    sim: Sim, http: httpx2.AsyncClient, make: MakeClient
) -> None:
    sim.script({"type": "text", "text": "too late", "delay_ms": 5000})
    started = time.monotonic()
    with pytest.raises(ProviderUnavailable, match="no answer within"):
        await _collect(make(sim, http), _request(), timeout_s=0.2)
    assert time.monotonic() - started < 1.5
    assert len(sim.requests()) == 1


@both
async def test_connection_refused_is_unavailable(
    http: httpx2.AsyncClient, make: MakeClient
) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    closed = AnthropicClient if make is _anthropic else OpenAIClient
    client = closed("dead", f"http://127.0.0.1:{port}", KEY, http)
    with pytest.raises(ProviderUnavailable, match="connection failed") as info:
        await _collect(client, _request())
    assert KEY not in str(info.value)


async def test_embeddings(sim: Sim, http: httpx2.AsyncClient) -> None:
    client = OpenAIClient("openai-sim", sim.openai_base_url, KEY, http)
    vectors, usage = await client.embed("emb", ["alpha", "beta", "alpha"], timeout_s=5)
    assert len(vectors) == 3 and all(len(v) == 64 for v in vectors)
    assert vectors[0] == vectors[2] and vectors[0] != vectors[1]
    assert usage.input_tokens == 2 + 1 + 2
    sim.script({"type": "status", "status": 429, "retry_after_s": 1, "endpoint": "embeddings"})
    with pytest.raises(ProviderUnavailable) as info:
        await client.embed("emb", ["x"], timeout_s=5)
    assert info.value.retry_after_s == 1.0
    assert len(sim.requests()) == 2


def test_retry_after_parsing() -> None:
    assert parse_retry_after({"retry-after": "7"}) == 7.0
    assert parse_retry_after({"retry-after": "1.5"}) == 1.5
    assert parse_retry_after({"retry-after-ms": "250", "retry-after": "9"}) == 0.25
    now = 1_700_000_000.0
    date = email.utils.formatdate(now + 30, usegmt=True)
    assert parse_retry_after({"retry-after": date}, now=now) == pytest.approx(30.0)
    assert parse_retry_after({"retry-after": "soon"}) is None
    assert parse_retry_after({}) is None


def test_sse_parser() -> None:
    parser = SSEParser()
    lines = [": comment", "event: message_start", 'data: {"a":', "data: 1}", "", "data: x", ""]
    events = [e for line in lines if (e := parser.feed(line)) is not None]
    assert events == [SSEEvent("message_start", '{"a":\n1}'), SSEEvent("message", "x")]
    assert parser.feed("data: cut off") is None  # never dispatched without a blank line


def test_anthropic_without_a_system_prompt_marks_the_tools_as_the_cached_prefix() -> None:
    from actors.providers.anthropic import request_body

    request = ModelRequest(
        model="claude-sim", messages=(Message(role="user", content="hi"),), tools=TOOLS
    )
    body = request_body(request)
    assert body["tools"][-1]["cache_control"] == {"type": "ephemeral"}
    assert "system" not in body
    with_system = request.model_copy(
        update={"messages": (Message(role="system", content="s"), *request.messages)}
    )
    body = request_body(with_system)  # the system block closes the prefix: tools unmarked
    assert "cache_control" not in body["tools"][-1]
    assert body["system"][-1]["cache_control"] == {"type": "ephemeral"}
