"""TenantLimiter: per-tenant requests/min, tokens/min, concurrent runs and a daily dollar budget.

One limiter is the single authority for the whole cluster (`TenantLimiterActor`, shared by
every gateway replica and run host), so totals are exact however many replicas there are;
per-replica counters would admit limit x replicas.

    admit_run ──> takes 1 request token AND 1 run slot (a lease), or nothing
              ──> renew_runs (each run host, for all its live runs at once, every ttl/3)
              ──> release_run(lease)        (once the run ends; a second release: no-op)
    reserve(estimate) ──> tokens from the tokens/min bucket AND dollars against the daily
                          budget, or nothing ──> model call ──> settle(actual)

Rates are token buckets: capacity = the per-minute limit, refilled continuously at limit/60
per second, starting full. The daily budget counts dollars spent (settled) plus dollars
reserved, and resets at UTC midnight. A tenant without limits is unlimited, but still
counted (usage() works for it, and limits set later start from its real counters).

A run slot is a lease stored with its run, so a run resumed on another host holds the same
slot, only the run that took a slot frees it, and freeing it twice frees it once. A lease not
renewed for `lease_ttl_s` (its run's host died and the run was never resumed, or its release
was lost) expires and frees its slot.

With a `state` (actors.state.limiter), what a restart must not lose is written there before a
call answers: dollars settled today, live leases, the last limits pushed. It is read back
before the first call is answered; reloaded leases get a full TTL from the restart (their
hosts renew them by then). Token buckets and reservations in flight are not kept: buckets
restart full (at most one minute's worth of extra requests or tokens per restart), and a
call in flight across a restart settles unknown, uncharged.

A plain class with no Ray: time comes from `clock` (monotonic: buckets, reservation and lease
TTLs) and `wall_clock` (Unix time: the UTC day). The Ray shell is at the bottom.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import math
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import ray
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from actors.state import process_state
from actors.state.limiter import (
    LimiterState,
    Saved,
    Write,
    add_spend,
    drop_lease,
    put_lease,
    put_limits,
)
from agents.errors import Overloaded
from agents.logs import configure_logging, first_traceback

logger = logging.getLogger("rayfleet")
LimitName = Literal["requests_per_min", "tokens_per_min", "concurrent_runs", "daily_budget_usd"]

_DAY_S = 86_400.0
# Float arithmetic may leave a bucket 1e-15 short after waiting exactly retry_after_s, or a
# sum of dollars 1e-16 over the budget; neither may turn into a refusal.
_EPSILON = 1e-9
# A wait that depends on other callers finishing (a run ending, a reservation settling)
# cannot be computed: a hint.
_HINT_RETRY_S = 1.0
# Backoff between tries to store a settled spend while the state is down.
_SPEND_RETRY_FIRST_S = 0.1
_SPEND_RETRY_MAX_S = 2.0


class TenantLimits(BaseModel):
    """One tenant's limits; None means unlimited."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    requests_per_min: int | None = Field(
        None, gt=0, strict=True, description="Runs started per minute (token bucket)."
    )
    tokens_per_min: int | None = Field(
        None, gt=0, strict=True, description="Model tokens (input + output) per minute."
    )
    concurrent_runs: int | None = Field(
        None, gt=0, strict=True, description="Runs in progress at any one time."
    )
    daily_budget_usd: float | None = Field(
        None, gt=0, allow_inf_nan=False, description="Dollars per UTC day, spent + reserved."
    )


