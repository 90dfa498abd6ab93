"""A run's append-only event log: numbers events and lets readers follow it from any seq.

A durable log publishes an event to readers only once its owner has persisted it
(`take_unsent` -> store -> `publish`), so no reader ever sees an event that a crash could
lose: after a resume, seq numbers continue with no gap and no duplicate.

Each event is encoded to JSON at most once (`encoded`), the first time the store or a reader
needs it; the store's row and every reader's SSE frame reuse that text.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from typing import Any, TypeVar

from agents.encoded import EncodedEvent
from agents.events import Event, is_terminal

E = TypeVar("E", bound=Event)


class EventLog:
    """Append-only, seq 1, 2, 3 ...; readers wait for new events without polling."""

    def __init__(
        self,
        run_id: str,
        events: list[Event] | None = None,
        wall_clock: Callable[[], float] = time.time,
        *,
        durable: bool = False,
        on_append: Callable[[EventLog], None] | None = None,
        trace_id: str | None = None,
    ) -> None:
        self.run_id = run_id
        self.trace_id = trace_id
        self._events: list[Event] = list(events or [])
        self._json: list[str | None] = [None] * len(self._events)  # by seq - 1, once needed
        # Events handed in at construction were read back from the store: already durable.
        self._published = len(self._events)
        self._sent = len(self._events)
        self._durable = durable
        self._on_append = on_append
        self._changed = asyncio.Event()
        self._wall_clock = wall_clock

    @property
    def last_seq(self) -> int:
        return len(self._events)

    @property
    def published_seq(self) -> int:
        """The last seq readers may see."""
        return self._published

    @property
    def closed(self) -> bool:
        """True once the terminal event is in the log (published or not)."""
        return bool(self._events) and is_terminal(self._events[-1])

    def events(self) -> list[Event]:
        """Every event, published or not: what the run itself has done."""
        return list(self._events)

    def published(self) -> list[Event]:
        """The events readers may see."""
        return self._events[: self._published]

    def emit(self, event_type: type[E], **fields: Any) -> E:
        """Append a new event of `event_type`, numbering it."""
        if self.closed:
            raise RuntimeError(f"run {self.run_id} already ended; cannot emit {event_type}")
        event = event_type(
            run_id=self.run_id,
            seq=self.last_seq + 1,
            ts=self._wall_clock(),
            trace_id=self.trace_id,
            **fields,
        )
        self._events.append(event)
        self._json.append(None)
        if not self._durable:
            self.publish(event.seq)
        elif self._on_append is not None:
            self._on_append(self)
        return event

    def encoded(self, events: list[Event]) -> list[EncodedEvent]:
        """`events` (consecutive events of this log) with their JSON, each encoded once."""
        out: list[EncodedEvent] = []
        for event in events:
            text = self._json[event.seq - 1]
            if text is None:
                text = self._json[event.seq - 1] = event.model_dump_json()
            out.append(EncodedEvent(event, text))
        return out

    def take_unsent(self) -> list[Event]:
        """Events not yet handed to the store; they count as sent from now on."""
        batch = self._events[self._sent :]
        self._sent = len(self._events)
        return batch

    def unsend(self, seq: int) -> None:
        """The store did not take events after `seq`: hand them out again next time."""
        self._sent = min(self._sent, max(seq, self._published))

    def publish(self, seq: int) -> None:
        """Events up to `seq` are durable: readers may see them now."""
        if seq <= self._published:
            return
        self._published = min(seq, len(self._events))
        # Wake every waiting reader, then arm a fresh Event for the next publish.
        self._changed.set()
        self._changed = asyncio.Event()

    async def wait_published(self, seq: int) -> None:
        """Return once events up to `seq` are published."""
        while self._published < seq:
            await self._changed.wait()

    def after(self, seq: int) -> list[Event]:
        """Published events with seq greater than `seq`."""
        return self._events[max(seq, 0) : self._published]

    async def follow(self, after: int = 0) -> AsyncIterator[list[Event]]:
        """Yield batches of published events after `after` as they arrive, until the
        terminal one."""
        position = max(after, 0)
        while True:
            changed = self._changed
            if position < self._published:
                batch = self._events[position : self._published]
                position += len(batch)
                yield batch
                continue
            if self._published and is_terminal(self._events[self._published - 1]):
                return
            await changed.wait()
