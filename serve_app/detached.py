"""Starting a run so that the caller going away cannot leave it half-started.

A client that disconnects cancels its request's task. If that task is between "the host
was asked to start the run" and "the gateway recorded what happened", cancelling it would
leave a run that runs without its lease, or an Idempotency-Key given back while its run
exists (a retry would then start a second run). So such work runs to its end in a task of
its own, and what a failure undoes depends on whether it proves no run exists.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar

from agents.errors import RayfleetError, ServiceUnavailable

T = TypeVar("T")

_running: set[asyncio.Task[Any]] = set()
"""Detached tasks, held so the event loop does not drop them while nobody awaits them."""


async def detached(work: Coroutine[Any, Any, T]) -> T:
    """`await work`, except that cancelling the caller does not cancel `work`."""
    task = asyncio.ensure_future(work)
    _running.add(task)
    task.add_done_callback(_finished)
    return await asyncio.shield(task)


def _finished(task: asyncio.Task[Any]) -> None:
    _running.discard(task)
    if not task.cancelled():
        task.exception()  # retrieved: a caller that left has nobody to raise it to


def nothing_started(exc: BaseException) -> bool:
    """True if `exc` proves the run was not created: rayfleet refused it on purpose. A dead
    or restarting actor or replica (ServiceUnavailable, a Ray error) or a cancellation
    proves nothing: the run may exist, and its pool resumes it."""
    return isinstance(exc, RayfleetError) and not isinstance(exc, ServiceUnavailable)
