"""The tenant limiter on its own: fake clocks, no Ray, no sleeping."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from pathlib import Path

import pytest
from pydantic import ValidationError

from actors.limiter import Admission, TenantLimiter, TenantLimits, _TenantLimiterHost
from actors.state import State
from agents.errors import Overloaded
from tests.helpers import eventually


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


# 2026-03-01 23:00:00 UTC: one hour before a UTC midnight.
LATE_EVENING = datetime(2026, 3, 1, 23, 0, 0, tzinfo=UTC).timestamp()


def _limiter(ttl_s: float = 600.0, **limits: TenantLimits) -> tuple[TenantLimiter, Clock, Clock]:
    clock, wall = Clock(1000.0), Clock(LATE_EVENING)
    return TenantLimiter(limits, clock=clock, wall_clock=wall, reservation_ttl_s=ttl_s), clock, wall


def _advance(clock: Clock, wall: Clock, seconds: float) -> None:
    clock.advance(seconds)
    wall.advance(seconds)


# -- config ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "bad",
    [
        {"requests_per_min": 0},
        {"tokens_per_min": -5},
        {"concurrent_runs": True},
        {"daily_budget_usd": 0.0},
        {"daily_budget_usd": float("inf")},
        {"requests_per_minute": 10},
    ],
)
def test_limits_reject_bad_values(bad: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        TenantLimits.model_validate(bad)


def test_limits_default_to_unlimited_and_are_frozen() -> None:
    limits = TenantLimits(requests_per_min=60)
    assert limits.tokens_per_min is None and limits.daily_budget_usd is None
    with pytest.raises(ValidationError):
        limits.requests_per_min = 1  # type: ignore[misc]


# -- requests per minute -----------------------------------------------------------------


async def test_rpm_admits_exactly_the_limit_then_refuses_with_the_exact_wait() -> None:
    limiter, _, _ = _limiter(acme=TenantLimits(requests_per_min=6))  # one per 10 s
    for _ in range(6):
        assert (await limiter.admit_run("acme")).ok
    refused = await limiter.admit_run("acme")
    assert (refused.ok, refused.limit, refused.reservation) == (False, "requests_per_min", None)
    assert refused.retry_after_s == pytest.approx(10.0)
    assert (refused.policy, refused.quota, refused.remaining) == ("requests_per_min", 6, 0)
    assert refused.reset_s == pytest.approx(60.0)


async def test_rpm_refills_continuously_up_to_the_capacity() -> None:
    limiter, clock, wall = _limiter(acme=TenantLimits(requests_per_min=6))
    for _ in range(6):
        await limiter.admit_run("acme")
    _advance(clock, wall, 10.0)  # exactly the retry_after of the refusal
    assert (await limiter.admit_run("acme")).ok
    _advance(clock, wall, 4.0)
    refused = await limiter.admit_run("acme")
    assert not refused.ok and refused.retry_after_s == pytest.approx(6.0)
    _advance(clock, wall, 3600.0)  # an hour idle refills to 6, not to 360
    admitted = [(await limiter.admit_run("acme")).ok for _ in range(8)]
    assert admitted == [True] * 6 + [False] * 2


async def test_a_rate_of_odd_fractions_admits_after_exactly_retry_after() -> None:
    # 7/min: float refill arithmetic must not refuse again a hair short of one token.
    limiter, clock, wall = _limiter(acme=TenantLimits(requests_per_min=7))
    for _ in range(7):
        await limiter.admit_run("acme")
    for _ in range(20):
        refused = await limiter.admit_run("acme")
        assert not refused.ok
        _advance(clock, wall, refused.retry_after_s)
        assert (await limiter.admit_run("acme")).ok


# -- concurrent runs ---------------------------------------------------------------------


async def test_concurrent_slots_are_taken_and_freed() -> None:
    limiter, _, _ = _limiter(acme=TenantLimits(concurrent_runs=2))
    first, second = await limiter.admit_run("acme"), await limiter.admit_run("acme")
    assert first.ok and second.ok and first.lease and second.lease
    assert first.lease != second.lease
    refused = await limiter.admit_run("acme")
    assert (refused.ok, refused.limit, refused.retry_after_s) == (False, "concurrent_runs", 1.0)
    assert refused.lease is None
    await limiter.release_run(first.lease or "")
    assert (await limiter.admit_run("acme")).ok


# -- atomicity ---------------------------------------------------------------------------


async def test_a_refused_run_slot_takes_no_request_token() -> None:
    limiter, _, _ = _limiter(acme=TenantLimits(requests_per_min=10, concurrent_runs=1))
    assert (await limiter.admit_run("acme")).ok
    for _ in range(5):
        assert (await limiter.admit_run("acme")).limit == "concurrent_runs"
    assert (await limiter.usage("acme"))["requests_available"] == pytest.approx(9.0)


async def test_a_refused_request_token_takes_no_run_slot() -> None:
    limiter, _, _ = _limiter(acme=TenantLimits(requests_per_min=1, concurrent_runs=5))
    assert (await limiter.admit_run("acme")).ok
    for _ in range(5):
        assert (await limiter.admit_run("acme")).limit == "requests_per_min"
    assert (await limiter.usage("acme"))["running_runs"] == 1


async def test_when_both_refuse_the_longer_wait_is_reported() -> None:
    limiter, _, _ = _limiter(acme=TenantLimits(requests_per_min=1, concurrent_runs=1))
    await limiter.admit_run("acme")
    refused = await limiter.admit_run("acme")
    assert refused.limit == "requests_per_min"
    assert refused.retry_after_s == pytest.approx(60.0)


async def test_a_refused_reservation_takes_neither_tokens_nor_dollars() -> None:
    limiter, _, _ = _limiter(acme=TenantLimits(tokens_per_min=1000, daily_budget_usd=1.0))
    assert (await limiter.reserve("acme", 600, 0.5)).ok
    by_tokens = await limiter.reserve("acme", 600, 0.25)
    assert by_tokens.limit == "tokens_per_min"
    by_dollars = await limiter.reserve("acme", 100, 5.0)
    assert by_dollars.limit == "daily_budget_usd"
    usage = await limiter.usage("acme")
    assert usage["tokens_available"] == pytest.approx(400.0)
    assert (usage["reserved_usd"], usage["reserved_tokens"], usage["spent_usd"]) == (0.5, 600, 0)


# -- many callers, one authority ---------------------------------------------------------


async def test_concurrent_callers_at_3x_the_limit_admit_exactly_the_limit() -> None:
    limiter, _, _ = _limiter(acme=TenantLimits(requests_per_min=50, concurrent_runs=1000))
    results = await asyncio.gather(*(limiter.admit_run("acme") for _ in range(150)))
    assert sum(r.ok for r in results) == 50
    assert {r.limit for r in results if not r.ok} == {"requests_per_min"}


async def test_three_replicas_sharing_the_limiter_admit_the_limit_not_3x() -> None:
    limiter, _, _ = _limiter(acme=TenantLimits(requests_per_min=40))

    async def replica() -> int:
        admitted = 0
        for _ in range(40):  # each replica alone sends the whole limit
            admitted += (await limiter.admit_run("acme")).ok
            await asyncio.sleep(0)  # interleave with the other replicas
        return admitted

    per_replica = await asyncio.gather(replica(), replica(), replica())
    assert sum(per_replica) == 40


async def test_dollars_never_exceed_the_budget_under_concurrent_reserves() -> None:
    limiter, _, _ = _limiter(acme=TenantLimits(daily_budget_usd=1.0))
    results = await asyncio.gather(*(limiter.reserve("acme", 10, 0.1) for _ in range(30)))
    ok = [r for r in results if r.ok]
    assert len(ok) == 10  # 10 x 0.1 fits despite 0.1 not being exact in binary
    assert (await limiter.usage("acme"))["reserved_usd"] == pytest.approx(1.0)
    for r in ok:
        assert r.reservation is not None
        await limiter.settle(r.reservation, 10, 0.1)
    usage = await limiter.usage("acme")
    assert usage["spent_usd"] == pytest.approx(1.0)
    assert usage["reserved_usd"] == pytest.approx(0.0)
    assert not (await limiter.reserve("acme", 1, 0.01)).ok


# -- reserve and settle ------------------------------------------------------------------


async def test_tokens_reserve_then_settle_returns_the_unused_estimate() -> None:
    limiter, _, _ = _limiter(acme=TenantLimits(tokens_per_min=1200))  # 20 tokens/s
    first = await limiter.reserve("acme", 800, 0.0)
    assert first.ok and first.reservation
    refused = await limiter.reserve("acme", 800, 0.0)
    assert refused.limit == "tokens_per_min"
    assert refused.retry_after_s == pytest.approx(20.0)
    await limiter.settle(first.reservation, 300, 0.0)  # 500 of the 800 come back
    assert (await limiter.usage("acme"))["tokens_available"] == pytest.approx(900.0)
    assert (await limiter.reserve("acme", 800, 0.0)).ok


async def test_actual_tokens_above_the_estimate_put_the_bucket_in_debt() -> None:
    limiter, clock, wall = _limiter(acme=TenantLimits(tokens_per_min=600))  # 10 tokens/s
    held = await limiter.reserve("acme", 500, 0.0)
    assert held.reservation
    await limiter.settle(held.reservation, 700, 0.0)
    assert (await limiter.usage("acme"))["tokens_available"] == pytest.approx(-100.0)
    refused = await limiter.reserve("acme", 100, 0.0)
    assert refused.retry_after_s == pytest.approx(20.0)  # repay 100, then 100 more
    _advance(clock, wall, 20.0)
    assert (await limiter.reserve("acme", 100, 0.0)).ok


async def test_settle_after_the_bucket_refilled_does_not_charge_twice() -> None:
    limiter, clock, wall = _limiter(acme=TenantLimits(tokens_per_min=600))
    held = await limiter.reserve("acme", 300, 0.0)
    assert held.reservation
    _advance(clock, wall, 120.0)  # full again meanwhile
    await limiter.settle(held.reservation, 300, 0.0)  # exactly the estimate: no change
    assert (await limiter.usage("acme"))["tokens_available"] == pytest.approx(600.0)


async def test_an_estimate_above_the_capacity_waits_for_a_full_bucket() -> None:
    limiter, clock, wall = _limiter(acme=TenantLimits(tokens_per_min=600))
    assert (await limiter.reserve("acme", 300, 0.0)).ok
    refused = await limiter.reserve("acme", 900, 0.0)
    assert refused.retry_after_s == pytest.approx(30.0)  # until full, not forever
    _advance(clock, wall, 30.0)
    assert (await limiter.reserve("acme", 900, 0.0)).ok
    assert (await limiter.usage("acme"))["tokens_available"] == pytest.approx(-300.0)


async def test_settle_is_idempotent_and_ignores_unknown_ids() -> None:
    limiter, _, _ = _limiter(acme=TenantLimits(daily_budget_usd=10.0))
    held = await limiter.reserve("acme", 100, 2.0)
    assert held.reservation
    await limiter.settle(held.reservation, 120, 1.5)
    await limiter.settle(held.reservation, 120, 1.5)
    await limiter.settle("no-such-reservation", 999, 9.0)
    usage = await limiter.usage("acme")
    assert (usage["spent_usd"], usage["reserved_usd"], usage["reserved_tokens"]) == (1.5, 0, 0)


async def test_stale_reservations_release_their_dollars() -> None:
    limiter, clock, wall = _limiter(ttl_s=600.0, acme=TenantLimits(daily_budget_usd=1.0))
    assert (await limiter.reserve("acme", 100, 0.8)).ok  # and the caller crashes
    assert not (await limiter.reserve("acme", 100, 0.5)).ok
    _advance(clock, wall, 599.0)
    assert not (await limiter.reserve("acme", 100, 0.5)).ok
    _advance(clock, wall, 2.0)
    assert (await limiter.usage("acme"))["reserved_usd"] == pytest.approx(0.0)
    assert (await limiter.reserve("acme", 100, 0.5)).ok


async def test_a_late_settle_still_charges_once_within_a_second_ttl() -> None:
    limiter, clock, wall = _limiter(ttl_s=600.0, acme=TenantLimits(daily_budget_usd=10.0))
    late = await limiter.reserve("acme", 100, 1.0)
    forgotten = await limiter.reserve("acme", 100, 1.0)
    assert late.reservation and forgotten.reservation
    _advance(clock, wall, 700.0)
    await limiter.settle(late.reservation, 100, 0.75)
    await limiter.settle(late.reservation, 100, 0.75)
    usage = await limiter.usage("acme")
    assert (usage["spent_usd"], usage["reserved_usd"]) == (0.75, 0)
    _advance(clock, wall, 600.0)  # 1300 s: past twice the TTL
    await limiter.settle(forgotten.reservation, 100, 1.0)
    assert (await limiter.usage("acme"))["spent_usd"] == 0.75


async def test_negative_usage_is_rejected() -> None:
    limiter, _, _ = _limiter()
    with pytest.raises(ValueError, match="-1"):
        await limiter.reserve("acme", -1, 0.0)
    with pytest.raises(ValueError, match="nan"):
        await limiter.settle("x", 1, float("nan"))


# -- daily budget ------------------------------------------------------------------------


async def test_the_daily_budget_resets_at_utc_midnight() -> None:
    limiter, clock, wall = _limiter(acme=TenantLimits(daily_budget_usd=2.0))
    _advance(clock, wall, 3540.0)  # 23:59:00 UTC
    held = await limiter.reserve("acme", 0, 2.0)
    assert held.reservation
    await limiter.settle(held.reservation, 0, 2.0)
    refused = await limiter.reserve("acme", 0, 0.01)
    assert refused.limit == "daily_budget_usd"
    assert refused.retry_after_s == pytest.approx(60.0)
    assert (refused.remaining, refused.quota) == (0, 2.0)
    _advance(clock, wall, 60.0)  # 00:00:00 UTC
    assert (await limiter.usage("acme"))["spent_usd"] == 0
    assert (await limiter.reserve("acme", 0, 2.0)).ok


async def test_a_budget_held_only_by_calls_in_flight_hints_a_short_retry() -> None:
    limiter, _, _ = _limiter(acme=TenantLimits(daily_budget_usd=1.0))
    assert (await limiter.reserve("acme", 0, 0.9)).ok
    refused = await limiter.reserve("acme", 0, 0.5)
    # It fits once the 0.9 in flight settles for less: not "come back tomorrow".
    assert (refused.limit, refused.retry_after_s) == ("daily_budget_usd", 1.0)
    assert refused.reset_s == pytest.approx(3600.0)


# -- live limits and unknown tenants -----------------------------------------------------


async def test_update_limits_keeps_levels_clipped_to_the_new_capacity() -> None:
    limiter, _, _ = _limiter(acme=TenantLimits(requests_per_min=60, concurrent_runs=100))
    for _ in range(10):
        await limiter.admit_run("acme")
    assert (await limiter.usage("acme"))["requests_available"] == pytest.approx(50.0)
    await limiter.update_limits({"acme": TenantLimits(requests_per_min=30, concurrent_runs=100)})
    assert (await limiter.usage("acme"))["requests_available"] == pytest.approx(30.0)
    await limiter.update_limits({"acme": TenantLimits(requests_per_min=120, concurrent_runs=100)})
    assert (await limiter.usage("acme"))["requests_available"] == pytest.approx(30.0)
    await limiter.update_limits({"acme": TenantLimits(concurrent_runs=11)})  # running: 10
    usage = await limiter.usage("acme")
    assert "requests_available" not in usage and usage["running_runs"] == 10
    assert [(await limiter.admit_run("acme")).ok for _ in range(2)] == [True, False]


async def test_update_limits_adds_and_removes_tenants() -> None:
    limiter, _, _ = _limiter(acme=TenantLimits(requests_per_min=1))
    await limiter.admit_run("acme")
    assert not (await limiter.admit_run("acme")).ok
    await limiter.update_limits({"globex": TenantLimits(tokens_per_min=100)})
    assert all([(await limiter.admit_run("acme")).ok for _ in range(100)])  # now unlimited
    assert (await limiter.usage("globex"))["tokens_available"] == 100  # new: starts full
    assert (await limiter.reserve("globex", 60, 0.0)).ok
    assert not (await limiter.reserve("globex", 60, 0.0)).ok


async def test_a_tenant_without_limits_is_unlimited_but_counted() -> None:
    limiter, _, _ = _limiter(acme=TenantLimits(requests_per_min=1))
    for _ in range(500):
        admitted = await limiter.admit_run("initech")
        assert admitted.lease and admitted == Admission(ok=True, lease=admitted.lease)
    held = await limiter.reserve("initech", 10**9, 1e6)
    assert held.ok and held.policy is None and held.remaining is None
    assert held.reservation
    await limiter.settle(held.reservation, 10, 0.25)
    usage = await limiter.usage("initech")
    assert (usage["running_runs"], usage["spent_usd"]) == (500, 0.25)


# -- RateLimit header fields -------------------------------------------------------------


async def test_ratelimit_fields_after_an_admitted_run() -> None:
    limiter, _, _ = _limiter(acme=TenantLimits(requests_per_min=10))
    admitted = await limiter.admit_run("acme")
    assert (admitted.policy, admitted.quota, admitted.remaining) == ("requests_per_min", 10, 9)
    assert admitted.reset_s == pytest.approx(6.0)  # one token back at 10/60 per second
    assert (admitted.limit, admitted.retry_after_s, admitted.reservation) == (None, 0.0, None)


async def test_ratelimit_fields_describe_the_tightest_limit() -> None:
    limiter, _, _ = _limiter(
        acme=TenantLimits(
            requests_per_min=100, concurrent_runs=2, tokens_per_min=1000, daily_budget_usd=4.0
        )
    )
    run = await limiter.admit_run("acme")
    assert (run.policy, run.quota, run.remaining) == ("concurrent_runs", 2, 1)
    small = await limiter.reserve("acme", 100, 3.0)  # tokens 90% left, dollars 25%
    assert (small.policy, small.quota, small.remaining) == ("daily_budget_usd", 4.0, 1.0)
    assert small.reset_s == pytest.approx(3600.0)  # until UTC midnight
    big = await limiter.reserve("acme", 800, 0.5)  # tokens 10% left, dollars 12.5%
    assert (big.policy, big.quota, big.remaining) == ("tokens_per_min", 1000, 100)
    assert big.reset_s == pytest.approx(54.0)


# -- run leases --------------------------------------------------------------------------


async def _running(limiter: TenantLimiter, tenant: str = "acme") -> float:
    return (await limiter.usage(tenant))["running_runs"]


async def test_a_lease_released_twice_frees_one_slot() -> None:
    limiter, _, _ = _limiter(acme=TenantLimits(concurrent_runs=2))
    first, _second = await limiter.admit_run("acme"), await limiter.admit_run("acme")
    assert first.lease is not None
    await limiter.release_run(first.lease)
    await limiter.release_run(first.lease)  # e.g. the gateway after a start that timed out
    assert await _running(limiter) == 1
    assert [(await limiter.admit_run("acme")).ok for _ in range(2)] == [True, False]
    assert await _running(limiter) == 2


async def test_a_lease_it_never_gave_frees_nothing() -> None:
    # A shadow run takes no lease; a forged or stale id is just as unknown.
    limiter, _, _ = _limiter(acme=TenantLimits(concurrent_runs=1))
    assert (await limiter.admit_run("acme")).ok
    for unknown in ("", "not-a-lease", "0" * 32):
        await limiter.release_run(unknown)
    assert await _running(limiter) == 1
    assert not (await limiter.admit_run("acme")).ok


async def test_a_lease_not_renewed_expires_after_its_ttl() -> None:
    clock, wall = Clock(1000.0), Clock(LATE_EVENING)
    limiter = TenantLimiter(
        {"acme": TenantLimits(concurrent_runs=3)}, clock=clock, wall_clock=wall, lease_ttl_s=60.0
    )
    kept, lost = (await limiter.admit_run("acme")).lease, (await limiter.admit_run("acme")).lease
    assert kept is not None and lost is not None
    _advance(clock, wall, 40.0)
    assert await limiter.renew_runs([kept]) == []  # a host renews its live run's lease
    _advance(clock, wall, 19.9)
    assert await _running(limiter) == 2  # `lost` has 0.1 s to go
    _advance(clock, wall, 0.1)
    assert await _running(limiter) == 1  # its release was lost, or its host died: freed
    assert await limiter.renew_runs([kept, lost]) == [lost]  # expired: not taken again
    await limiter.release_run(lost)  # a late release of an expired lease frees nothing more
    assert await _running(limiter) == 1
    _advance(clock, wall, 59.9)
    assert await _running(limiter) == 1  # renewed at +59.9: good until +119.9
    await limiter.release_run(kept)
    assert await _running(limiter) == 0


async def test_renewing_many_leases_is_one_call_and_keeps_them_all() -> None:
    clock, wall = Clock(1000.0), Clock(LATE_EVENING)
    limiter = TenantLimiter({}, clock=clock, wall_clock=wall, lease_ttl_s=60.0)
    leases = [(await limiter.admit_run(t)).lease or "" for t in ("acme", "globex") * 50]
    for _ in range(10):  # ten intervals of 30 s, far past the TTL
        _advance(clock, wall, 30.0)
        assert await limiter.renew_runs(leases) == []
    assert (await _running(limiter, "acme"), await _running(limiter, "globex")) == (50, 50)


# -- restarts ----------------------------------------------------------------------------


Restart = Callable[..., TenantLimiter]


@pytest.fixture
async def restarted(tmp_path: Path) -> AsyncIterator[Restart]:
    """A new limiter on the same state, as Ray builds it again after a crash, in a new
    process (its own connections): no limits given, so the stored ones apply."""
    opened: list[State] = []

    def restart(
        clock: Clock, wall: Clock, limits: dict[str, TenantLimits] | None = None
    ) -> TenantLimiter:
        opened.append(State(f"sqlite://{tmp_path / 'state'}"))
        return TenantLimiter(
            limits, clock=clock, wall_clock=wall, lease_ttl_s=60.0, state=opened[-1].limiter
        )

    yield restart
    for state in opened:
        await state.close()


async def test_a_restarted_limiter_keeps_todays_spend_leases_and_limits(restarted: Restart) -> None:
    clock, wall = Clock(1000.0), Clock(LATE_EVENING)
    limits = TenantLimits(concurrent_runs=2, daily_budget_usd=1.0)
    limiter = restarted(clock, wall)
    await limiter.update_limits({"acme": limits})
    held = await limiter.reserve("acme", 10, 0.5)
    await limiter.settle(held.reservation or "", 10, 0.4)
    live, ended = (await limiter.admit_run("acme")).lease, (await limiter.admit_run("acme")).lease
    assert live is not None and ended is not None
    await limiter.release_run(ended)

    # A new process: its own monotonic clock, the same wall clock.
    clock = Clock(5.0)
    again = restarted(clock, wall)
    usage = await again.usage("acme")
    assert (usage["spent_usd"], usage["running_runs"]) == (pytest.approx(0.4), 1)
    assert not (await again.reserve("acme", 10, 0.7)).ok  # 0.4 spent + 0.7 > 1.0
    assert [(await again.admit_run("acme")).ok for _ in range(2)] == [True, False]
    await again.release_run(ended)  # released before the restart: still nothing to free
    await again.release_run(live)  # the run that was live across the restart ends
    assert await _running(again) == 1


async def test_reloaded_leases_expire_one_ttl_after_the_restart(restarted: Restart) -> None:
    clock, wall = Clock(1000.0), Clock(LATE_EVENING)
    limiter = restarted(clock, wall)
    orphan = (await limiter.admit_run("acme")).lease
    renewed = (await limiter.admit_run("acme")).lease
    assert orphan is not None and renewed is not None
    # Down for an hour, far past the TTL: a reloaded lease still gets a full TTL, so the
    # hosts of live runs have time to renew it.
    wall.advance(3600.0)
    clock = Clock(0.0)  # a new process's monotonic clock
    again = restarted(clock, wall)
    assert await _running(again) == 2
    _advance(clock, wall, 30.0)
    assert await again.renew_runs([renewed]) == []  # its host renews it under the same id
    _advance(clock, wall, 30.0)
    assert await _running(again) == 1  # the orphan (its host died) is freed
    await again.release_run(renewed)  # written after the orphan's expiry: both are durable
    third = restarted(clock, wall)
    assert await _running(third) == 0
    assert await third.renew_runs([orphan, renewed]) == [orphan, renewed]


async def test_yesterdays_spend_is_not_reloaded(restarted: Restart) -> None:
    clock, wall = Clock(1000.0), Clock(LATE_EVENING)
    limiter = restarted(clock, wall)
    held = await limiter.reserve("acme", 10, 0.5)
    await limiter.settle(held.reservation or "", 10, 0.5)
    _advance(clock, wall, 3600.0)  # past UTC midnight
    assert (await restarted(clock, wall).usage("acme"))["spent_usd"] == 0.0


async def test_limits_given_at_start_win_over_stored_ones(restarted: Restart) -> None:
    clock, wall = Clock(1000.0), Clock(LATE_EVENING)
    await restarted(clock, wall).update_limits({"acme": TenantLimits(concurrent_runs=1)})
    given = restarted(clock, wall, {})
    assert all([(await given.admit_run("acme")).ok for _ in range(3)])


async def test_an_admission_that_cannot_be_stored_takes_no_slot(
    restarted: Restart, tmp_path: Path
) -> None:
    limiter = restarted(Clock(1000.0), Clock(LATE_EVENING))
    await limiter.update_limits({"acme": TenantLimits(concurrent_runs=1)})
    with contextlib.closing(sqlite3.connect(tmp_path / "state" / "limiter.sqlite")) as db:
        db.execute("DROP TABLE limiter_leases")  # the disk fails under the limiter
    with pytest.raises(Overloaded):  # 503 + Retry-After at the gateway: a lease no restart
        await limiter.admit_run("acme")  # would know never reaches a run
    assert await _running(limiter) == 0


async def test_the_actor_class_reads_its_state_before_answering(tmp_path: Path) -> None:
    # What TenantLimiterActor runs, built without Ray: a URL, not a connection, crosses;
    # it starts reading at once, and its first call waits for the read.
    url = f"sqlite://{tmp_path / 'state'}"
    first = _TenantLimiterHost(None, state_url=url)
    await first.update_limits({"acme": TenantLimits(concurrent_runs=1)})
    assert (await first.admit_run("acme")).ok
    again = _TenantLimiterHost(None, state_url=url)
    refused = await again.admit_run("acme")  # the stored limit and the stored slot hold
    assert (refused.ok, refused.limit) == (False, "concurrent_runs")


async def test_a_state_that_cannot_be_read_refuses_calls_until_it_can(
    restarted: Restart, tmp_path: Path
) -> None:
    clock, wall = Clock(1000.0), Clock(LATE_EVENING)
    await restarted(clock, wall).update_limits({"acme": TenantLimits(concurrent_runs=1)})
    versions = "UPDATE schema_versions SET version = ? WHERE concern = 'limiter'"
    with contextlib.closing(sqlite3.connect(tmp_path / "state" / "limiter.sqlite")) as db, db:
        db.execute(versions, (99,))  # as if a newer rayfleet had written it
    limiter = restarted(clock, wall)
    with pytest.raises(Overloaded, match=r"cannot read its state.*newer rayfleet"):
        await limiter.admit_run("acme")
    with contextlib.closing(sqlite3.connect(tmp_path / "state" / "limiter.sqlite")) as db, db:
        db.execute(versions, (1,))
    assert (await limiter.admit_run("acme")).ok  # read now: the stored limit applies
    assert not (await limiter.admit_run("acme")).ok


async def test_a_spend_that_cannot_be_stored_yet_waits_until_it_is(
    restarted: Restart, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # A run's model call was made and paid while the state is down: settling it must not
    # fail the run, nor forget the dollars; it waits until they are stored.
    clock, wall = Clock(1000.0), Clock(LATE_EVENING)
    limiter = restarted(clock, wall)
    held = await limiter.reserve("acme", 10, 0.5)
    path = tmp_path / "state" / "limiter.sqlite"
    with contextlib.closing(sqlite3.connect(path)) as db:
        (ddl,) = db.execute("SELECT sql FROM sqlite_master WHERE name = 'limiter_spend'").fetchone()
        db.execute("DROP TABLE limiter_spend")  # the state fails under the limiter
    settling = asyncio.create_task(limiter.settle(held.reservation or "", 10, 0.4))
    await eventually(lambda: _failed_writes(caplog, 2))
    assert not settling.done()
    with contextlib.closing(sqlite3.connect(path)) as db:
        db.execute(ddl)  # the state is back
    await asyncio.wait_for(settling, 10)
    again = restarted(Clock(5.0), wall)
    assert (await again.usage("acme"))["spent_usd"] == pytest.approx(0.4)


async def _failed_writes(caplog: pytest.LogCaptureFixture, at_least: int) -> bool:
    await asyncio.sleep(0)
    failed = [r for r in caplog.records if "limiter state write failed" in r.getMessage()]
    return len(failed) >= at_least
