"""The gateway's line to the batch driver (the `rayfleet-batches` actor): a call made while
Ray restarts the actor is asked again, and an actor gone for good is made anew."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import ray
from ray.actor import ActorHandle
from ray.exceptions import RayActorError

from actors.runtime import BATCHES_ACTOR, ensure_runtime
from actors.settings import RuntimeSettings
from agents.errors import Overloaded

logger = logging.getLogger("rayfleet")

_ATTEMPTS = 5


class BatchDriver:
    """Calls `BatchRunnerActor` methods by name."""

    def __init__(self, runtime: RuntimeSettings) -> None:
        self._runtime = runtime
        self._actor: ActorHandle[Any] | None = None

    async def call(self, method: str, *args: Any) -> Any:
        for attempt in range(1, _ATTEMPTS + 1):
            if self._actor is None:
                await ensure_runtime(self._runtime)  # creates the actor if it is gone
                self._actor = ray.get_actor(BATCHES_ACTOR, namespace=self._runtime.namespace)
            try:
                return await getattr(self._actor, method).remote(*args)
            except RayActorError as exc:
                logger.warning("batch driver unavailable (%d): %r", attempt, exc)
                if not isinstance(exc, ray.exceptions.ActorUnavailableError):
                    self._actor = None  # dead, not restarting: look it up (or make it) again
                await asyncio.sleep(min(0.25 * 2 ** (attempt - 1), 2.0))
        raise Overloaded("the batch driver is restarting", 2.0)
