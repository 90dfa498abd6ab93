"""The Ray side: thin actor shells over the plain classes, and the client Serve uses to reach runs.

Named, detached actors in one namespace, so a run outlives the Serve replica that started it
and any replica can find it by id:
    rayfleet-pool              RunPool       hands out run slots; watches hosts, resumes runs
    rayfleet-store             RunStore      runs and their durable event logs
    rayfleet-tools             ToolPool      Python function tools
    rayfleet-memory            MemoryStore   conversation threads
    rayfleet-limiter           TenantLimiter tenant limits, exact across replicas
    rayfleet-outcomes          OutcomeStore  runs' outcomes, per-version stats
    rayfleet-embeddings        EmbeddingBatcher  embedding micro-batches for all runs (+ cache)
    rayfleet-batches           BatchRunner   bulk runs with bounded concurrency
    rayfleet-runhost-<host>    RunHost       the runs themselves
The singletons live on the head node; run hosts go wherever `run_host_resources` allow.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import Any

import ray
from ray.actor import ActorHandle
from ray.exceptions import RayActorError

from actors.batches import BatchRunnerActor
from actors.credentials import TenantContext
from actors.embeddings import EMBEDDINGS_ACTOR, NAMESPACE_ENV, EmbeddingBatcherActor
from actors.limiter import Admission, TenantLimiterActor
from actors.memory import MemoryStoreActor
from actors.outcomes import OutcomeStoreActor, RunOutcome
from actors.retention import RemoteRetention, sweep_forever
from actors.run_host import RunHost, host_of, new_run_id
from actors.run_pool import RunPool
from actors.settings import RuntimeSettings
from actors.store import RunRecord, RunStoreActor
from actors.tool_pool import ToolPoolActor
from agents.errors import UnknownRun
from agents.events import Event, is_terminal
from agents.loop import RunInput
from agents.messages import Message, ToolCall
from agents.ports import ToolOutcome
from agents.spec import AgentSpec, ToolSpec
from agents.summary import RunSummary

logger = logging.getLogger("rayfleet")

POOL_ACTOR = "rayfleet-pool"
STORE_ACTOR = "rayfleet-store"
TOOLS_ACTOR = "rayfleet-tools"
MEMORY_ACTOR = "rayfleet-memory"
LIMITER_ACTOR = "rayfleet-limiter"
OUTCOMES_ACTOR = "rayfleet-outcomes"
BATCHES_ACTOR = "rayfleet-batches"
HOST_PREFIX = "rayfleet-runhost-"
# I/O-bound actors: a small reservation, many concurrent calls (every live stream is one).
_ACTOR_OPTIONS: dict[str, Any] = {"num_cpus": 0.01, "lifetime": "detached"}
# Shared singletons stay on the head node, so losing a worker node never loses them.
_ON_HEAD: dict[str, Any] = {**_ACTOR_OPTIONS, "resources": {"node:__internal_head__": 0.001}}
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

    def __init__(self, actor: ActorHandle[Any]) -> None:
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
        except ray.exceptions.RayError as exc:
            return ToolOutcome(
                ok=False, output="", error=f"tool pool unavailable: {type(exc).__name__}"
            )
        return outcome


class RemoteMemory:
    """MemoryPort over the memory-store actor; the loop degrades if these calls fail."""

    def __init__(self, actor: ActorHandle[Any]) -> None:
        self._actor = actor

    async def load_thread(self, namespace: str, thread_id: str) -> list[Message]:
        messages: list[Message] = await self._actor.load_thread.remote(namespace, thread_id)
        return messages

    async def append_thread(self, namespace: str, thread_id: str, messages: list[Message]) -> None:
        await self._actor.append_thread.remote(namespace, thread_id, messages)


class RemoteStore:
    """The run store's actor as a RunStorePort."""

    def __init__(self, actor: ActorHandle[Any]) -> None:
        self._actor = actor

    async def create_run(
        self, spec: AgentSpec, request: RunInput, context: TenantContext, host_id: str
    ) -> None:
        await self._actor.create_run.remote(spec, request, context, host_id)

    async def append_events(self, batch: dict[str, list[Event]]) -> None:
        await self._actor.append_events.remote(batch)

    async def load_run(self, run_id: str) -> RunRecord | None:
        record: RunRecord | None = await self._actor.load_run.remote(run_id)
        return record

    async def settings(self, prefix: str) -> dict[str, str]:
        found: dict[str, str] = await self._actor.settings.remote(prefix)
        return found


