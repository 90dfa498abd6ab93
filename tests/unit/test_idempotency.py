"""Idempotency-Key: one creation per (tenant, endpoint, key), on the real state (SQLite)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from actors.state import State
from actors.state.runs import IdempotencyKeys
from agents.errors import Conflict, RequestInvalid, ServiceUnavailable, TenantLimited
from serve_app.http_errors import status_for
from serve_app.idempotency import HEADER, Idempotency, fingerprint, key_of
from serve_app.schemas import RunRequest

ASK = RunRequest(input="Where is order 1234?")
OTHER = RunRequest(input="Where is order 9999?")


class Clock:
    def __init__(self) -> None:
        self.now = 1_000.0

    def __call__(self) -> float:
        return self.now


class Creator:
    """Creates ids one after another; can be held (to race) or made to fail."""

    def __init__(self) -> None:
        self.calls: list[str | None] = []
        self.hold: asyncio.Event | None = None
        self.fail: Exception | None = None

    async def __call__(self, proposed: str | None) -> str:
        self.calls.append(proposed)
        if self.hold is not None:
            await self.hold.wait()
        if self.fail is not None:
            raise self.fail
        return proposed or f"run-{len(self.calls)}"


async def started(create: Creator) -> None:
    """Until the first request is inside `create` (bounded)."""
    for _ in range(1000):
        if create.calls:
            return
        await asyncio.sleep(0.005)
    raise AssertionError("create was never called")


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[IdempotencyKeys]:
    state = State(f"sqlite://{tmp_path}")
    try:
        yield state.keys
    finally:
        await state.close()


@pytest.fixture
def keys(store: IdempotencyKeys, clock: Clock) -> Idempotency:
    return Idempotency(store, ttl_s=86_400, pending_s=60, wait_s=0.5, poll_s=0.01, clock=clock)


def key(value: str) -> dict[str, str]:
    return {HEADER: value}


async def test_without_a_key_every_request_creates(keys: Idempotency) -> None:
    create = Creator()
    first = await keys.once({}, "acme", "runs", "support", ASK, create)
    second = await keys.once({}, "acme", "runs", "support", ASK, create)
    assert (first.id, second.id) == ("run-1", "run-2")
    assert not first.replayed and not second.replayed


async def test_a_repeated_key_returns_the_first_creation(keys: Idempotency) -> None:
    create = Creator()
    first = await keys.once(key("k1"), "acme", "runs", "support", ASK, create)
    again = await keys.once(key("k1"), "acme", "runs", "support", ASK, create)
    assert again.id == first.id == "run-1"
    assert again.replayed and again.headers() == {"Idempotent-Replayed": "true"}
    assert first.headers() == {}
    assert len(create.calls) == 1


async def test_keys_are_per_tenant_and_per_endpoint(keys: Idempotency) -> None:
    create = Creator()
    acme = await keys.once(key("k1"), "acme", "runs", "support", ASK, create)
    globex = await keys.once(key("k1"), "globex", "runs", "support", ASK, create)
    batches = await keys.once(key("k1"), "acme", "batches", "support", ASK, create)
    assert len({acme.id, globex.id, batches.id}) == 3
    assert not (globex.replayed or batches.replayed)


@pytest.mark.parametrize(("agent", "body"), [("support", OTHER), ("billing", ASK)])
async def test_a_key_reused_for_another_request_is_a_422(
    keys: Idempotency, agent: str, body: RunRequest
) -> None:
    create = Creator()
    await keys.once(key("k1"), "acme", "runs", "support", ASK, create)
    with pytest.raises(RequestInvalid, match="already used with a different request") as err:
        await keys.once(key("k1"), "acme", "runs", agent, body, create)
    assert err.value.field == HEADER and status_for(err.value) == 422
    assert len(create.calls) == 1


async def test_concurrent_requests_with_one_key_create_once(keys: Idempotency) -> None:
    create = Creator()
    create.hold = asyncio.Event()
    first = asyncio.create_task(keys.once(key("k1"), "acme", "runs", "support", ASK, create))
    await started(create)
    others = [
        asyncio.create_task(keys.once(key("k1"), "acme", "runs", "support", ASK, create))
        for _ in range(5)
    ]
    create.hold.set()
    results = await asyncio.gather(first, *others)
    assert {r.id for r in results} == {"run-1"}
    assert [r.replayed for r in results] == [False] + [True] * 5
    assert len(create.calls) == 1


async def test_a_retry_while_the_first_is_still_running_is_a_409_after_a_wait(
    keys: Idempotency,
) -> None:
    create = Creator()
    create.hold = asyncio.Event()
    first = asyncio.create_task(keys.once(key("k1"), "acme", "runs", "support", ASK, create))
    await started(create)
    with pytest.raises(Conflict, match="still being handled") as err:
        await keys.once(key("k1"), "acme", "runs", "support", ASK, create)
    assert status_for(err.value) == 409 and err.value.retry_after_s == 1.0
    create.hold.set()
    assert (await first).id == "run-1"


async def test_a_failed_first_request_frees_the_key(keys: Idempotency) -> None:
    create = Creator()
    create.fail = TenantLimited("over the limit", 1.0)
    with pytest.raises(TenantLimited):
        await keys.once(key("k1"), "acme", "runs", "support", ASK, create)
    create.fail = None
    retried = await keys.once(key("k1"), "acme", "runs", "support", ASK, create)
    assert retried.id == "run-2" and not retried.replayed


async def test_keys_expire(keys: Idempotency, clock: Clock) -> None:
    create = Creator()
    await keys.once(key("k1"), "acme", "runs", "support", ASK, create)
    clock.now += 86_400 - 1
    assert (await keys.once(key("k1"), "acme", "runs", "support", ASK, create)).replayed
    clock.now += 2
    later = await keys.once(key("k1"), "acme", "runs", "support", OTHER, create)
    assert later.id == "run-2" and not later.replayed


async def test_a_dead_claim_is_taken_over_with_the_id_it_proposed(
    keys: Idempotency, store: IdempotencyKeys, clock: Clock
) -> None:
    # A gateway claimed the key for batch-a, then died before answering (no finish, no
    # release): the claim stays pending until pending_s, then a retry takes it over.
    scope = '["acme", "batches", "k1"]'
    claim = await store.claim_key(scope, fingerprint("support", ASK), "batch-a", clock.now, 99, 60)
    assert claim.state == "claimed"
    create = Creator()
    clock.now += 61
    retry = await keys.once(key("k1"), "acme", "batches", "support", ASK, create, "batch-b")
    assert retry.id == "batch-a" and create.calls == ["batch-a"]  # the same batch, again


def test_key_syntax() -> None:
    assert key_of(None) is None
    assert key_of("abc-123") == "abc-123"
    assert key_of('"8e03978e-40d5"') == "8e03978e-40d5"  # the draft's sf-string form
    for bad in ("", "a b", "x" * 256, "caf\u00e9", '""'):
        with pytest.raises(RequestInvalid) as err:
            key_of(bad)
        assert err.value.field == HEADER


async def test_a_caller_that_leaves_mid_creation_still_records_the_run(
    keys: Idempotency,
) -> None:
    """The client disconnects while its run is being started: the start goes on, and a
    retry with the key gets that run instead of starting a second one."""
    create = Creator()
    create.hold = asyncio.Event()
    first = asyncio.create_task(keys.once(key("k-left"), "acme", "runs", "support", ASK, create))
    await started(create)
    first.cancel()
    with pytest.raises(asyncio.CancelledError):
        await first
    create.hold.set()
    create.hold = None
    retry = await keys.once(key("k-left"), "acme", "runs", "support", ASK, create)
    assert (retry.id, retry.replayed) == ("run-1", True)
    assert len(create.calls) == 1


async def test_a_failure_that_may_have_created_keeps_the_key(
    keys: Idempotency, clock: Clock
) -> None:
    """A dead actor mid-start proves nothing: the key stays claimed (a retry waits, then
    gets 409) until the claim is taken over, rather than letting a retry start a second
    run at once."""
    create = Creator()
    create.fail = ServiceUnavailable("the run host died", "run host", 1.0)
    with pytest.raises(ServiceUnavailable):
        await keys.once(key("k-dead"), "acme", "runs", "support", ASK, create)
    create.fail = None
    with pytest.raises(Conflict):
        await keys.once(key("k-dead"), "acme", "runs", "support", ASK, create)
    assert len(create.calls) == 1
    clock.now += 61  # past pending_s: the dead claim is taken over
    taken_over = await keys.once(key("k-dead"), "acme", "runs", "support", ASK, create)
    assert not taken_over.replayed and len(create.calls) == 2
