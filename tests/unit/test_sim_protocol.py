"""The official SDKs against the simulator: proof that it speaks the real wire protocols."""

from __future__ import annotations

import json
import math
from typing import Any

import anthropic
import httpx2
import openai
import pytest

from tests.fixtures_sim import Sim

LOOKUP_ORDER = {
    "name": "lookup_order",
    "description": "Look up an order's status by its id",
    "parameters": {
        "type": "object",
        "properties": {"order_id": {"type": "integer"}},
        "required": ["order_id"],
    },
}
LONG_SYSTEM = "You are a careful support agent. " * 200  # ~1600 estimated tokens


def _oa(sim: Sim) -> openai.OpenAI:
    return openai.OpenAI(base_url=sim.openai_base_url, api_key="sk-test", max_retries=0)


def _an(sim: Sim) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=sim.base_url, api_key="sk-ant-test", max_retries=0)


def _oa_tools() -> list[Any]:
    return [{"type": "function", "function": LOOKUP_ORDER}]


def _an_tools() -> list[Any]:
    tool = dict(LOOKUP_ORDER)
    return [
        {
            "name": tool["name"],
            "description": tool["description"],
            "input_schema": tool["parameters"],
        }
    ]


# --- OpenAI -----------------------------------------------------------------------------


def test_openai_plain(sim: Sim) -> None:
    sim.script({"type": "text", "text": "Hello there, friend."})
    with _oa(sim) as client:
        r = client.chat.completions.create(
            model="gpt-sim", messages=[{"role": "user", "content": "hi"}]
        )
    assert r.choices[0].message.content == "Hello there, friend."
    assert r.choices[0].finish_reason == "stop"
    assert r.usage is not None and r.usage.prompt_tokens == 1  # ceil(len("hi") / 4)
    assert r.usage.completion_tokens == 5
    assert r.usage.total_tokens == 6


def test_openai_streaming_text_and_usage(sim: Sim) -> None:
    sim.script({"type": "text", "text": "one two three four five six seven eight nine ten"})
    with _oa(sim) as client:
        chunks = list(
            client.chat.completions.create(
                model="gpt-sim",
                messages=[{"role": "user", "content": "count"}],
                stream=True,
                stream_options={"include_usage": True},
            )
        )
    pieces = [
        c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content
    ]
    assert len(pieces) >= 3
    assert "".join(pieces) == "one two three four five six seven eight nine ten"
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert finishes[-1] == "stop"
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens > 0


def test_openai_stream_without_include_usage_has_no_usage_chunk(sim: Sim) -> None:
    with _oa(sim) as client:
        chunks = list(
            client.chat.completions.create(
                model="gpt-sim", messages=[{"role": "user", "content": "hi"}], stream=True
            )
        )
    assert all(c.usage is None for c in chunks)


def test_openai_streaming_tool_call_arguments_reassemble(sim: Sim) -> None:
    args = {"order_id": 1234, "note": "please hurry, it is a gift for my grandmother"}
    sim.script({"type": "tool_call", "name": "lookup_order", "arguments": args})
    fragments: list[str] = []
    names: list[str] = []
    with _oa(sim) as client:
        stream = client.chat.completions.create(
            model="gpt-sim",
            messages=[{"role": "user", "content": "Where is order 1234?"}],
            tools=_oa_tools(),
            stream=True,
        )
        finish = None
        for chunk in stream:
            for choice in chunk.choices:
                finish = choice.finish_reason or finish
                for tc in choice.delta.tool_calls or []:
                    assert tc.index == 0
                    if tc.function and tc.function.name:
                        names.append(tc.function.name)
                    if tc.function and tc.function.arguments:
                        fragments.append(tc.function.arguments)
    assert names == ["lookup_order"]
    assert len(fragments) > 2
    assert json.loads("".join(fragments)) == args
    assert finish == "tool_calls"


def test_a_scripted_reply_can_make_several_calls_with_given_or_fresh_ids(sim: Sim) -> None:
    more = [{"name": "lookup_order", "arguments": {"order_id": 2}, "id": ""}]
    reply = {"type": "tool_call", "name": "lookup_order", "arguments": {"order_id": 1}}
    sim.script({**reply, "more": more}, {**reply, "more": more})
    ids = []
    with _oa(sim) as client:
        for _ in range(2):
            r = client.chat.completions.create(
                model="gpt-sim",
                messages=[{"role": "user", "content": "Where are orders 1 and 2?"}],
                tools=_oa_tools(),
            )
            calls = r.choices[0].message.tool_calls or []
            assert [json.loads(c.function.arguments) for c in calls] == [  # type: ignore[union-attr]
                {"order_id": 1},
                {"order_id": 2},
            ]
            ids.append([c.id for c in calls])
    # Unscripted ids are fresh per request, as a provider's are; an empty one stays empty.
    assert ids[0][0] != ids[1][0] and ids[0][0] and ids[0][1] == ids[1][1] == ""


