"""Events as they leave a run host: encoded to JSON once, then reused as the stored row and
as the SSE frame, so no process after the host re-encodes (or even decodes) them.

    EncodedEvent   one event and its JSON (the run store's row, the SSE `data:` line)
    EventBatch     consecutive events of one run as SSE frames (`id:` = seq), plus the
                   first/last seq and whether the run's terminal event closes the batch:
                   all a follower or a relay needs without decoding a single event
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from agents.events import Event, is_terminal, parse_event

# The separator sse-starlette writes (its default); clients split on any of \r\n, \r, \n.
_SEP = "\r\n"
_DATA = b"data: "


@dataclass(frozen=True, slots=True)
class EncodedEvent:
    """One event and its JSON, `event.model_dump_json()`, computed once."""

    event: Event
    json: str

    @classmethod
    def of(cls, event: Event | EncodedEvent) -> EncodedEvent:
        """`event` encoded (an already encoded one as it is)."""
        if isinstance(event, EncodedEvent):
            return event
        return cls(event, event.model_dump_json())

    def frame(self) -> str:
        """The event as one SSE frame, exactly as sse-starlette writes `to_sse(event)`: the
        JSON has no raw line breaks (JSON escapes them), so it is one `data:` line."""
        event = self.event
        return f"id: {event.seq}{_SEP}event: {event.kind}{_SEP}data: {self.json}{_SEP}{_SEP}"


@dataclass(frozen=True, slots=True)
class EventBatch:
    """Consecutive events of one run, as they cross from a run host to its readers: one
    small object per batch (one Ray object), whose frames a gateway relays as they are."""

    first_seq: int
    last_seq: int
    ended: bool
    """The batch ends with the run's terminal event: nothing follows it."""
    frames: bytes
    """The events' SSE frames, UTF-8, in seq order."""

    @classmethod
    def of(cls, events: Sequence[EncodedEvent]) -> EventBatch:
        """A batch of consecutive events (at least one)."""
        if not events:
            raise ValueError("an event batch holds at least one event")
        frames = "".join(e.frame() for e in events).encode()
        last = events[-1].event
        return cls(events[0].event.seq, last.seq, is_terminal(last), frames)

    def __len__(self) -> int:
        return self.last_seq - self.first_seq + 1

    def last_event(self) -> Event:
        """The batch's last event, decoding only that one (e.g. the terminal event)."""
        # A frame's JSON holds no raw line break, so the last "\n" + "data: " is its own.
        start = self.frames.rindex(b"\n" + _DATA) + 1 + len(_DATA)
        return parse_event(self.frames[start : -2 * len(_SEP)])

    def events(self) -> list[Event]:
        """The typed events, decoded from the frames (for callers that need them)."""
        return [
            parse_event(line[len(_DATA) :])
            for line in self.frames.split(_SEP.encode())
            if line.startswith(_DATA)
        ]
