"""A run's append-only event log: numbers events and lets readers follow it from any seq."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from typing import Any, TypeVar

from agents.events import Event, is_terminal

E = TypeVar("E", bound=Event)


class EventLog:
    """Append-only, seq 1, 2, 3 ...; readers wait for new events without polling."""

    def __init__(
        self,
        run_id: str,
        events: list[Event] | None = None,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.run_id = run_id
        self._events: list[Event] = list(events or [])
        self._changed = asyncio.Event()
        self._wall_clock = wall_clock

    @property
    def last_seq(self) -> int:
        return len(self._events)

    @property
    def closed(self) -> bool:
        """True once the terminal event is in the log."""
        return bool(self._events) and is_terminal(self._events[-1])

    def events(self) -> list[Event]:
        return list(self._events)

    def emit(self, event_type: type[E], **fields: Any) -> E:
        """Append a new event of `event_type`, numbering it."""
        if self.closed:
            raise RuntimeError(f"run {self.run_id} already ended; cannot emit {event_type}")
        event = event_type(
            run_id=self.run_id, seq=self.last_seq + 1, ts=self._wall_clock(), **fields
        )
        self._events.append(event)
        # Wake every waiting reader, then arm a fresh Event for the next append.
        self._changed.set()
        self._changed = asyncio.Event()
        return event

    def after(self, seq: int) -> list[Event]:
        """Events with seq greater than `seq` (already in the log)."""
        return self._events[max(seq, 0) :]

    async def follow(self, after: int = 0) -> AsyncIterator[list[Event]]:
        """Yield batches of events after `after` as they arrive, until the terminal one."""
        position = max(after, 0)
        while True:
            changed = self._changed
            if position < len(self._events):
                batch = self._events[position:]
                position += len(batch)
                yield batch
                continue
            if self.closed:
                return
            await changed.wait()