def test_openai_policy_calls_the_matching_tool(sim: Sim) -> None:
    tools = [
        {"type": "function", "function": {"name": "search_kb", "description": "Search articles"}},
        *_oa_tools(),
    ]
    with _oa(sim) as client:
        r = client.chat.completions.create(
            model="gpt-sim",
            messages=[{"role": "user", "content": "Where is order 1234?"}],
            tools=tools,
        )
    call = r.choices[0].message.tool_calls[0]  # type: ignore[index]
    assert call.function.name == "lookup_order"  # type: ignore[union-attr]
    assert json.loads(call.function.arguments) == {"order_id": 1234}  # type: ignore[union-attr]
    assert r.choices[0].finish_reason == "tool_calls"


def test_openai_automatic_prompt_caching(sim: Sim) -> None:
    messages: list[Any] = [
        {"role": "system", "content": LONG_SYSTEM},
        {"role": "user", "content": "hi"},
    ]
    with _oa(sim) as client:
        first = client.chat.completions.create(model="gpt-sim", messages=messages)
        second = client.chat.completions.create(model="gpt-sim", messages=messages)
    assert first.usage and first.usage.prompt_tokens_details
    assert first.usage.prompt_tokens_details.cached_tokens == 0
    assert second.usage and second.usage.prompt_tokens_details
    cached = second.usage.prompt_tokens_details.cached_tokens
    assert cached == math.ceil(len(LONG_SYSTEM) / 4)
    assert second.usage.prompt_tokens == first.usage.prompt_tokens


def test_openai_embeddings(sim: Sim) -> None:
    with _oa(sim) as client:
        batch = client.embeddings.create(model="emb-sim", input=["alpha", "beta"])
        single = client.embeddings.create(model="emb-sim", input="alpha", encoding_format="float")
    assert [d.index for d in batch.data] == [0, 1]
    vec = batch.data[0].embedding
    assert len(vec) == 64
    assert math.isclose(math.sqrt(sum(v * v for v in vec)), 1.0, rel_tol=1e-5)
    assert single.data[0].embedding == pytest.approx(vec, abs=1e-6)
    assert batch.data[1].embedding != pytest.approx(vec, abs=1e-6)
    assert batch.usage.prompt_tokens == 2 + 1  # ceil(5 / 4) + ceil(4 / 4)


def test_openai_scripted_429_is_rate_limit_error(sim: Sim) -> None:
    sim.script({"type": "status", "status": 429, "retry_after_s": 2, "message": "slow down"})
    with _oa(sim) as client, pytest.raises(openai.RateLimitError) as info:
        client.chat.completions.create(model="gpt-sim", messages=[{"role": "user", "content": "x"}])
    assert info.value.response.headers["retry-after"] == "2"
    assert "slow down" in str(info.value)
    assert len(sim.requests()) == 1


def test_openai_in_band_stream_error(sim: Sim) -> None:
    sim.script({"type": "stream_error", "after_chunks": 2, "error_type": "server_error"})
    with _oa(sim) as client, pytest.raises(openai.APIError, match="in-band"):
        for _ in client.chat.completions.create(
            model="gpt-sim", messages=[{"role": "user", "content": "x"}], stream=True
        ):
            pass


def test_openai_models_and_auth_not_recorded(sim: Sim) -> None:
    with _oa(sim) as client:
        ids = [m.id for m in client.models.list()]
        client.chat.completions.create(model="gpt-sim", messages=[{"role": "user", "content": "x"}])
    assert ids
    [recorded] = sim.requests()
    assert recorded["path"] == "/v1/chat/completions" and recorded["auth"] is True
    assert "sk-test" not in json.dumps(recorded)


def test_policy_steps_directive(sim: Sim) -> None:
    history: list[Any] = [{"role": "user", "content": "steps=3 where is order 77"}]
    finishes = []
    with _oa(sim) as client:
        for _ in range(3):
            r = client.chat.completions.create(model="m", messages=history, tools=_oa_tools())
            message = r.choices[0].message
            finishes.append(r.choices[0].finish_reason)
            if not message.tool_calls:
                break
            call = message.tool_calls[0]
            history.append(message.model_dump(exclude_none=True))
            history.append({"role": "tool", "tool_call_id": call.id, "content": "shipped"})
    assert finishes == ["tool_calls", "tool_calls", "stop"]
    assert "shipped" in (r.choices[0].message.content or "")


def test_scripted_reply_waits_for_its_model(sim: Sim) -> None:
    sim.script({"type": "text", "text": "for b", "model": "b"})
    with _oa(sim) as client:
        a = client.chat.completions.create(model="a", messages=[{"role": "user", "content": "x"}])
        assert sim.pending() == 1
        b = client.chat.completions.create(model="b", messages=[{"role": "user", "content": "x"}])
    assert a.choices[0].message.content != "for b"
    assert b.choices[0].message.content == "for b"


