"""`DELETE /v1/runs/{run_id}`: a run's record, events and outcome go for good.

Only an ended run is deleted: a running one is a 409 (cancel it first, then delete it), so
nothing can still be writing events of a run that no longer exists. A tenant deletes its
own runs (another tenant's run is a 404, as everywhere); the admin key deletes any run.
The run store decides (one transaction); the outcome store and the run's host then forget it.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from actors.runs_client import Runs
from agents.errors import Conflict, UnknownRun
from agents.logs import first_traceback

if TYPE_CHECKING:
    from actors.state.outcomes import OutcomeStore
    from actors.state.runs import RunStore

logger = logging.getLogger("rayfleet")


async def delete_run(
    run_id: str, tenant: str | None, store: RunStore, outcomes: OutcomeStore, runs: Runs
) -> None:
    """Delete an ended run of `tenant` (None: the admin, any tenant's) from the state's run
    and outcome stores, and from its host's memory."""
    outcome = await store.delete_run(run_id, tenant)
    if outcome == "unknown":
        raise UnknownRun(f"unknown run {run_id[:80]!r}", run_id[:80])
    if outcome == "running":
        raise Conflict(
            f"run {run_id!r} is still running: cancel it (POST /v1/runs/{run_id}/cancel), "
            "then delete it",
            1.0,
        )
    await outcomes.forget_runs([run_id])
    try:  # its host may still hold it for replay; a host that is gone holds nothing
        await runs.forget(run_id)
    except Exception as exc:
        logger.info(
            "host of deleted run %s did not forget it: %r",
            run_id,
            exc,
            exc_info=first_traceback(exc),
        )
