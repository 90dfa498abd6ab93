"""A small server-sent-events parser shared by the provider clients.

Feed it lines without their line endings (as `httpx2.Response.aiter_lines()` gives them); it
returns an event at each blank line that ends one. Comments (`:`) are skipped; an event
cut off by the end of the stream is never returned (the spec says discard it).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class SSEEvent:
    """One dispatched event: `event` defaults to "message", `data` lines joined by newlines."""

    event: str
    data: str
    id: str | None = None


class SSEParser:
    """Line-by-line SSE decoding (the WHATWG event-stream interpretation, minus `retry`)."""

    def __init__(self) -> None:
        self._event = ""
        self._data: list[str] = []
        self._id: str | None = None

    def feed(self, line: str) -> SSEEvent | None:
        """Take one line; return the event it completes, if any."""
        if not line:
            if not self._data and not self._event:
                return None
            event = SSEEvent(self._event or "message", "\n".join(self._data), self._id)
            self._event, self._data = "", []
            return event
        if line.startswith(":"):
            return None
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "event":
            self._event = value
        elif name == "data":
            self._data.append(value)
        elif name == "id" and "\0" not in value:
            self._id = value
        return None


async def aiter_sse(lines: AsyncIterator[str]) -> AsyncIterator[SSEEvent]:
    """The events in a stream of lines."""
    parser = SSEParser()
    async for line in lines:
        event = parser.feed(line)
        if event is not None:
            yield event