class RemoteLimiter:
    """The tenant limiter's actor as a LimiterPort."""

    def __init__(self, actor: ActorHandle[Any]) -> None:
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


class RemoteOutcomes:
    """The outcome store's actor as an OutcomePort."""

    def __init__(self, actor: ActorHandle[Any]) -> None:
        self._actor = actor

    async def record_run(self, outcome: RunOutcome) -> None:
        await self._actor.record_run.remote(outcome)


@ray.remote
class RunHostActor(RunHost):
    def __init__(self, host_id: str, settings: RuntimeSettings) -> None:
        check_agents_package()

        def named(name: str) -> ActorHandle[Any]:
            return ray.get_actor(name, namespace=settings.namespace)

        pool = named(POOL_ACTOR)
        super().__init__(
            host_id,
            settings,
            RemoteTools(named(TOOLS_ACTOR)),
            RemoteMemory(named(MEMORY_ACTOR)),
            RemoteStore(named(STORE_ACTOR)),
            on_run_end=lambda h: pool.release.remote(h),
            limiter=RemoteLimiter(named(LIMITER_ACTOR)),
            outcomes=RemoteOutcomes(named(OUTCOMES_ACTOR)),
        )

    def ready(self) -> bool:
        return True

    async def wait_until_dead(self) -> None:
        """Never returns: the pool awaits it to learn, by its failure, that this host died."""
        await asyncio.Event().wait()


