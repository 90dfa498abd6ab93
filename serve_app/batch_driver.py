"""The gateway's line to the batch driver (the `rayfleet-batches` actor): a call made while
Ray restarts the actor waits for it (every batch call is safe to repeat), and an actor gone
for good is made anew."""

from __future__ import annotations

from typing import Any

from actors.services import BATCHES_ACTOR, service
from actors.settings import RuntimeSettings


class BatchDriver:
    """Calls `BatchRunnerActor` methods by name."""

    def __init__(self, runtime: RuntimeSettings) -> None:
        self._actor = service(runtime, BATCHES_ACTOR, recreate=True)

    async def call(self, method: str, *args: Any) -> Any:
        return await self._actor.invoke(method, *args)