# --- Anthropic --------------------------------------------------------------------------


def test_anthropic_plain_with_system(sim: Sim) -> None:
    with _an(sim) as client:
        m = client.messages.create(
            model="claude-sim",
            max_tokens=100,
            system="Be brief.",
            messages=[{"role": "user", "content": "hello world"}],
        )
    assert m.stop_reason == "end_turn"
    assert m.content[0].type == "text" and "hello world" in m.content[0].text
    assert m.usage.input_tokens == 3 + 3  # "Be brief." + "hello world"
    assert sim.requests()[0]["headers"]["anthropic-version"]


def test_anthropic_stream_events_in_order(sim: Sim) -> None:
    sim.script({"type": "text", "text": "alpha beta gamma delta epsilon zeta eta"})
    with _an(sim) as client:
        events = list(
            client.messages.create(
                model="claude-sim",
                max_tokens=100,
                messages=[{"role": "user", "content": "go"}],
                stream=True,
            )
        )
    kinds = [e.type for e in events]
    assert kinds[0] == "message_start" and kinds[1] == "content_block_start"
    assert kinds[-3:] == ["content_block_stop", "message_delta", "message_stop"]
    deltas = [e for e in events if e.type == "content_block_delta"]
    assert len(deltas) >= 3 and set(kinds[2:-3]) == {"content_block_delta"}
    assert "".join(d.delta.text for d in deltas) == "alpha beta gamma delta epsilon zeta eta"  # type: ignore[union-attr]
    assert events[-2].delta.stop_reason == "end_turn"  # type: ignore[union-attr]
    assert events[-2].usage.output_tokens > 0  # type: ignore[union-attr]


def test_anthropic_raw_stream_has_ping(sim: Sim) -> None:
    body = {
        "model": "c",
        "max_tokens": 10,
        "stream": True,
        "messages": [{"role": "user", "content": "x"}],
    }
    r = httpx2.post(f"{sim.base_url}/v1/messages", json=body)
    names = [line.split(": ", 1)[1] for line in r.text.splitlines() if line.startswith("event:")]
    assert names[:2] == ["message_start", "ping"] and names[-1] == "message_stop"


def test_anthropic_streaming_tool_use(sim: Sim) -> None:
    with (
        _an(sim) as client,
        client.messages.stream(
            model="claude-sim",
            max_tokens=100,
            messages=[{"role": "user", "content": "Where is order 1234?"}],
            tools=_an_tools(),
        ) as stream,
    ):
        partials = [e for e in stream if e.type == "input_json"]
        final = stream.get_final_message()
    assert len(partials) > 1
    assert final.stop_reason == "tool_use"
    [block] = final.content
    assert block.type == "tool_use" and block.name == "lookup_order"
    assert block.input == {"order_id": 1234}
    assert block.id.startswith("toolu_")


def test_anthropic_cache_control(sim: Sim) -> None:
    system: list[Any] = [
        {"type": "text", "text": "x" * 400, "cache_control": {"type": "ephemeral"}}
    ]
    with _an(sim) as client:
        runs = [
            client.messages.create(
                model="claude-sim",
                max_tokens=50,
                system=system,
                messages=[{"role": "user", "content": question}],
            )
            for question in ("first question", "second one")
        ]
    first, second = (r.usage for r in runs)
    assert first.cache_creation_input_tokens == 100 and first.cache_read_input_tokens == 0
    assert second.cache_read_input_tokens == 100 and second.cache_creation_input_tokens == 0
    assert second.input_tokens == 3  # "second one": only what follows the breakpoint


def test_anthropic_scripted_429(sim: Sim) -> None:
    sim.script({"type": "status", "status": 429, "retry_after_s": 3})
    with _an(sim) as client, pytest.raises(anthropic.RateLimitError) as info:
        client.messages.create(
            model="c", max_tokens=10, messages=[{"role": "user", "content": "x"}]
        )
    assert info.value.response.headers["retry-after"] == "3"
    assert info.value.body["error"]["type"] == "rate_limit_error"  # type: ignore[index]


def test_anthropic_in_band_error(sim: Sim) -> None:
    sim.script({"type": "stream_error", "after_chunks": 3, "error_type": "overloaded_error"})
    with _an(sim) as client, pytest.raises(anthropic.APIStatusError, match="overloaded"):
        for _ in client.messages.create(
            model="c", max_tokens=10, messages=[{"role": "user", "content": "x"}], stream=True
        ):
            pass


def test_anthropic_missing_max_tokens_is_invalid_request(sim: Sim) -> None:
    body = {"model": "c", "messages": [{"role": "user", "content": "x"}]}
    r = httpx2.post(f"{sim.base_url}/v1/messages", json=body)
    assert r.status_code == 400
    assert r.json()["error"]["type"] == "invalid_request_error"
