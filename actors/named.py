"""A handle to a named shared actor that outlives the actor's crashes.

rayfleet's shared services (tool pool, limiter, embeddings, run pool, batch driver) are
named, detached actors created with `max_restarts=-1`: after a crash Ray restarts one under
the same name and id, and calls made meanwhile wait for it. A call in flight when it died
fails with `ActorUnavailableError` or `ActorDiedError`, and Ray cannot say whether it ran.
An actor killed for good is gone from its name until it is made again.

`NamedActor` is how every caller holds such a service. It looks the actor up by name, and
when a call fails because the actor died:
- a method the service lists as safe to repeat (reads, idempotent writes) is asked again,
  with backoff, the actor looked up again each time, for up to `wait_s`;
- any other method fails at once with ServiceUnavailable: it may have happened, so only the
  caller can judge whether to ask again (over HTTP: 503 + Retry-After).
Ray fails calls made while the actor restarts as well, also saying it cannot tell whether
they ran. So once a call saw the actor die, a method that is not safe to repeat is sent
only after the actor answered a no-op (`__ray_ready__`): only the calls that raced the crash
itself fail. Nothing but rayfleet's own errors comes out of it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine, Iterable
from typing import Any

import ray
from ray.actor import ActorHandle
from ray.exceptions import RayActorError

from agents.errors import ServiceUnavailable

logger = logging.getLogger("rayfleet")

Lookup = Callable[[str, str], Any]
"""(name, namespace) -> the actor's handle; ValueError if no actor has that name."""

_FIRST_BACKOFF_S = 0.1
_MAX_BACKOFF_S = 1.0
RETRY_AFTER_S = 2.0
"""What a caller refused with ServiceUnavailable is told to wait: about one restart."""


def _ray_lookup(name: str, namespace: str) -> Any:
    return ray.get_actor(name, namespace=namespace)


class NamedActor:
    """Calls a named actor by method name, like its ActorHandle (`actor.method.remote(...)`,
    here a coroutine), finding it again after it restarts or is made anew."""

    def __init__(
        self,
        name: str,
        namespace: str,
        *,
        retry_safe: Iterable[str] = (),
        wait_s: float = 10.0,
        handle: ActorHandle[Any] | None = None,
        recreate: Callable[[], Awaitable[object]] | None = None,
        lookup: Lookup = _ray_lookup,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.name = name
        self._namespace = namespace
        self._retry_safe = frozenset(retry_safe)
        self._wait_s = wait_s
        self._handle = handle
        self._recreate = recreate
        self._lookup = lookup
        self._sleep = sleep
        self._clock = clock
        self._suspect = False
        """A call saw the actor die, and none has succeeded since."""

    def __getattr__(self, method: str) -> _Method:
        if method.startswith("_"):  # copy/pickle probes, and never an actor's private method
            raise AttributeError(method)
        return _Method(self, method)

    def current(self) -> Any:
        """The actor's handle, looked up by name if none is held (ValueError if none)."""
        if self._handle is None:
            self._handle = self._lookup(self.name, self._namespace)
        return self._handle

    def tell(self, method: str, *args: Any) -> None:
        """Fire and forget: a call whose loss costs nothing a later call does not repair."""
        try:
            getattr(self.current(), method).remote(*args)
        except ValueError:
            logger.warning("%s.%s not sent: %s is not running", self.name, method, self.name)

    async def invoke(self, method: str, *args: Any, **kwargs: Any) -> Any:
        """Call `method` on the actor; see the module docstring for what happens if it died.
        (Not `call`: the tool pool has a method of that name, reached as `named.call`.)"""
        deadline = self._clock() + self._wait_s
        attempt = 0
        while True:
            attempt += 1
            sent = False
            try:
                handle = await self._resolve()
                if self._suspect and method not in self._retry_safe:
                    await handle.__ray_ready__.remote()  # back? (a no-op: safe to repeat)
                sent = True
                result = await getattr(handle, method).remote(*args, **kwargs)
                self._suspect = False
                return result
            except _Missing:
                why = "is not running"  # nothing was sent: always safe to ask again
            except RayActorError as exc:
                self._handle = None  # look it up again: it may have been made anew
                self._suspect = True
                if sent and method not in self._retry_safe:
                    raise ServiceUnavailable(
                        f"{self.name} died during {method} ({type(exc).__name__}); it may or "
                        "may not have happened: try again",
                        self.name,
                        RETRY_AFTER_S,
                    ) from None
                why = f"died ({type(exc).__name__})"
            if self._clock() >= deadline:
                raise ServiceUnavailable(
                    f"{self.name} {why} and did not come back within {self._wait_s:g}s",
                    self.name,
                    RETRY_AFTER_S,
                )
            logger.warning("%s %s: asking %s again (%d)", self.name, why, method, attempt)
            await self._sleep(min(_FIRST_BACKOFF_S * 2 ** (attempt - 1), _MAX_BACKOFF_S))

    async def _resolve(self) -> Any:
        try:
            return self.current()
        except ValueError:
            pass
        if self._recreate is None:
            # Nobody here can make it again; fail now rather than wait for what may not come.
            raise ServiceUnavailable(f"{self.name} is not running", self.name, RETRY_AFTER_S)
        await self._recreate()
        try:
            return self.current()
        except ValueError:
            raise _Missing from None


class _Missing(Exception):
    """The name found no actor, even after asking for it to be made."""


class _Method:
    """`named.method`: `.remote(...)` makes the call (a coroutine, unlike Ray's ObjectRef)."""

    def __init__(self, actor: NamedActor, method: str) -> None:
        self._actor = actor
        self._method = method

    def remote(self, *args: Any, **kwargs: Any) -> Coroutine[Any, Any, Any]:
        return self._actor.invoke(self._method, *args, **kwargs)
