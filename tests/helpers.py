"""Small helpers shared by the Ray and Serve tests."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, TypeVar

if TYPE_CHECKING:
    from tests.fixtures_sim import Sim

T = TypeVar("T")


def wait_for(condition: Callable[[], T], timeout_s: float = 10.0, interval_s: float = 0.05) -> T:
    """Poll until `condition()` is truthy and return it; fail after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout_s}s: {condition}")
        time.sleep(interval_s)


async def eventually(condition: Callable[[], Awaitable[bool]], timeout_s: float = 5.0) -> None:
    """Poll an async condition until it holds; fail after `timeout_s`."""
    for _ in range(int(timeout_s / 0.01)):
        if await condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"condition not met within {timeout_s}s")


async def taken(sim: Sim) -> bool:
    """True once every scripted reply was taken by a request."""
    return await asyncio.to_thread(sim.pending) == 0


def kill_namespace_actors(namespace: str) -> None:
    """Kill every named actor of a Ray namespace a test made its own (none may outlive it)."""
    import ray

    for actor in ray.util.list_named_actors(all_namespaces=True):
        if actor["namespace"] == namespace:
            try:
                ray.kill(ray.get_actor(actor["name"], namespace=namespace))
            except ValueError:
                pass  # already gone
