"""Events to SSE wire text and back: every kind round-trips; unknown kinds are skipped."""

from __future__ import annotations

import json
import typing

import pytest

from agents.events import Event, ModelDelta, RunCreated
from serve_app.sse import SSEDecoder, decode_lines, encode, to_sse
from tests.unit.test_events import SAMPLES as EVERY_KIND

RUN = "run-h1-0123456789abcdef0123"

# Texts that SSE framing must survive, then one event of every kind (test_events' samples).
SAMPLES: list[Event] = [
    RunCreated(run_id=RUN, seq=1, ts=1.5, agent="support", version="v1", input="hé\nllo"),
    ModelDelta(run_id=RUN, seq=3, step=1, text="line one\nline two\r\n: not a comment"),
    *(event.model_copy(update={"run_id": RUN}) for event in EVERY_KIND),
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
