"""Events to SSE wire text and back: every kind round-trips; unknown kinds are skipped."""

from __future__ import annotations

import json
import typing

import pytest

from agents.events import (
    BudgetExceededEvent,
    BudgetProgress,
    ContextPruned,
    Event,
    MemoryDegraded,
    ModelCompleted,
    ModelDelta,
    ModelDiscarded,
    RunCancelled,
    RunCompleted,
    RunCreated,
    RunFailed,
    StepStarted,
    SubagentEvent,
    ToolCalled,
    ToolResulted,
)
from agents.messages import Usage
from serve_app.sse import SSEDecoder, decode_lines, encode, to_sse

RUN = "run-h1-0123456789abcdef0123"
USAGE = Usage(input_tokens=120, cached_input_tokens=64, output_tokens=30)

SAMPLES: list[Event] = [
    RunCreated(run_id=RUN, seq=1, ts=1.5, agent="support", version="v1", input="hé\nllo"),
    StepStarted(run_id=RUN, seq=2, step=1),
    ModelDelta(run_id=RUN, seq=3, step=1, text="line one\nline two\r\n: not a comment"),
    ModelDiscarded(run_id=RUN, seq=3, step=1, reason="stream cut", provider="sim-openai"),
    ModelCompleted(
        run_id=RUN,
        seq=4,
        step=1,
        tier="strong",
        provider="sim-openai",
        model="sim-strong",
        text="",
        tool_calls=1,
        usage=USAGE,
        cost_usd=0.00042,
        latency_ms=12.5,
        tried=("sim-anthropic/sim-strong",),
    ),
    ToolCalled(
        run_id=RUN,
        seq=5,
        step=1,
        call_id="call_1",
        tool="lookup_order",
        arguments={"order_id": 1234, "nested": {"a": [1, None, "x"]}},
    ),
    ToolResulted(
        run_id=RUN, seq=6, step=1, call_id="call_1", tool="lookup_order", ok=True, output="{}"
    ),
    MemoryDegraded(run_id=RUN, seq=7, reason="memory store unavailable"),
    ContextPruned(
        run_id=RUN,
        seq=7,
        step=2,
        tokens_before=900,
        tokens_after=400,
        max_tokens=500,
        truncated=("call_1",),
        summary="line one\nline two",
        summary_upto=3,
    ),
    SubagentEvent(
        run_id=RUN,
        seq=7,
        step=2,
        call_id="d1",
        agent="concierge-orders",
        event={"kind": "step.started", "run_id": "x:2:d1", "seq": 2, "step": 1},
    ),
    BudgetProgress(
        run_id=RUN,
        seq=7,
        step=2,
        max_steps=8,
        tokens=10,
        max_tokens=100,
        cost_usd=0.0,
        max_cost_usd=0.5,
        elapsed_s=0.1,
        time_left_s=9.9,
    ),
    BudgetExceededEvent(run_id=RUN, seq=8, limit="cost", used=0.51, cap=0.5),
    RunCompleted(run_id=RUN, seq=9, output="done", steps=2, usage=USAGE, cost_usd=0.001),
    RunFailed(
        run_id=RUN,
        seq=9,
        code="budget_exceeded",
        message="over max_cost_usd=0.5",
        retryable=False,
        steps=2,
        usage=USAGE,
        cost_usd=0.51,
    ),
    RunCancelled(run_id=RUN, seq=9, reason="cancelled", steps=1, usage=USAGE, cost_usd=0.0),
]


def test_the_samples_cover_every_event_kind() -> None:
    union = typing.get_args(typing.get_args(Event)[0])
    assert {type(event) for event in SAMPLES} == set(union)


@pytest.mark.parametrize("event", SAMPLES, ids=lambda event: event.kind)
def test_every_kind_round_trips(event: Event) -> None:
    text = encode(event)
    assert text.endswith("\n\n")
    assert text.startswith(f"id: {event.seq}\nevent: {event.kind}\n")
    decoded = list(decode_lines(text.split("\n")))
    assert decoded == [event]
    assert to_sse(event)["id"] == str(event.seq)


def test_a_stream_of_events_decodes_in_order_with_crlf_and_comments() -> None:
    wire = ": keep-alive\n\n" + "".join(encode(event) for event in SAMPLES[:8])
    lines = [line + "\r\n" for line in wire.split("\n")]
    assert list(decode_lines(lines)) == SAMPLES[:8]


def test_unknown_kinds_are_skipped() -> None:
    future = json.dumps({"kind": "run.paused", "run_id": RUN, "seq": 3, "why": "later"})
    wire = encode(SAMPLES[0]) + f"id: 3\nevent: run.paused\ndata: {future}\n\n" + encode(SAMPLES[1])
    assert list(decode_lines(wire.split("\n"))) == [SAMPLES[0], SAMPLES[1]]


def test_data_over_several_lines_is_joined() -> None:
    event = SAMPLES[4]
    pretty = json.dumps(json.loads(event.model_dump_json()), indent=2)
    assert pretty.count("\n") > 3
    decoder = SSEDecoder()
    lines = [f"id: {event.seq}", f"event: {event.kind}"]
    lines += [f"data: {line}" for line in pretty.split("\n")] + [""]
    results = [decoder.feed(line) for line in lines]
    assert results[:-1] == [None] * (len(lines) - 1)
    assert results[-1] == event


def test_data_without_a_space_after_the_colon_and_an_empty_block() -> None:
    decoder = SSEDecoder()
    assert decoder.feed("") is None  # a blank line with no data is no event
    assert decoder.feed(f"data:{SAMPLES[1].model_dump_json()}") is None
    assert decoder.feed("") == SAMPLES[1]
