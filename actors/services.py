"""The shared services' names, how they are placed, and a caller's line to each.

Named, detached actors in one namespace (see actors.runtime for what each does). Every
singleton restarts by itself after a crash (`max_restarts=-1`) and callers reach it through
`service()` (an `actors.named.NamedActor`), which finds it again and repeats only the calls
listed as safe to repeat in RETRY_SAFE.
"""

from __future__ import annotations

from typing import Any

from ray.actor import ActorHandle

from actors.embeddings import EMBEDDINGS_ACTOR, EMBEDDINGS_RETRY_SAFE
from actors.named import NamedActor
from actors.settings import RuntimeSettings

POOL_ACTOR = "rayfleet-pool"
TOOLS_ACTOR = "rayfleet-tools"
LIMITER_ACTOR = "rayfleet-limiter"
BATCHES_ACTOR = "rayfleet-batches"
HOST_PREFIX = "rayfleet-runhost-"
# I/O-bound actors: a small reservation, many concurrent calls (every live stream is one).
ACTOR_OPTIONS: dict[str, Any] = {"num_cpus": 0.01, "lifetime": "detached"}
# Shared singletons stay on the head node, so losing a worker node never loses them, and
# Ray restarts one that crashes (same name, same id: held handles stay good).
ON_HEAD: dict[str, Any] = {
    **ACTOR_OPTIONS,
    "resources": {"node:__internal_head__": 0.001},
    "max_restarts": -1,
}
RETRY_SAFE: dict[str, frozenset[str]] = {
    # A tool call carries its idempotency key: the pool's effect ledger answers a repeat.
    TOOLS_ACTOR: frozenset({"call"}),
    # admit_run and reserve take: each must happen once. settle ignores a settled
    # reservation, release_run a released lease; renew_runs and update_limits set.
    LIMITER_ACTOR: frozenset({"settle", "update_limits", "usage", "release_run", "renew_runs"}),
    EMBEDDINGS_ACTOR: EMBEDDINGS_RETRY_SAFE,
    # A restarted pool rebuilds its hosts' loads from the hosts, so an acquire lost in its
    # crash took nothing: asking again takes one slot. `report` goes by `tell`.
    POOL_ACTOR: frozenset({"acquire", "recover", "warm_up", "stats", "loads"}),
    # submit is keyed by batch id; cancel of a cancelled batch changes nothing.
    BATCHES_ACTOR: frozenset({"submit", "get", "cancel", "wait", "running", "ready"}),
}
"""Per shared service, the methods a caller may repeat after the actor died mid-call."""


def service(
    settings: RuntimeSettings,
    name: str,
    *,
    handle: ActorHandle[Any] | None = None,
    recreate: bool = False,
) -> NamedActor:
    """A caller's line to one shared service; `recreate`: make the runtime's actors again
    if this one is gone for good (Serve replicas do; actors wait for them)."""

    async def again() -> None:
        from actors.runtime import ensure_runtime  # it creates the actors, so imports this

        await ensure_runtime(settings)

    return NamedActor(
        name,
        settings.namespace,
        retry_safe=RETRY_SAFE[name],
        wait_s=settings.restart_wait_s,
        handle=handle,
        recreate=again if recreate else None,
    )


MAX_MOVES = 5
"""How many times one reader follows a run to a new host before giving up."""


def check_agents_package() -> None:
    """Fail loudly if `agents` is openai-agents' package, not ours (both use the name)."""
    import agents

    if not getattr(agents, "RAYFLEET_AGENTS", False):
        raise ImportError(
            f"'agents' resolves to {agents.__file__}, not rayfleet's: uninstall openai-agents "
            "from this environment (rayfleet's top-level package is named 'agents')"
        )
