"""The Ray side: thin actor shells over the plain classes, and the client Serve uses to reach runs.

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
Every singleton restarts by itself after a crash (`max_restarts=-1`) and callers reach it
through `service()` (an `actors.named.NamedActor`), which finds it again and repeats only the
calls listed as safe to repeat in RETRY_SAFE. The restarted pool rebuilds its membership
from the live run hosts and resumes the runs of hosts that died while it was down.

What must not be lost (runs and their events, settings, outcomes, memory) is in the state
layer (actors.state), which every process opens itself: no actor stands between a run host
and its events, and losing an actor loses none of it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Coroutine
from typing import Any

import ray
from ray.actor import ActorHandle
from ray.exceptions import RayActorError

from actors.batches import BatchRunnerActor
from actors.credentials import TenantContext
from actors.embeddings import (
    EMBEDDINGS_ACTOR,
    EMBEDDINGS_RETRY_SAFE,
    NAMESPACE_ENV,
    EmbeddingBatcherActor,
)
from actors.limiter import Admission, TenantLimiterActor
from actors.named import NamedActor
from actors.outcomes import METRICS_INTERVAL_S, RayOutcomeMetrics
from actors.retention import sweep_forever
from actors.run_host import RunHost, host_of, new_run_id
from actors.run_pool import RunPool
from actors.settings import RuntimeSettings
from actors.state import State, process_state
from actors.state.outcomes import OutcomeStore
from actors.tool_pool import ToolPoolActor
from agents.errors import ServiceUnavailable, UnknownRun
from agents.events import Event, is_terminal
from agents.loop import RunInput
from agents.messages import Message, ToolCall
from agents.ports import ToolOutcome
from agents.spec import AgentSpec, ToolSpec
from agents.summary import RunSummary

logger = logging.getLogger("rayfleet")

POOL_ACTOR = "rayfleet-pool"
TOOLS_ACTOR = "rayfleet-tools"
LIMITER_ACTOR = "rayfleet-limiter"
BATCHES_ACTOR = "rayfleet-batches"
HOST_PREFIX = "rayfleet-runhost-"
# I/O-bound actors: a small reservation, many concurrent calls (every live stream is one).
_ACTOR_OPTIONS: dict[str, Any] = {"num_cpus": 0.01, "lifetime": "detached"}
# Shared singletons stay on the head node, so losing a worker node never loses them, and
# Ray restarts one that crashes (same name, same id: held handles stay good).
_ON_HEAD: dict[str, Any] = {
    **_ACTOR_OPTIONS,
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
    # crash took nothing: asking again takes one slot. `release` goes by `tell`.
    POOL_ACTOR: frozenset({"acquire", "recover", "warm_up", "stats"}),
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
        await ensure_runtime(settings)

    return NamedActor(
        name,
        settings.namespace,
        retry_safe=RETRY_SAFE[name],
        wait_s=settings.restart_wait_s,
        handle=handle,
        recreate=again if recreate else None,
    )


_MOVES = 5
"""How many times one reader follows a run to a new host before giving up."""


def check_agents_package() -> None:
    """Fail loudly if `agents` is openai-agents' package, not ours (both use the name)."""
    import agents

    if not getattr(agents, "RAYFLEET_AGENTS", False):
        raise ImportError(
            f"'agents' resolves to {agents.__file__}, not rayfleet's: uninstall openai-agents "
            "from this environment (rayfleet's top-level package is named 'agents')"
        )


class RemoteTools:
    """ToolPort over the shared tool-pool actor."""

    def __init__(self, actor: NamedActor) -> None:
        self._actor = actor

    async def call(
        self,
        tool: ToolSpec,
        call: ToolCall,
        *,
        idempotency_key: str,
        timeout_s: float,
        tenant: str = "default",
    ) -> ToolOutcome:
        try:
            outcome: ToolOutcome = await self._actor.call.remote(
                tool, call, idempotency_key=idempotency_key, timeout_s=timeout_s, tenant=tenant
            )
        except (ServiceUnavailable, ray.exceptions.RayError) as exc:
            return ToolOutcome(
                ok=False, output="", error=f"tool pool unavailable: {type(exc).__name__}"
            )
        return outcome


