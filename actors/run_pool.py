"""The warm pool of run hosts: hands out run slots so no actor is created on the hot path."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Collection, Coroutine, Mapping
from typing import Any

from agents.errors import Overloaded
from agents.logs import first_traceback

Spawn = Callable[[str], Coroutine[Any, Any, None]]
"""Creates (and waits for) the run host with the given id."""

logger = logging.getLogger("rayfleet")


class RunPool:
    """Tracks each host's in-flight runs against `runs_per_actor`; keeps spare capacity warm.

    Most runs start on a host a starter picked from its cached view of `loads()`, without
    the pool (actors.host_view): the hosts `report` their loads, which replace the pool's
    counts, and the host refuses a start it has no room for. `acquire` is the fallback.

    With runs_per_actor=1 every run gets a process of its own, reused after the run ends;
    with more, runs are packed as asyncio tasks. No Ray in here: `spawn` does the creating.
    """

    def __init__(
        self,
        runs_per_actor: int,
        warm_hosts: int,
        spawn: Spawn,
        max_hosts: int = 10_000,
        *,
        id_prefix: str = "h",
    ) -> None:
        self._capacity = runs_per_actor
        self._prefix = id_prefix
        self._warm = warm_hosts
        self._spawn = spawn
        self._max_hosts = max_hosts
        self._load: dict[str, int] = {}
        self._starting: dict[str, asyncio.Task[None]] = {}
        self._next = 0

    def stats(self) -> dict[str, int]:
        return {
            "hosts": len(self._load),
            "runs": sum(self._load.values()),
            "free_slots": self._free_slots(),
        }

    def _free_slots(self) -> int:
        return sum(self._capacity - load for load in self._load.values())

    def _add_host(self) -> str:
        if len(self._load) >= self._max_hosts:
            raise Overloaded(f"run pool is at max_hosts={self._max_hosts}", 1.0)
        host_id = f"{self._prefix}{self._next:x}"
        self._next += 1
        self._load[host_id] = 0
        task = asyncio.create_task(self._spawn(host_id))
        self._starting[host_id] = task
        task.add_done_callback(lambda done: self._started(host_id, done))
        return host_id

    def _started(self, host_id: str, task: asyncio.Task[None]) -> None:
        self._starting.pop(host_id, None)
        error = None if task.cancelled() else task.exception()
        if task.cancelled() or error is not None:
            # A host that failed to start is never handed out; the next acquire adds another.
            self._load.pop(host_id, None)
            traced = first_traceback(error) if error is not None else None
            logger.warning("run host %s failed to start: %r", host_id, error, exc_info=traced)

    async def warm_up(self) -> None:
        """Create the warm hosts now and wait until they are ready."""
        while self._free_slots() < max(self._warm * self._capacity, 1):
            self._add_host()
        await asyncio.gather(*list(self._starting.values()))

    async def acquire(self, full: Collection[str] = ()) -> str:
        """A host id with a free slot, which is now taken. `full`: hosts the caller found
        full (they refused a start), counted full until they report again."""
        for host_id in full:
            if host_id in self._load:
                self._load[host_id] = max(self._load[host_id], self._capacity)
        candidates = [h for h, load in self._load.items() if load < self._capacity]
        host_id = min(candidates, key=self._load.__getitem__) if candidates else self._add_host()
        self._load[host_id] += 1
        self._keep_spares()
        starting = self._starting.get(host_id)
        if starting is not None:
            await asyncio.shield(starting)
        return host_id

    def _keep_spares(self) -> None:
        # Keep spare hosts starting in the background so the next start does not wait.
        while (
            self._free_slots() < self._warm * self._capacity and len(self._load) < self._max_hosts
        ):
            self._add_host()

    def loads(self) -> dict[str, int]:
        """Runs in flight per host that is ready (one still starting is not listed)."""
        return {h: load for h, load in self._load.items() if h not in self._starting}

    def report(self, host_id: str, load: int) -> None:
        """A host's own count of its runs in flight (hosts start runs without asking the
        pool): it replaces the pool's. A host the pool no longer has is not taken back."""
        if host_id in self._load:
            self._load[host_id] = max(0, load)
            self._keep_spares()

    def adopt(self, loads: Mapping[str, int]) -> None:
        """Take over running hosts (host id -> runs in flight), as a restarted pool does."""
        for host_id, load in loads.items():
            self._load[host_id] = max(0, load)

    def has_host(self, host_id: str) -> bool:
        return host_id in self._load

    def remove_host(self, host_id: str) -> None:
        """A host died: never hand it out again (spare capacity is rebuilt on acquire)."""
        self._load.pop(host_id, None)

    def release(self, host_id: str) -> None:
        """A run on `host_id` ended."""
        if self._load.get(host_id, 0) > 0:
            self._load[host_id] -= 1
