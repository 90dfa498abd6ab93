"""The circuit breaker on its own: a fake clock, no I/O."""

from __future__ import annotations

import pytest

from actors.breaker import Breakers, CircuitBreaker, Permit


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _breaker(clock: Clock, failures: int = 3, open_s: float = 30.0) -> CircuitBreaker:
    return CircuitBreaker("p", failure_threshold=failures, open_s=open_s, clock=clock)


def _fail(breaker: CircuitBreaker, times: int) -> None:
    for _ in range(times):
        permit = breaker.acquire()
        assert permit is not None
        breaker.failed(permit)


def test_opens_after_n_consecutive_failures_and_skips() -> None:
    clock = Clock()
    breaker = _breaker(clock)
    _fail(breaker, 2)
    assert breaker.state == "closed"
    _fail(breaker, 1)
    assert breaker.state == "open"
    assert breaker.acquire() is None
    assert breaker.open_for_s() == pytest.approx(30.0)


def test_a_success_resets_the_count() -> None:
    breaker = _breaker(Clock())
    _fail(breaker, 2)
    permit = breaker.acquire()
    assert permit is not None
    breaker.succeeded(permit)
    _fail(breaker, 2)
    assert breaker.state == "closed"
    assert breaker.consecutive_failures == 2


def test_half_open_admits_one_probe_at_a_time() -> None:
    clock = Clock()
    breaker = _breaker(clock)
    _fail(breaker, 3)
    clock.now += 29.9
    assert breaker.acquire() is None
    clock.now += 0.1
    assert breaker.state == "half_open"
    probe = breaker.acquire()
    assert probe is not None and probe.probe
    assert [breaker.acquire() for _ in range(5)] == [None] * 5
    breaker.succeeded(probe)
    assert breaker.state == "closed"
    again = breaker.acquire()
    assert again is not None and not again.probe


def test_a_failed_probe_reopens_for_open_s() -> None:
    clock = Clock()
    breaker = _breaker(clock)
    _fail(breaker, 3)
    clock.now += 30
    probe = breaker.acquire()
    assert probe is not None
    breaker.failed(probe)
    assert breaker.state == "open"
    assert breaker.open_for_s() == pytest.approx(30.0)


def test_a_released_probe_frees_the_slot() -> None:
    clock = Clock()
    breaker = _breaker(clock)
    _fail(breaker, 3)
    clock.now += 30
    probe = breaker.acquire()
    assert probe is not None
    breaker.released(probe)
    assert breaker.state == "half_open"
    assert breaker.acquire() is not None


def test_open_for_a_given_time_at_once() -> None:
    """A Retry-After beyond the router's cap: the provider is away until then."""
    clock = Clock()
    breaker = _breaker(clock)
    permit = breaker.acquire()
    assert permit is not None
    breaker.failed(permit, open_for_s=120.0)
    assert breaker.state == "open"
    clock.now += 119
    assert breaker.acquire() is None
    clock.now += 1
    assert breaker.acquire() is not None


def test_outcomes_of_stale_permits_are_ignored() -> None:
    """A slow request admitted while closed cannot close a breaker that opened since."""
    clock = Clock()
    breaker = _breaker(clock)
    slow = breaker.acquire()
    assert slow is not None
    _fail(breaker, 3)
    breaker.succeeded(slow)
    assert breaker.state == "open"
    clock.now += 30
    probe = breaker.acquire()
    assert probe is not None
    breaker.failed(Permit("p", probe=False, generation=slow.generation))
    assert breaker.state == "half_open"


def test_breakers_one_per_provider() -> None:
    clock = Clock()
    breakers = Breakers(failure_threshold=1, open_s=5, clock=clock)
    assert breakers["a"] is breakers["a"]
    permit = breakers["a"].acquire()
    assert permit is not None
    breakers["a"].failed(permit)
    assert breakers.states() == {"a": "open"}
    assert breakers["b"].state == "closed"


def test_threshold_must_be_positive() -> None:
    with pytest.raises(ValueError, match="failure_threshold"):
        CircuitBreaker("p", failure_threshold=0)