class StateMemory:
    """MemoryPort over the state's memory store, opened at the first call: memory is
    optional, so a memory database that cannot open fails the call (the loop degrades and
    says so), never the run host."""

    def __init__(self, state: State) -> None:
        self._state = state

    async def load_thread(self, namespace: str, thread_id: str) -> list[Message]:
        return await self._state.memory.load_thread(namespace, thread_id)

    async def append_thread(self, namespace: str, thread_id: str, messages: list[Message]) -> None:
        await self._state.memory.append_thread(namespace, thread_id, messages)


class RemoteLimiter:
    """The tenant limiter's actor as a LimiterPort."""

    def __init__(self, actor: NamedActor) -> None:
        self._actor = actor

    async def reserve(self, tenant: str, tokens: int, cost_usd: float) -> Admission:
        admission: Admission = await self._actor.reserve.remote(tenant, tokens, cost_usd)
        return admission

    async def settle(self, reservation: str, tokens: int, cost_usd: float) -> None:
        await self._actor.settle.remote(reservation, tokens, cost_usd)

    async def release_run(self, lease: str) -> None:
        await self._actor.release_run.remote(lease)

    async def renew_runs(self, leases: list[str]) -> list[str]:
        unknown: list[str] = await self._actor.renew_runs.remote(leases)
        return unknown


@ray.remote
class RunHostActor(RunHost):
    def __init__(self, host_id: str, settings: RuntimeSettings) -> None:
        check_agents_package()
        state = process_state(settings.state_url)
        pool = service(settings, POOL_ACTOR)
        super().__init__(
            host_id,
            settings,
            RemoteTools(service(settings, TOOLS_ACTOR)),
            StateMemory(state),
            state.runs,
            # Lost if the pool is down: a restarted pool counts loads from the hosts.
            on_run_end=lambda h: pool.tell("release", h),
            limiter=RemoteLimiter(service(settings, LIMITER_ACTOR)),
            # The host that records a run counts it (rayfleet_runs_total and its cost); the
            # pool publishes the per-version gauges.
            outcomes=OutcomeStore(state.database("outcomes"), metrics=RayOutcomeMetrics()),
            switches=state.settings,
        )

    def ready(self) -> bool:
        return True

    async def wait_until_dead(self) -> None:
        """Never returns: the pool awaits it to learn, by its failure, that this host died."""
        await asyncio.Event().wait()


POOL_EPOCH = "pool.epoch"
"""Stored setting: how many run pools have started on this store. Each names its hosts apart
(h0, h1, ... then e1h0, ...), so a host id, hence a run id, never names two hosts."""


