"""Events encoded once: an EventBatch's frames are byte for byte what sse-starlette writes
for each event, they decode back to the same events, and the log encodes each event once."""

from __future__ import annotations

import pickle

import pytest
from sse_starlette.event import ServerSentEvent

from agents.encoded import EncodedEvent, EventBatch
from agents.eventlog import EventLog
from agents.events import Event, ModelDelta, RunCompleted, StepStarted
from agents.messages import Usage
from serve_app.sse import decode_lines, to_sse
from tests.unit.test_sse import RUN, SAMPLES

# Texts a frame must carry on one `data:` line: every kind of line break, a separator
# sse-starlette does not split on, and an SSE comment look-alike.
AWKWARD = [
    ModelDelta(run_id=RUN, seq=n, step=1, text=text)
    for n, text in enumerate(["a\nb", "c\r\nd", "e\rf", "g\u2028h\u0085i", ": ping", 'é😀"'], 1)
]


def starlette_frame(event: Event) -> bytes:
    """What the gateway wrote per event before batches: sse-starlette's default framing."""
    return ServerSentEvent(**to_sse(event), sep="\r\n").encode()


@pytest.mark.parametrize("event", SAMPLES + AWKWARD, ids=lambda event: event.kind)
def test_a_frame_is_what_sse_starlette_writes_for_the_event(event: Event) -> None:
    assert EncodedEvent.of(event).frame().encode() == starlette_frame(event)


def test_a_batch_holds_its_frames_and_what_followers_need() -> None:
    events: list[Event] = [*AWKWARD]
    end = RunCompleted(run_id=RUN, seq=7, output="ok", steps=1, usage=Usage(), cost_usd=0.0)
    batch = EventBatch.of([EncodedEvent.of(e) for e in [*events, end]])
    assert batch.frames == b"".join(starlette_frame(e) for e in [*events, end])
    assert (batch.first_seq, batch.last_seq, len(batch), batch.ended) == (1, 7, 7, True)
    assert batch.events() == [*events, end]
    assert batch.last_event() == end
    # What an SSE client reads from the relayed bytes is the same events.
    lines = batch.frames.decode().split("\r\n")
    assert list(decode_lines(lines)) == [*events, end]
    assert pickle.loads(pickle.dumps(batch)) == batch  # it crosses Ray as it is


def test_a_batch_without_its_terminal_event_has_not_ended() -> None:
    batch = EventBatch.of([EncodedEvent.of(AWKWARD[2])])
    assert (batch.first_seq, batch.last_seq, batch.ended) == (3, 3, False)
    assert batch.last_event() == AWKWARD[2]
    with pytest.raises(ValueError):
        EventBatch.of([])


def test_the_log_encodes_each_event_once() -> None:
    log = EventLog("r", wall_clock=lambda: 100.0)
    for step in (1, 2, 3):
        log.emit(StepStarted, step=step)
    first = log.encoded(log.events()[:2])
    again = log.encoded(log.events())
    assert [e.json for e in again] == [e.model_dump_json() for e in log.events()]
    assert all(a.json is b.json for a, b in zip(first, again, strict=False))
