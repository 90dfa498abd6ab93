"""Retention through the real actors: the run pool's sweeper reaches the run store, the
outcome store and the tool pool's effect ledger (RemoteRetention), and deletes over Ray."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import ray
from actors.store import RunStoreActor

from actors.credentials import TenantContext
from actors.outcomes import OutcomeStoreActor
from actors.retention import DAY_S, RemoteRetention, sweep
from actors.tool_pool import ToolPoolActor
from agents.events import RunCompleted, RunCreated
from agents.examples import example_specs
from agents.loop import RunInput
from agents.messages import Usage
from tests.conftest import RaySession
from tests.unit.test_retention import outcome

pytestmark = pytest.mark.ray


async def test_a_sweep_over_the_actors_deletes_an_old_run_everywhere(
    ray_session: RaySession, tmp_path: Path
) -> None:
    store = RunStoreActor.remote(str(tmp_path / "runs.sqlite"))
    outcomes = OutcomeStoreActor.remote(str(tmp_path / "outcomes.sqlite"))
    tools = ToolPoolActor.remote(ledger_path=str(tmp_path / "effects.sqlite"))
    try:
        run_id = "run-h0-00000000000000000001"
        request = RunInput(run_id=run_id, input="hi", tenant="acme")
        await store.create_run.remote(
            example_specs()[0], request, TenantContext(tenant="acme"), "h0"
        )
        created = RunCreated(run_id=run_id, seq=1, agent="support", version="v1", input="hi")
        done = RunCompleted(run_id=run_id, seq=2, output="ok", steps=1, usage=Usage(), cost_usd=0)
        await store.append_events.remote({run_id: [created, done]})
        await outcomes.record_run.remote(outcome(run_id))
        remote = RemoteRetention(store, outcomes, tools)

        kept = await sweep(
            remote, remote, now=time.time(), retention_days=30, key_ttl_s=60, effects=remote
        )
        assert kept == 0 and await store.load_run.remote(run_id) is not None
        deleted = await sweep(
            remote,
            remote,
            now=time.time() + 31 * DAY_S,
            retention_days=30,
            key_ttl_s=60,
            effects=remote,
        )
        assert deleted == 1
        assert await store.load_run.remote(run_id) is None
        assert (await outcomes.version_stats.remote("support", "v1")).runs == 0
    finally:
        for actor in (store, outcomes, tools):
            ray.kill(actor)