@ray.remote
class RunPoolActor:
    """The cluster's one RunPool: creates run hosts as load requires, watches them, and
    resumes the runs of a host that died on another host. Restarted after a crash, it adopts
    the live hosts and resumes the runs of hosts that died while it was down.

    The one long-lived process of the runtime, it also deletes what is past retention and
    publishes the outcome gauges (per agent version and tenant)."""

    def __init__(self, settings: RuntimeSettings) -> None:
        check_agents_package()
        self._settings = settings
        state = process_state(settings.state_url)
        self._runs = state.runs
        self._stored = state.settings
        self._watchers: set[asyncio.Task[None]] = set()
        self._moving: dict[str, asyncio.Lock] = {}
        loop = asyncio.get_running_loop()
        outcomes = OutcomeStore(state.database("outcomes"), metrics=RayOutcomeMetrics())
        self._metrics = loop.create_task(outcomes.publish_metrics_every(METRICS_INTERVAL_S))
        self._retention = loop.create_task(
            sweep_forever(
                state.runs,
                state.keys,
                outcomes,
                state.ledger,
                retention_days=settings.retention_days,
                key_ttl_s=settings.idempotency_key_ttl_s,
            )
        )
        # An async actor builds itself in its event loop; every method waits for this.
        self._starting = loop.create_task(self._start())

    async def _ready(self) -> RunPool:
        if self._starting.done() and self._starting.exception() is not None:
            self._starting = asyncio.create_task(self._start())  # the store was down: again
        return await asyncio.shield(self._starting)

    async def _start(self) -> RunPool:
        found = await self._stored.settings(POOL_EPOCH)
        epoch = int(found.get(POOL_EPOCH, "0"))
        await self._stored.put_setting(POOL_EPOCH, str(epoch + 1))
        settings = self._settings
        pool = RunPool(
            settings.runs_per_actor,
            settings.warm_run_hosts,
            self._spawn,
            id_prefix="h" if epoch == 0 else f"e{epoch:x}h",
        )
        loads = await self._running_hosts()
        pool.adopt(loads)
        for host_id in loads:  # a host that died meanwhile is caught by its watcher
            self._watch_host(host_id, self._handle(host_id))
        orphaned = set(await self._runs.live_hosts()) - set(loads)
        for host_id in orphaned:  # died while no pool watched it
            self._in_background(self._resume_runs_of(pool, host_id))
        if loads or orphaned:
            logger.warning(
                "run pool restarted: %d hosts adopted, runs of %d resumed",
                len(loads),
                len(orphaned),
            )
        return pool

    async def _running_hosts(self) -> dict[str, int]:
        """Run hosts alive in the namespace, with their runs in flight (as full if one
        does not answer: it is not handed out until its watcher knows)."""
        named = await asyncio.to_thread(ray.util.list_named_actors, all_namespaces=True)
        ns = self._settings.namespace
        ids = [
            actor["name"].removeprefix(HOST_PREFIX)
            for actor in named
            if actor["namespace"] == ns and actor["name"].startswith(HOST_PREFIX)
        ]
        loads: dict[str, int] = {}

        async def probe(host_id: str) -> None:
            try:
                host = self._handle(host_id)
            except ValueError:
                return  # gone since the listing
            try:
                async with asyncio.timeout(30):
                    loads[host_id] = await host.load.remote()
            except Exception:
                loads[host_id] = self._settings.runs_per_actor

        await asyncio.gather(*(probe(host_id) for host_id in ids))
        return loads

    def _in_background(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(work)
        self._watchers.add(task)
        task.add_done_callback(self._watchers.discard)

    def _handle(self, host_id: str) -> ActorHandle[Any]:
        return ray.get_actor(HOST_PREFIX + host_id, namespace=self._settings.namespace)

    async def _spawn(self, host_id: str) -> None:
        options = dict(_ACTOR_OPTIONS)
        if self._settings.run_host_resources:
            options["resources"] = dict(self._settings.run_host_resources)
        host = RunHostActor.options(  # type: ignore[attr-defined]
            name=HOST_PREFIX + host_id,
            namespace=self._settings.namespace,
            max_concurrency=100_000,
            get_if_exists=True,
            # Spread hosts over the nodes: losing one node then loses a share of the runs'
            # hosts, and those runs resume on the others.
            scheduling_strategy="SPREAD",
            **options,
        ).remote(host_id, self._settings)
        await host.ready.remote()
        self._watch_host(host_id, host)

    def _watch_host(self, host_id: str, host: ActorHandle[Any]) -> None:
        self._in_background(self._watch(host_id, host))

    async def _watch(self, host_id: str, host: ActorHandle[Any]) -> None:
        try:
            await host.wait_until_dead.remote()
        except Exception as exc:  # the host died (or its node did)
            logger.warning("run host %s died (%s): resuming its runs", host_id, type(exc).__name__)
        pool = await self._ready()
        pool.remove_host(host_id)
        await self._resume_runs_of(pool, host_id)

    async def _resume_runs_of(self, pool: RunPool, host_id: str) -> None:
        for run_id in await self._runs.live_runs_on(host_id):
            try:
                await self._recover(pool, run_id, suspect=host_id)
            except Exception:
                logger.exception("could not resume run %s", run_id)

    async def warm_up(self) -> dict[str, int]:
        pool = await self._ready()
        await pool.warm_up()
        return pool.stats()

    async def acquire(self) -> str:
        return await (await self._ready()).acquire()

    async def release(self, host_id: str) -> None:
        (await self._ready()).release(host_id)

    async def stats(self) -> dict[str, int]:
        return (await self._ready()).stats()

    async def recover(self, run_id: str, suspect: str | None = None) -> str:
        """The host now running `run_id`; if its host (or `suspect`) is dead, resume the run
        on another host first. Safe to call from many readers at once."""
        return await self._recover(await self._ready(), run_id, suspect)

    async def _recover(self, pool: RunPool, run_id: str, suspect: str | None) -> str:
        lock = self._moving.setdefault(run_id, asyncio.Lock())
        async with lock:
            host_id = await self._runs.host_of(run_id)
            if host_id is None:
                raise UnknownRun(f"unknown run {run_id!r}", run_id)
            if await self._alive(pool, host_id, checked=host_id == suspect):
                return host_id
            pool.remove_host(host_id)
            for attempt in range(1, _MOVES + 1):
                new_host = None
                try:
                    new_host = await pool.acquire()
                    await self._handle(new_host).resume_run.remote(run_id)
                except Exception as exc:
                    # The host we got may be dying too (it sat on the same lost node, or was
                    # still starting there): drop it and take another.
                    logger.warning("resuming run %s failed (%d): %r", run_id, attempt, exc)
                    if new_host is not None:
                        pool.remove_host(new_host)
                    await asyncio.sleep(0.2 * attempt)
                    continue
                await self._runs.move_run(run_id, new_host)
                logger.warning("run %s moved from host %s to %s", run_id, host_id, new_host)
                return new_host
            raise UnknownRun(f"run {run_id!r} could not be resumed on any host", run_id)

    async def _alive(self, pool: RunPool, host_id: str, checked: bool) -> bool:
        if not pool.has_host(host_id):
            return False
        if not checked:
            return True
        try:
            async with asyncio.timeout(5):
                await self._handle(host_id).ready.remote()
        except Exception:
            return False
        return True


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
        **_ON_HEAD,
    ).remote(retry=settings.tool_retry, state_url=settings.state_url)
    EmbeddingBatcherActor.options(
        name=EMBEDDINGS_ACTOR, namespace=ns, get_if_exists=True, **_ON_HEAD
    ).remote(settings.embeddings, settings.providers, settings.prices, settings.cache)
    TenantLimiterActor.options(
        name=LIMITER_ACTOR, namespace=ns, get_if_exists=True, **_ON_HEAD
    ).remote(None, state_url=settings.state_url, lease_ttl_s=settings.run_lease_ttl_s)
    pool: ActorHandle[Any] = RunPoolActor.options(  # type: ignore[attr-defined]
        name=POOL_ACTOR, namespace=ns, get_if_exists=True, max_concurrency=10_000, **_ON_HEAD
    ).remote(settings)
    BatchRunnerActor.options(  # type: ignore[attr-defined]
        name=BATCHES_ACTOR, namespace=ns, get_if_exists=True, **_ON_HEAD
    ).remote(settings)
    await service(settings, POOL_ACTOR, handle=pool).warm_up.remote()
    return pool


