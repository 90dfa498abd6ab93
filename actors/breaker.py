"""Circuit breakers: a provider that keeps failing is skipped, not retried by every run.

    closed ──N consecutive failures, or told to stay away──> open
    open ──open_s elapsed──> half-open (admits ONE probe at a time; others keep skipping)
    half-open ──probe succeeds──> closed      half-open ──probe fails──> open

Plain classes, no Ray, no I/O; time comes from an injected clock. One `Breakers` lives in
each `ModelRouter`, and there is one router per run-host process, so breaker state is shared
by every run in that process and learnt independently by each process (a dead provider
costs each process N failures and then one probe per `open_s`).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

BreakerState = Literal["closed", "open", "half_open"]


@dataclass(frozen=True)
class Permit:
    """Leave to send one request; hand it back with `succeeded`, `failed` or `released`."""

    provider: str
    probe: bool
    """True for the single half-open probe whose outcome closes or re-opens the breaker."""
    generation: int


class CircuitBreaker:
    """One provider's breaker.

    Outcomes of requests admitted before the last state change are stale and ignored, so a
    slow request started while closed cannot close a breaker that has since opened.
    """

    def __init__(
        self,
        provider: str,
        *,
        failure_threshold: int = 5,
        open_s: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
        on_change: Callable[[str, BreakerState], None] | None = None,
    ) -> None:
        """`on_change(provider, state)`: told the state at creation and at every change
        (actors.metrics keeps it as a gauge)."""
        if failure_threshold < 1:
            raise ValueError(f"failure_threshold must be >= 1, not {failure_threshold}")
        self.provider = provider
        self.failure_threshold = failure_threshold
        self.open_s = open_s
        self._clock = clock
        self._state: BreakerState = "closed"
        self._failures = 0
        self._open_until = 0.0
        self._probe_out = False
        self._generation = 0
        self._on_change = on_change
        if on_change is not None:
            on_change(provider, "closed")

    def __repr__(self) -> str:
        return f"CircuitBreaker({self.provider!r}, state={self.state!r})"

    @property
    def state(self) -> BreakerState:
        """The state now (an open breaker whose time is up reads as half-open)."""
        if self._state == "open" and self._clock() >= self._open_until:
            self._transition("half_open")
        return self._state

    @property
    def consecutive_failures(self) -> int:
        return self._failures

    def open_for_s(self) -> float:
        """Seconds until an open breaker admits a probe (0 unless open)."""
        return max(0.0, self._open_until - self._clock()) if self.state == "open" else 0.0

    def acquire(self) -> Permit | None:
        """A permit to send a request, or None: skip this provider for now."""
        state = self.state
        if state == "closed":
            return Permit(self.provider, probe=False, generation=self._generation)
        if state == "half_open" and not self._probe_out:
            self._probe_out = True
            return Permit(self.provider, probe=True, generation=self._generation)
        return None

    def succeeded(self, permit: Permit) -> None:
        """The provider answered (a success, or a rejection that proves it is up)."""
        if permit.generation != self._generation:
            return
        if permit.probe:
            self._transition("closed")
        else:
            self._failures = 0

    def failed(self, permit: Permit, *, open_for_s: float | None = None) -> None:
        """The provider was unavailable. `open_for_s` opens the breaker at once for that long
        (a Retry-After too long to wait out); otherwise failures are counted."""
        if permit.generation != self._generation:
            return
        if permit.probe or open_for_s is not None:
            self._open(self.open_s if open_for_s is None else open_for_s)
            return
        self._failures += 1
        if self._failures >= self.failure_threshold:
            self._open(self.open_s)

    def released(self, permit: Permit) -> None:
        """The request ended without a verdict (cancelled): free the probe slot."""
        if permit.probe and permit.generation == self._generation:
            self._probe_out = False

    def _open(self, seconds: float) -> None:
        self._transition("open")
        self._open_until = self._clock() + max(0.0, seconds)

    def _transition(self, state: BreakerState) -> None:
        if self._on_change is not None and state != self._state:
            self._on_change(self.provider, state)
        self._state = state
        self._generation += 1
        self._failures = 0
        self._probe_out = False


class Breakers:
    """The breakers of one process, one per provider name, created on first use."""

    def __init__(
        self,
        *,
        failure_threshold: int = 5,
        open_s: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
        on_change: Callable[[str, BreakerState], None] | None = None,
    ) -> None:
        self._failure_threshold = failure_threshold
        self._open_s = open_s
        self._clock = clock
        self._on_change = on_change
        self._by_provider: dict[str, CircuitBreaker] = {}

    def __getitem__(self, provider: str) -> CircuitBreaker:
        breaker = self._by_provider.get(provider)
        if breaker is None:
            breaker = CircuitBreaker(
                provider,
                failure_threshold=self._failure_threshold,
                open_s=self._open_s,
                clock=self._clock,
                on_change=self._on_change,
            )
            self._by_provider[provider] = breaker
        return breaker

    def states(self) -> dict[str, BreakerState]:
        """Every known provider's state (for status pages and tests)."""
        return {name: b.state for name, b in sorted(self._by_provider.items())}