class Admission(BaseModel):
    """The answer to admit_run or reserve, with what the RateLimit headers need."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    ok: bool = Field(description="True: admitted, and the units were taken.")
    limit: LimitName | None = Field(None, description="The limit that refused; None when ok.")
    retry_after_s: float = Field(0.0, ge=0, description="Wait before asking again; 0 when ok.")
    policy: LimitName | None = Field(
        None, description="The limit the RateLimit fields describe (the tightest one involved)."
    )
    quota: int | float | None = Field(None, description="RateLimit-Limit: that limit's value.")
    remaining: int | float | None = Field(
        None, description="RateLimit-Remaining: units left now; None when unlimited."
    )
    reset_s: float = Field(0.0, ge=0, description="RateLimit-Reset: seconds until it is full.")
    reservation: str | None = Field(None, description="reserve(): the id to settle with.")
    lease: str | None = Field(None, description="admit_run(): the run slot's id, to release.")


class _Bucket:
    """A token bucket that refills continuously; its level may go negative (debt)."""

    __slots__ = ("capacity", "level", "rate_per_s", "updated")

    def __init__(self, capacity: int, now: float) -> None:
        self.capacity = float(capacity)
        self.rate_per_s = capacity / 60.0
        self.level = self.capacity
        self.updated = now

    def refill(self, now: float) -> None:
        elapsed = max(0.0, now - self.updated)
        self.level = min(self.capacity, self.level + elapsed * self.rate_per_s)
        self.updated = now

    def need(self, units: float) -> float:
        """Level required before `units` may be taken. More than the capacity can never be
        there at once, so an oversized take waits for a full bucket and leaves a debt that
        is repaid before anything else is admitted: the long-run rate still holds."""
        return min(units, self.capacity)

    def wait_s(self, units: float) -> float:
        """Seconds until `units` may be taken (0: now). Call refill first."""
        short = self.need(units) - self.level
        return 0.0 if short <= _EPSILON else short / self.rate_per_s

    def reset_s(self) -> float:
        return max(0.0, (self.capacity - self.level) / self.rate_per_s)

    def resize(self, capacity: int) -> None:
        self.capacity = float(capacity)
        self.rate_per_s = capacity / 60.0
        self.level = min(self.level, self.capacity)


@dataclass
class _Tenant:
    limits: TenantLimits
    requests: _Bucket | None
    tokens: _Bucket | None
    running: int = 0
    day: int = 0
    spent_usd: float = 0.0
    reserved_usd: float = 0.0
    reserved_tokens: int = 0


@dataclass
class _Reservation:
    tenant: str
    tokens: int
    cost_usd: float
    created: float


@dataclass
class _Lease:
    tenant: str
    expires: float


@dataclass(frozen=True)
class _Quota:
    """Where one limit stands: why it refused (retry_after_s > 0) or what the headers say."""

    limit: LimitName
    retry_after_s: float
    quota: int | float
    remaining: int | float
    reset_s: float


_UNLIMITED = TenantLimits()


class TenantLimiter:
    """Token buckets, run slots and daily budgets per tenant. No Ray in here.

    Every method is free of `await` between checking a limit and taking from it, so on one
    event loop (the async actor) each call is atomic: concurrent callers can never both take
    the last unit, and a refusal by one limit takes nothing from the others. (Each first
    awaits `_ready()`, before it looks at anything: the stored state, read once.)
    """

    def __init__(
        self,
        limits: Mapping[str, TenantLimits] | None,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
        *,
        reservation_ttl_s: float = 600.0,
        lease_ttl_s: float = 60.0,
        state: LimiterState | None = None,
    ) -> None:
        """`limits` None: the last ones stored in `state` (none: every tenant unlimited)."""
        if reservation_ttl_s <= 0 or lease_ttl_s <= 0:
            raise ValueError(f"TTLs must be > 0, not {reservation_ttl_s}, {lease_ttl_s}")
        self._clock = clock
        self._wall_clock = wall_clock
        self._ttl_s = reservation_ttl_s
        self._lease_ttl_s = lease_ttl_s
        self._limits: dict[str, TenantLimits] = {}
        self._tenants: dict[str, _Tenant] = {}
        # Insertion order is creation order (the clock is monotonic), so expiry pops from the
        # front and stops at the first young entry. Expired reservations are released and
        # kept as tombstones for one more TTL, so a late settle still charges, once.
        self._held: OrderedDict[str, _Reservation] = OrderedDict()
        self._released: OrderedDict[str, _Reservation] = OrderedDict()
        # Leases, soonest expiry first: a renewal moves a lease to the end.
        self._leases: OrderedDict[str, _Lease] = OrderedDict()
        self._ids = itertools.count(1)
        self._prefix = uuid.uuid4().hex[:12]
        self._state = state
        self._given = None if limits is None else dict(limits)
        self._loading: asyncio.Task[None] | None = None
        self._loaded = state is None
        if state is None:
            self._apply(self._given, None)

    # -- configuration -------------------------------------------------------------------

    async def _ready(self) -> None:
        """Read the stored state, once, before anything is answered. A failed read (the
        state is down) fails the calls waiting for it; the next call tries again."""
        if self._loaded:
            return
        if self._loading is None or (
            self._loading.done() and self._loading.exception() is not None
        ):
            self._loading = asyncio.get_running_loop().create_task(self._load())
        await asyncio.shield(self._loading)

    async def _load(self) -> None:
        assert self._state is not None
        try:
            saved = await self._state.load(self._day())
        except Exception as exc:
            logger.warning("limiter state read failed: %r", exc, exc_info=first_traceback(exc))
            raise Overloaded(f"the tenant limiter cannot read its state: {exc}", 5.0) from exc
        if not self._loaded:
            self._apply(self._given, saved)
            self._loaded = True

    def _apply(self, limits: Mapping[str, TenantLimits] | None, saved: Saved | None) -> None:
        if limits is None:
            limits = {}
            if saved is not None and saved.limits is not None:
                try:
                    limits = _limits_from_json(saved.limits)
                except (ValueError, ValidationError) as exc:  # written by another version
                    logger.warning("stored tenant limits ignored: %r", exc)
        self._apply_limits(limits)
        if saved is not None:
            for tenant, usd in saved.spend_usd.items():
                self._tenant(tenant).spent_usd = usd
            expires = self._clock() + self._lease_ttl_s
            for lease, tenant in saved.leases.items():
                self._leases[lease] = _Lease(tenant, expires)
                self._tenant(tenant).running += 1

    async def update_limits(self, limits: Mapping[str, TenantLimits]) -> None:
        """Replace every tenant's limits (Serve `reconfigure`). Buckets keep their level,
        clipped to the new capacity; a new limit starts full; a tenant left out is unlimited.
        Counters (running runs, dollars spent and reserved) are kept. Stored: a restarted
        limiter starts with them."""
        await self._ready()
        self._apply_limits(limits)
        body = {name: limit.model_dump(mode="json") for name, limit in self._limits.items()}
        await self._durable(put_limits(json.dumps(body, sort_keys=True)))

    def _apply_limits(self, limits: Mapping[str, TenantLimits]) -> None:
        self._limits = dict(limits)
        now = self._clock()
        for name, tenant in self._tenants.items():
            new = self._limits.get(name, _UNLIMITED)
            tenant.requests = _rebucket(tenant.requests, new.requests_per_min, now)
            tenant.tokens = _rebucket(tenant.tokens, new.tokens_per_min, now)
            tenant.limits = new

    # -- runs ----------------------------------------------------------------------------

    async def admit_run(self, tenant: str) -> Admission:
        """Take one request token and one concurrent-run slot, both or neither. Admitted,
        the answer carries the slot's lease, to store with the run and release once."""
        await self._ready()
        state = self._tenant(tenant)
        limits = state.limits
        refusals: list[_Quota] = []
        if state.requests is not None:
            wait = state.requests.wait_s(1)
            if wait > 0:
                refusals.append(_bucket_quota("requests_per_min", state.requests, wait))
        if limits.concurrent_runs is not None and state.running >= limits.concurrent_runs:
            refusals.append(_Quota("concurrent_runs", _HINT_RETRY_S, limits.concurrent_runs, 0, 0))
        if refusals:
            return _refused(refusals)
        if state.requests is not None:
            state.requests.level -= 1
        state.running += 1
        lease = uuid.uuid4().hex
        self._leases[lease] = _Lease(tenant, self._clock() + self._lease_ttl_s)
        admitted = _admitted(self._run_views(state), lease=lease)
        try:  # a lease a restart would forget must not reach its run
            await self._durable(put_lease(lease, tenant))
        except BaseException:
            self._free(lease)
            raise
        return admitted

    async def release_run(self, lease: str) -> None:
        """Free the run slot of `lease`. Idempotent: an unknown, expired or already released
        lease frees nothing."""
        await self._ready()
        if self._free(lease):
            await self._durable(drop_lease(lease))

    async def renew_runs(self, leases: Sequence[str]) -> list[str]:
        """Keep these leases (a host's live runs) for another TTL, in one call per host.
        Returns those it does not hold (expired or released): they are not taken again."""
        await self._ready()
        self._expire()
        expires = self._clock() + self._lease_ttl_s
        unknown = []
        for lease in leases:
            held = self._leases.get(lease)
            if held is None:
                unknown.append(lease)
                continue
            held.expires = expires
            self._leases.move_to_end(lease)
        return unknown

    # -- model calls ---------------------------------------------------------------------

    async def reserve(self, tenant: str, tokens: int, cost_usd: float) -> Admission:
        """Before a model call: reserve its estimated tokens (tokens/min) and dollars (daily
        budget: spent + reserved + this <= budget), both or neither."""
        await self._ready()
        if tokens < 0 or not cost_usd >= 0 or math.isinf(cost_usd):
            raise ValueError(f"tokens and cost_usd must be >= 0, not {tokens}, {cost_usd}")
        state = self._tenant(tenant)
        budget = state.limits.daily_budget_usd
        refusals: list[_Quota] = []
        if state.tokens is not None:
            wait = state.tokens.wait_s(tokens)
            if wait > 0:
                refusals.append(_bucket_quota("tokens_per_min", state.tokens, wait))
        if (
            budget is not None
            and state.spent_usd + state.reserved_usd + cost_usd > budget + _EPSILON
        ):
            midnight_s = self._to_midnight_s()
            left = max(0.0, budget - state.spent_usd - state.reserved_usd)
            # If only calls in flight stand in the way, it may fit once they settle: a hint.
            fits_later = state.spent_usd + cost_usd <= budget + _EPSILON
            wait = _HINT_RETRY_S if fits_later else midnight_s
            refusals.append(_Quota("daily_budget_usd", wait, budget, left, midnight_s))
        if refusals:
            return _refused(refusals)
        if state.tokens is not None:
            state.tokens.level -= tokens
        state.reserved_tokens += tokens
        state.reserved_usd += cost_usd
        rid = f"{self._prefix}-{next(self._ids)}"
        self._held[rid] = _Reservation(tenant, tokens, cost_usd, self._clock())
        return _admitted(self._call_views(state), reservation=rid)

    async def settle(self, reservation: str, tokens: int, cost_usd: float) -> None:
        """Replace a reservation by the actual usage. The tokens/min bucket gets back (or
        loses, possibly below zero) the difference; the dollars are spent. An unknown or
        already settled id is ignored; one released by the TTL is still charged, once."""
        await self._ready()
        if tokens < 0 or not cost_usd >= 0 or math.isinf(cost_usd):
            raise ValueError(f"tokens and cost_usd must be >= 0, not {tokens}, {cost_usd}")
        self._expire()
        held = self._held.pop(reservation, None)
        if held is not None:
            state = self._tenant(held.tenant)
            state.reserved_tokens -= held.tokens
            state.reserved_usd = max(0.0, state.reserved_usd - held.cost_usd)
        else:
            held = self._released.pop(reservation, None)
            if held is None:
                return
            state = self._tenant(held.tenant)
        if state.tokens is not None:
            bucket = state.tokens
            bucket.level = min(bucket.capacity, bucket.level + held.tokens - tokens)
        state.spent_usd += cost_usd
        if cost_usd > 0:
            await self._spent_durably(add_spend(held.tenant, state.day, cost_usd))

    # -- inspection ----------------------------------------------------------------------

    async def usage(self, tenant: str) -> dict[str, float]:
        """Counters for one tenant: dollars spent today and reserved, tokens reserved, runs
        in progress, and the bucket levels of the limits it has."""
        await self._ready()
        state = self._tenant(tenant)
        out = {
            "spent_usd": state.spent_usd,
            "reserved_usd": state.reserved_usd,
            "reserved_tokens": float(state.reserved_tokens),
            "running_runs": float(state.running),
        }
        if state.requests is not None:
            out["requests_available"] = state.requests.level
        if state.tokens is not None:
            out["tokens_available"] = state.tokens.level
        return out

    # -- internals -----------------------------------------------------------------------

    def _tenant(self, name: str) -> _Tenant:
        """The tenant's state, brought up to now: stale reservations released, buckets
        refilled, yesterday's dollars forgotten."""
        self._expire()
        now = self._clock()
        day = self._day()
        state = self._tenants.get(name)
        if state is None:
            limits = self._limits.get(name, _UNLIMITED)
            state = _Tenant(
                limits,
                _rebucket(None, limits.requests_per_min, now),
                _rebucket(None, limits.tokens_per_min, now),
                day=day,
            )
            self._tenants[name] = state
        if day != state.day:
            # Reservations in flight across midnight stay reserved; settled, they count today.
            state.day = day
            state.spent_usd = 0.0
        for bucket in (state.requests, state.tokens):
            if bucket is not None:
                bucket.refill(now)
        return state

    def _expire(self) -> None:
        """Free leases not renewed for their TTL. Release reservations older than the TTL
        (their caller died); forget tombstones older than twice the TTL. Each loop pops from
        the front and stops at a young entry."""
        now = self._clock()
        while self._leases:
            lease, run = next(iter(self._leases.items()))
            if run.expires > now:
                break
            self._free(lease)
            if self._state is not None:
                self._state.write_soon(drop_lease(lease))
        cutoff = now - self._ttl_s
        while self._released:
            rid, held = next(iter(self._released.items()))
            if held.created > cutoff - self._ttl_s:
                break
            del self._released[rid]
        while self._held:
            rid, held = next(iter(self._held.items()))
            if held.created > cutoff:
                break
            del self._held[rid]
            state = self._tenants[held.tenant]
            state.reserved_tokens -= held.tokens
            state.reserved_usd = max(0.0, state.reserved_usd - held.cost_usd)
            # The call may well have happened: its tokens stay taken from the bucket.
            self._released[rid] = held

    def _free(self, lease: str) -> bool:
        """Forget the lease and free its slot; False if it was not held."""
        held = self._leases.pop(lease, None)
        if held is None:
            return False
        state = self._tenants[held.tenant]
        state.running = max(0, state.running - 1)
        return True

    async def _durable(self, *writes: Write) -> None:
        if self._state is not None:
            await self._state.write(*writes)

    async def _spent_durably(self, write: Write) -> None:
        """Store a spend, again until it is stored. The model call was made and paid: failing
        the run now (the state is restarting) would throw its work away, and a spend never
        stored would be forgotten by a restart. So the run waits, as its events wait for
        the run host's flush."""
        delay_s = _SPEND_RETRY_FIRST_S
        while True:
            try:
                await self._durable(write)
                return
            except Overloaded:  # logged by the state's committer
                await asyncio.sleep(delay_s)
                delay_s = min(2 * delay_s, _SPEND_RETRY_MAX_S)

    def _day(self) -> int:
        return int(self._wall_clock() // _DAY_S)

    def _to_midnight_s(self) -> float:
        return _DAY_S - (self._wall_clock() % _DAY_S)

    def _run_views(self, state: _Tenant) -> Iterable[_Quota]:
        limits = state.limits
        if state.requests is not None:
            yield _bucket_quota("requests_per_min", state.requests, 0.0)
        if limits.concurrent_runs is not None:
            left = max(0, limits.concurrent_runs - state.running)
            yield _Quota("concurrent_runs", 0.0, limits.concurrent_runs, left, 0.0)

    def _call_views(self, state: _Tenant) -> Iterable[_Quota]:
        budget = state.limits.daily_budget_usd
        if state.tokens is not None:
            yield _bucket_quota("tokens_per_min", state.tokens, 0.0)
        if budget is not None:
            left = max(0.0, budget - state.spent_usd - state.reserved_usd)
            yield _Quota("daily_budget_usd", 0.0, budget, left, self._to_midnight_s())


def _rebucket(bucket: _Bucket | None, capacity: int | None, now: float) -> _Bucket | None:
    if capacity is None:
        return None
    if bucket is None:
        return _Bucket(capacity, now)
    bucket.refill(now)
    bucket.resize(capacity)
    return bucket


def _bucket_quota(limit: LimitName, bucket: _Bucket, wait_s: float) -> _Quota:
    remaining = max(0, math.floor(bucket.level + _EPSILON))
    return _Quota(limit, wait_s, int(bucket.capacity), remaining, bucket.reset_s())


def _refused(refusals: list[_Quota]) -> Admission:
    # The caller must wait for every refusing limit: report the longest wait.
    worst = max(refusals, key=lambda r: r.retry_after_s)
    return Admission(
        ok=False,
        limit=worst.limit,
        retry_after_s=worst.retry_after_s,
        policy=worst.limit,
        quota=worst.quota,
        remaining=worst.remaining,
        reset_s=worst.reset_s,
    )


def _limits_from_json(body: str) -> dict[str, TenantLimits]:
    stored = json.loads(body)
    return {name: TenantLimits.model_validate(limit) for name, limit in stored.items()}


def _admitted(
    views: Iterable[_Quota], reservation: str | None = None, lease: str | None = None
) -> Admission:
    # The headers describe the limit closest to exhaustion, as a share of its quota.
    tightest = min(views, key=lambda v: v.remaining / v.quota, default=None)
    if tightest is None:
        return Admission(ok=True, reservation=reservation, lease=lease)
    return Admission(
        ok=True,
        policy=tightest.limit,
        quota=tightest.quota,
        remaining=tightest.remaining,
        reset_s=tightest.reset_s,
        reservation=reservation,
        lease=lease,
    )


class _TenantLimiterHost(TenantLimiter):
    """The TenantLimiter inside its actor: opens its state from a URL in the actor's own
    process (connections do not pickle), and starts reading it at once."""

    def __init__(
        self,
        limits: Mapping[str, TenantLimits] | None,
        *,
        state_url: str | None = None,
        reservation_ttl_s: float = 600.0,
        lease_ttl_s: float = 60.0,
    ) -> None:
        configure_logging("limiter")
        super().__init__(
            limits,
            reservation_ttl_s=reservation_ttl_s,
            lease_ttl_s=lease_ttl_s,
            state=process_state(state_url).limiter,
        )
        # An async actor builds itself in its event loop; the first call awaits this read.
        self._loading = asyncio.get_running_loop().create_task(self._load())
        self._loading.add_done_callback(_retrieved)


def _retrieved(task: asyncio.Task[None]) -> None:
    if not task.cancelled():
        task.exception()  # a failed read is logged, and raised to the calls that wait for it


# Ray's stubs lack actor options (max_concurrency) in the keyword overload of `remote`.
# An async actor runs every method (sync ones too) on one event loop, and no method awaits
# between its check and its take: each call is atomic by construction, with no lock.
TenantLimiterActor = ray.remote(num_cpus=0, max_concurrency=1000)(_TenantLimiterHost)  # type: ignore[call-overload]