class Runs:
    """How Serve replicas (and other callers) start runs and reach them by id, following a
    run to another host if its host dies."""

    def __init__(
        self,
        settings: RuntimeSettings,
        pool: ActorHandle[Any] | None = None,
        *,
        recreate: bool = False,
    ) -> None:
        """`pool`: the pool's handle if the caller has it (else looked up by name);
        `recreate`: make the shared actors again if one is gone for good (see `service`)."""
        self._namespace = settings.namespace
        self._pool = service(settings, POOL_ACTOR, handle=pool, recreate=recreate)
        self._hosts: dict[str, ActorHandle[Any]] = {}
        self._moved: dict[str, str] = {}  # run id -> its host, for runs not on their first

    def _handle(self, host_id: str) -> ActorHandle[Any] | None:
        host = self._hosts.get(host_id)
        if host is None:
            try:
                host = ray.get_actor(HOST_PREFIX + host_id, namespace=self._namespace)
            except ValueError:
                return None  # no such actor (any more)
            self._hosts[host_id] = host
        return host

    async def _locate(
        self, run_id: str, suspect: str | None = None
    ) -> tuple[str, ActorHandle[Any]]:
        host_id = self._moved.get(run_id) or host_of(run_id)
        host = None if host_id == suspect else self._handle(host_id)
        if host is None:
            host_id = await self._pool.recover.remote(run_id, suspect=host_id)
            self._moved[run_id] = host_id
            self._hosts.pop(host_id, None)
            host = self._handle(host_id)
            if host is None:
                raise UnknownRun(f"run {run_id!r} has no live host", run_id)
        return host_id, host

    async def start(
        self,
        spec: AgentSpec,
        input: str,
        thread_id: str | None = None,
        context: TenantContext | None = None,
        namespace: str | None = None,
        assignment: str = "stable",
    ) -> str:
        context = context or TenantContext()
        host_id = await self._pool.acquire.remote()
        request = RunInput(
            run_id=new_run_id(host_id),
            input=input,
            thread_id=thread_id,
            namespace=namespace or context.tenant,
            tenant=context.tenant,
            assignment=assignment,
            primary_run_id=context.shadow_of,
        )
        host = self._handle(host_id)
        why = "is gone"
        if host is not None:
            try:
                run_id: str = await host.start_run.remote(spec, request, context)
                return run_id
            except RayActorError as exc:
                # Not asked again: the run may exist now (the pool then resumes it).
                why = f"died while starting a run ({type(exc).__name__})"
        self._hosts.pop(host_id, None)
        raise ServiceUnavailable(f"run host {host_id!r} {why}; try again", HOST_PREFIX + host_id)

    async def events(self, run_id: str, after: int = 0) -> AsyncIterator[Event]:
        """Every event after seq `after`, live until the terminal one. If the run's host
        dies, the run resumes elsewhere and the stream goes on from the last seq seen."""
        seen, suspect = after, None
        for _ in range(_MOVES):
            host_id, host = await self._locate(run_id, suspect)
            stream: Any = host.events.options(num_returns="streaming").remote(run_id, seen)
            finished = False
            try:
                async for ref in stream:
                    for event in await ref:
                        seen = event.seq
                        yield event
                        if is_terminal(event):
                            finished = True
                            return
                finished = True
                return
            except RayActorError:
                suspect = host_id  # its host died mid-stream: follow the run
            finally:
                if not finished:
                    # The reader went away or the host died: stop following, never the run.
                    ray.cancel(stream)
        raise UnknownRun(f"run {run_id!r} moved hosts more than {_MOVES} times", run_id)

    async def _call(self, run_id: str, method: str) -> Any:
        host_id, host = await self._locate(run_id)
        try:
            return await getattr(host, method).remote(run_id)
        except RayActorError:
            host_id, host = await self._locate(run_id, suspect=host_id)
            return await getattr(host, method).remote(run_id)

    async def summary(self, run_id: str) -> RunSummary:
        result: RunSummary = await self._call(run_id, "summary")
        return result

    async def cancel(self, run_id: str) -> bool:
        cancelled: bool = await self._call(run_id, "cancel")
        return cancelled

    async def forget(self, run_id: str) -> bool:
        """Make the run's host drop a deleted run from memory (False: it is running)."""
        forgotten: bool = await self._call(run_id, "forget")
        return forgotten
