"""Starting the Ray side: the shared actors, created once per namespace.

Named, detached actors in one namespace, so a run outlives the Serve replica that started it
and any replica can find it by id:
    rayfleet-pool              RunPool       hands out run slots; watches hosts, resumes runs;
                                             retention sweeps and outcome gauges
    rayfleet-tools             ToolPool      Python function tools
    rayfleet-limiter           TenantLimiter tenant limits, exact across replicas
    rayfleet-embeddings        EmbeddingBatcher  embedding micro-batches for all runs (+ cache)
    rayfleet-batches           BatchRunner   bulk runs with bounded concurrency
    rayfleet-runhost-<host>    RunHost       the runs themselves
The singletons live on the head node; run hosts go wherever `run_host_resources` allow.
Names, placement and retry rules are in actors.services; the shells in actors.host_actor and
actors.pool_actor; the client that reaches runs in actors.runs_client.

What must not be lost (runs and their events, settings, outcomes, memory) is in the state
layer (actors.state), which every process opens itself: no actor stands between a run host
and its events, and losing an actor loses none of it.
"""

from __future__ import annotations

from typing import Any

from ray.actor import ActorHandle

from actors.batches import BatchRunnerActor
from actors.embeddings import EMBEDDINGS_ACTOR, NAMESPACE_ENV, EmbeddingBatcherActor
from actors.limiter import TenantLimiterActor
from actors.pool_actor import RunPoolActor
from actors.services import (
    BATCHES_ACTOR,
    LIMITER_ACTOR,
    ON_HEAD,
    POOL_ACTOR,
    TOOLS_ACTOR,
    service,
)
from actors.settings import RuntimeSettings
from actors.tool_pool import ToolPoolActor


async def ensure_runtime(settings: RuntimeSettings) -> ActorHandle[Any]:
    """Get or create the shared actors; returns the pool once its warm hosts are ready."""
    ns = settings.namespace
    ToolPoolActor.options(
        name=TOOLS_ACTOR,
        namespace=ns,
        get_if_exists=True,
        max_concurrency=10_000,
        # Tools that use the shared actors (embeddings) find them in this namespace.
        runtime_env={"env_vars": {NAMESPACE_ENV: ns}},
        **ON_HEAD,
    ).remote(retry=settings.tool_retry, state_url=settings.state_url)
    EmbeddingBatcherActor.options(
        name=EMBEDDINGS_ACTOR, namespace=ns, get_if_exists=True, **ON_HEAD
    ).remote(settings.embeddings, settings.providers, settings.prices, settings.cache)
    TenantLimiterActor.options(
        name=LIMITER_ACTOR, namespace=ns, get_if_exists=True, **ON_HEAD
    ).remote(None, state_url=settings.state_url, lease_ttl_s=settings.run_lease_ttl_s)
    pool: ActorHandle[Any] = RunPoolActor.options(  # type: ignore[attr-defined]
        name=POOL_ACTOR, namespace=ns, get_if_exists=True, max_concurrency=10_000, **ON_HEAD
    ).remote(settings)
    BatchRunnerActor.options(  # type: ignore[attr-defined]
        name=BATCHES_ACTOR, namespace=ns, get_if_exists=True, **ON_HEAD
    ).remote(settings)
    await service(settings, POOL_ACTOR, handle=pool).warm_up.remote()
    return pool
