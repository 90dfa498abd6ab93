"""NamedActor without Ray: fake handles that die, restart or vanish, and a recorded clock."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from ray.exceptions import ActorDiedError, ActorUnavailableError

from actors.named import NamedActor
from agents.errors import ServiceUnavailable


class Actor:
    """A fake actor handle: `outcomes` says what each call does, in order (a value to
    return, or an exception to raise); it records every call."""

    def __init__(self, *outcomes: object) -> None:
        self.outcomes = list(outcomes)
        self.calls: list[tuple[str, tuple[Any, ...]]] = []

    def __getattr__(self, method: str) -> Any:
        actor = self

        class Method:
            def remote(self, *args: Any) -> Any:
                actor.calls.append((method, args))
                outcome = actor.outcomes.pop(0)

                async def answer() -> object:
                    if isinstance(outcome, BaseException):
                        raise outcome
                    return outcome

                return answer()

        return Method()


class Names:
    """The name registry: each lookup returns the next handle (None: no such actor)."""

    def __init__(self, *handles: Actor | None) -> None:
        self.handles = list(handles)
        self.lookups = 0

    def __call__(self, name: str, namespace: str) -> Actor:
        self.lookups += 1
        handle = self.handles.pop(0) if len(self.handles) > 1 else self.handles[0]
        if handle is None:
            raise ValueError(f"no actor {name!r} in {namespace!r}")
        return handle


class Clock:
    """Time that passes only when the code under test sleeps."""

    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def died() -> ActorUnavailableError:
    return ActorUnavailableError("the actor is restarting", None)


def build(names: Callable[[str, str], Any], clock: Clock, **options: Any) -> NamedActor:
    return NamedActor(
        "rayfleet-store",
        "ns",
        retry_safe={"load_run"},
        wait_s=5.0,
        lookup=names,
        sleep=clock.sleep,
        clock=clock,
        **options,
    )


async def test_a_safe_call_is_asked_again_once_the_actor_is_back() -> None:
    actor = Actor(died(), ActorDiedError(), {"run": 1})
    clock = Clock()
    store = build(Names(actor), clock)
    assert await store.load_run.remote("run-1") == {"run": 1}
    assert actor.calls == [("load_run", ("run-1",))] * 3
    assert clock.sleeps == [0.1, 0.2]  # backoff between tries, time passed in


async def test_an_unsafe_call_that_died_is_not_repeated() -> None:
    actor = Actor(died(), "never reached")
    store = build(Names(actor), Clock())
    with pytest.raises(ServiceUnavailable, match="may or may not have happened") as caught:
        await store.create_run.remote("run-1")
    assert len(actor.calls) == 1
    assert caught.value.service == "rayfleet-store" and caught.value.retry_after_s > 0


async def test_an_actor_made_anew_is_looked_up_again() -> None:
    old, new = Actor(ActorDiedError()), Actor("fresh")
    names = Names(old, new)
    store = build(names, Clock())
    assert await store.load_run.remote("run-1") == "fresh"
    assert (names.lookups, len(old.calls), len(new.calls)) == (2, 1, 1)


async def test_a_safe_call_gives_up_after_wait_s() -> None:
    clock = Clock()
    actor = Actor(*[died() for _ in range(100)])
    store = build(Names(actor), clock)
    with pytest.raises(ServiceUnavailable, match="did not come back within 5s"):
        await store.load_run.remote("run-1")
    assert 5.0 <= clock.now <= 6.0
    assert max(clock.sleeps) == 1.0  # the backoff is capped


async def test_a_gone_actor_fails_at_once_unless_it_can_be_made_again() -> None:
    clock = Clock()
    with pytest.raises(ServiceUnavailable, match="is not running"):
        await build(Names(None), clock).load_run.remote("run-1")
    assert clock.sleeps == []

    made: list[str] = []
    names = Names(None, Actor("made"))

    async def recreate() -> None:
        made.append("again")

    store = build(names, clock, recreate=recreate)
    assert await store.create_run.remote("run-1") == "made"  # nothing was sent before
    assert made == ["again"]


async def test_errors_the_method_raised_pass_through() -> None:
    store = build(Names(Actor(KeyError("run-1"))), Clock())
    with pytest.raises(KeyError):
        await store.load_run.remote("run-1")


def test_private_names_are_not_actor_methods() -> None:
    store = build(Names(Actor()), Clock())
    with pytest.raises(AttributeError):
        store._start  # noqa: B018


async def test_after_a_crash_an_unsafe_call_waits_until_the_actor_answers() -> None:
    # The first call raced the crash and fails; the next is sent only once a no-op answers.
    actor = Actor(died(), died(), died(), None, "admitted", "again")
    clock = Clock()
    limiter = build(Names(actor), clock)
    with pytest.raises(ServiceUnavailable):
        await limiter.admit_run.remote("acme")
    assert await limiter.admit_run.remote("acme") == "admitted"
    sent = [method for method, _ in actor.calls]
    assert sent == ["admit_run", "__ray_ready__", "__ray_ready__", "__ray_ready__", "admit_run"]
    assert await limiter.admit_run.remote("acme") == "again"  # healthy: sent at once
    assert [method for method, _ in actor.calls][5:] == ["admit_run"]
