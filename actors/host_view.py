"""Where a run starts: a starter's cached view of the pool's hosts, so that starting a run
is one call to a host, not a call to the pool and then one to the host.

The decision (issue 11, "few hops to start a run"):
- Each host is the judge of its own room: holding `runs_per_actor` runs, `start_run`
  refuses with HostFull and starts nothing (actors.run_host).
- Each starter (an agent deployment's replica, the batch driver: whoever holds a
  `actors.runs_client.Runs`) keeps this view: the pool's ready hosts and their loads,
  fetched from the pool (`loads`) once, then again in the background when it is older
  than `max_age_s`; in between, it counts its own starts. A start goes to the
  least-loaded host the view says has room, as the pool would choose.
- A host that refuses is counted full here until the next fetch; the start then falls
  back to `pool.acquire(full=[...])`, which picks from the pool's own, fresher counts, or
  makes a host (spawn on demand up to need, warm spares ahead of it).
- A host that is gone or died is dropped from the view. If it died under the start call
  (the view may name a host that died since it was fetched), Ray cannot say whether it
  got the call, so the starter asks the pool to `recover` the run: a stored record means
  it started (it is resumed elsewhere, and its id is the answer); no record from a host
  Ray declared dead (ActorDiedError) means it did not, and the next host is asked. A host
  only unreachable (ActorUnavailableError) might still store it: ServiceUnavailable.
  Left open: a PostgreSQL server finishing a COMMIT its client sent just before it died,
  after the check (the check comes after Ray declared the process dead, far later than a
  commit takes), or a host on a partitioned node that still reaches the database.
- The pool learns every host's load from the host itself (`report`, coalesced: at most
  one message per LOAD_REPORT_DELAY_S per host, on starts and ends), so it keeps its warm
  spares without seeing the starts; a restarted pool asks the hosts, as before.
Rejected: the pool granting blocks of slots to each starter. Slots held by a replica that
dies or idles leak until reclaimed, and reclaiming needs the host's count anyway; with
the host as the judge, a stale view costs at worst an extra hop, never a wrong count.

No Ray in here.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping

VIEW_MAX_AGE_S = 1.0
"""A starter fetches the pool's loads again (in the background) after this long."""


class HostView:
    """A starter's copy of the pool's hosts and their runs in flight (an estimate)."""

    def __init__(
        self,
        capacity: int,
        max_age_s: float = VIEW_MAX_AGE_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """`capacity`: runs_per_actor."""
        self._capacity = capacity
        self._max_age_s = max_age_s
        self._clock = clock
        self._loads: dict[str, int] = {}
        self._fetched_at: float | None = None
        self._gone: set[str] = set()
        """Hosts seen dead: a fetch made before the pool noticed must not bring them back
        (host ids are never reused, so this only grows by the hosts that died)."""

    @property
    def fetched(self) -> bool:
        """True once the pool's view arrived (until then a starter waits for it)."""
        return self._fetched_at is not None

    def stale(self) -> bool:
        """Time to fetch the pool's view again."""
        return self._fetched_at is None or self._clock() - self._fetched_at >= self._max_age_s

    def update(self, loads: Mapping[str, int]) -> None:
        """The pool's view (ready host -> runs in flight) replaces this one."""
        self._loads = {h: load for h, load in loads.items() if h not in self._gone}
        self._fetched_at = self._clock()

    def pick(self) -> str | None:
        """The least-loaded host with room, counted one run busier; None if none has room."""
        candidates = [h for h, load in self._loads.items() if load < self._capacity]
        if not candidates:
            return None
        host_id = min(candidates, key=self._loads.__getitem__)
        self._loads[host_id] += 1
        return host_id

    def took(self, host_id: str) -> None:
        """The pool handed this host out for a run: count it here too."""
        if host_id not in self._gone:
            self._loads[host_id] = self._loads.get(host_id, 0) + 1

    def full(self, host_id: str) -> None:
        """The host refused a start: no room there until the next fetch says otherwise."""
        if host_id in self._loads:
            self._loads[host_id] = self._capacity

    def drop(self, host_id: str) -> None:
        """The host is gone (dead, or no actor by its name): never pick it again."""
        self._loads.pop(host_id, None)
        self._gone.add(host_id)

    def loads(self) -> dict[str, int]:
        """The view as it stands (for tests and stats)."""
        return dict(self._loads)