@ray.remote
class RunPoolActor:
    """The cluster's one RunPool: creates run hosts as load requires, watches them, and
    resumes the runs of a host that died on another host."""

    def __init__(self, settings: RuntimeSettings) -> None:
        check_agents_package()
        self._settings = settings
        self._pool = RunPool(settings.runs_per_actor, settings.warm_run_hosts, self._spawn)
        self._store = ray.get_actor(STORE_ACTOR, namespace=settings.namespace)
        self._watchers: set[asyncio.Task[None]] = set()
        self._moving: dict[str, asyncio.Lock] = {}
        # The pool outlives every replica: it deletes what is past retention.
        remote = RemoteRetention(
            self._store,
            ray.get_actor(OUTCOMES_ACTOR, namespace=settings.namespace),
            ray.get_actor(TOOLS_ACTOR, namespace=settings.namespace),
        )
        self._retention = asyncio.get_running_loop().create_task(
            sweep_forever(
                remote,
                remote,
                retention_days=settings.retention_days,
                key_ttl_s=settings.idempotency_key_ttl_s,
                effects=remote,
            )
        )

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
        watcher = asyncio.create_task(self._watch(host_id, host))
        self._watchers.add(watcher)
        watcher.add_done_callback(self._watchers.discard)

    async def _watch(self, host_id: str, host: ActorHandle[Any]) -> None:
        try:
            await host.wait_until_dead.remote()
        except Exception as exc:  # the host died (or its node did)
            logger.warning("run host %s died (%s): resuming its runs", host_id, type(exc).__name__)
        self._pool.remove_host(host_id)
        for run_id in await self._store.live_runs_on.remote(host_id):
            try:
                await self.recover(run_id, suspect=host_id)
            except Exception:
                logger.exception("could not resume run %s", run_id)

    async def warm_up(self) -> dict[str, int]:
        await self._pool.warm_up()
        return self._pool.stats()

    async def acquire(self) -> str:
        return await self._pool.acquire()

    def release(self, host_id: str) -> None:
        self._pool.release(host_id)

    def stats(self) -> dict[str, int]:
        return self._pool.stats()

    async def recover(self, run_id: str, suspect: str | None = None) -> str:
        """The host now running `run_id`; if its host (or `suspect`) is dead, resume the run
        on another host first. Safe to call from many readers at once."""
        lock = self._moving.setdefault(run_id, asyncio.Lock())
        async with lock:
            host_id: str | None = await self._store.host_of.remote(run_id)
            if host_id is None:
                raise UnknownRun(f"unknown run {run_id!r}", run_id)
            if await self._alive(host_id, checked=host_id == suspect):
                return host_id
            self._pool.remove_host(host_id)
            for attempt in range(1, _MOVES + 1):
                new_host = None
                try:
                    new_host = await self._pool.acquire()
                    await self._handle(new_host).resume_run.remote(run_id)
                except Exception as exc:
                    # The host we got may be dying too (it sat on the same lost node, or was
                    # still starting there): drop it and take another.
                    logger.warning("resuming run %s failed (%d): %r", run_id, attempt, exc)
                    if new_host is not None:
                        self._pool.remove_host(new_host)
                    await asyncio.sleep(0.2 * attempt)
                    continue
                await self._store.move_run.remote(run_id, new_host)
                logger.warning("run %s moved from host %s to %s", run_id, host_id, new_host)
                return new_host
            raise UnknownRun(f"run {run_id!r} could not be resumed on any host", run_id)

    async def _alive(self, host_id: str, checked: bool) -> bool:
        if not self._pool.has_host(host_id):
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
    RunStoreActor.options(name=STORE_ACTOR, namespace=ns, get_if_exists=True, **_ON_HEAD).remote(
        settings.store_path
    )
    ToolPoolActor.options(
        name=TOOLS_ACTOR,
        namespace=ns,
        get_if_exists=True,
        max_concurrency=10_000,
        # Tools that use the shared actors (embeddings) find them in this namespace.
        runtime_env={"env_vars": {NAMESPACE_ENV: ns}},
        **_ON_HEAD,
    ).remote(retry=settings.tool_retry, ledger_path=settings.ledger_path)
    EmbeddingBatcherActor.options(
        name=EMBEDDINGS_ACTOR, namespace=ns, get_if_exists=True, **_ON_HEAD
    ).remote(settings.embeddings, settings.providers, settings.prices, settings.cache)
    MemoryStoreActor.options(
        name=MEMORY_ACTOR, namespace=ns, get_if_exists=True, **_ON_HEAD
    ).remote(settings.memory_path)
    OutcomeStoreActor.options(
        name=OUTCOMES_ACTOR, namespace=ns, get_if_exists=True, **_ON_HEAD
    ).remote(settings.outcomes_path)
    TenantLimiterActor.options(
        name=LIMITER_ACTOR, namespace=ns, get_if_exists=True, **_ON_HEAD
    ).remote(None, path=settings.limiter_path, lease_ttl_s=settings.run_lease_ttl_s)
    pool: ActorHandle[Any] = RunPoolActor.options(  # type: ignore[attr-defined]
        name=POOL_ACTOR, namespace=ns, get_if_exists=True, max_concurrency=10_000, **_ON_HEAD
    ).remote(settings)
    BatchRunnerActor.options(  # type: ignore[attr-defined]
        name=BATCHES_ACTOR, namespace=ns, get_if_exists=True, max_restarts=-1, **_ON_HEAD
    ).remote(settings)
    await pool.warm_up.remote()
    return pool


class Runs:
    """How Serve replicas (and other callers) start runs and reach them by id, following a
    run to another host if its host dies."""

    def __init__(self, settings: RuntimeSettings, pool: ActorHandle[Any]) -> None:
        self._namespace = settings.namespace
        self._pool = pool
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
        if host is None:
            raise UnknownRun(f"run host {host_id!r} vanished", host_id)
        run_id: str = await host.start_run.remote(spec, request, context)
        return run_id

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
