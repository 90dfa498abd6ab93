"""Events as Server-Sent Events, and back: `id:` is the event's seq, `event:` its kind.

The gateway does not frame events itself: run hosts send them as `agents.encoded.EventBatch`
frames, byte for byte what sse-starlette writes for `to_sse(event)` (a test checks it), and
the gateway relays those bytes.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from agents.events import Event, parse_event


def to_sse(event: Event) -> dict[str, str]:
    """The fields sse-starlette writes for one event."""
    return {"id": str(event.seq), "event": event.kind, "data": event.model_dump_json()}


def encode(event: Event) -> str:
    """One event as SSE wire text."""
    fields = to_sse(event)
    return f"id: {fields['id']}\nevent: {fields['event']}\ndata: {fields['data']}\n\n"


class SSEDecoder:
    """Incremental SSE parser for clients: feed lines, get events (unknown kinds skipped)."""

    def __init__(self) -> None:
        self._data: list[str] = []

    def feed(self, line: str) -> Event | None:
        line = line.rstrip("\r\n")
        if line == "":
            data, self._data = "\n".join(self._data), []
            if not data:
                return None
            try:
                return parse_event(data)
            except ValueError:
                return None  # a kind this client does not know: ignore it
        if line.startswith("data:"):
            self._data.append(line[5:].removeprefix(" "))
        return None


def decode_lines(lines: Iterable[str]) -> Iterator[Event]:
    decoder = SSEDecoder()
    for line in lines:
        event = decoder.feed(line)
        if event is not None:
            yield event
