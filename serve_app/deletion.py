"""`DELETE /v1/runs/{run_id}`: a run's record, events and outcome go for good.

Only an ended run is deleted: a running one is a 409 (cancel it first, then delete it), so
nothing can still be writing events of a run that no longer exists. A tenant deletes its
own runs (another tenant's run is a 404, as everywhere); the admin key deletes any run.
The run store decides (one transaction); the outcome store and the run's host then forget it.
"""

from __future__ import annotations

import logging
from typing import Any

from actors.runtime import Runs
from actors.store import DeleteOutcome
from agents.errors import Conflict, UnknownRun

logger = logging.getLogger("rayfleet")


async def delete_run(
    run_id: str, tenant: str | None, store: Any, outcomes: Any, runs: Runs
) -> None:
    """Delete an ended run of `tenant` (None: the admin, any tenant's). `store` and
    `outcomes` are the run store's and the outcome store's actors."""
    outcome: DeleteOutcome = await store.delete_run.remote(run_id, tenant)
    if outcome == "unknown":
        raise UnknownRun(f"unknown run {run_id[:80]!r}", run_id[:80])
    if outcome == "running":
        raise Conflict(
            f"run {run_id!r} is still running: cancel it (POST /v1/runs/{run_id}/cancel), "
            "then delete it",
            1.0,
        )
    await outcomes.forget_runs.remote([run_id])
    try:  # its host may still hold it for replay; a host that is gone holds nothing
        await runs.forget(run_id)
    except Exception as exc:
        logger.info("host of deleted run %s did not forget it: %r", run_id, exc)
