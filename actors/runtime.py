"""The Ray side: thin actor shells over the plain classes, and the client Serve uses to reach runs.

Named, detached actors in one namespace, so a run outlives the Serve replica that started it
and any replica can find it by id:
    rayfleet-pool              RunPool       hands out run slots
    rayfleet-tools             ToolPool      Python function tools
    rayfleet-memory            MemoryStore   conversation threads
    rayfleet-runhost-<host>    RunHost       the runs themselves
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from typing import Any

import ray
from ray.actor import ActorHandle

from actors.memory import MemoryStoreActor
from actors.run_host import RunHost, host_of, new_run_id
from actors.run_pool import RunPool
from actors.settings import RuntimeSettings
from actors.tool_pool import ToolPoolActor
from agents.errors import UnknownRun
from agents.events import Event
from agents.loop import RunInput
from agents.messages import Message, ToolCall
from agents.ports import ToolOutcome
from agents.spec import AgentSpec, ToolSpec
from agents.summary import RunSummary

logger = logging.getLogger("rayfleet")

POOL_ACTOR = "rayfleet-pool"
TOOLS_ACTOR = "rayfleet-tools"
MEMORY_ACTOR = "rayfleet-memory"
HOST_PREFIX = "rayfleet-runhost-"
# I/O-bound actors: a small reservation, many concurrent calls (every live stream is one).
_ACTOR_OPTIONS: dict[str, Any] = {"num_cpus": 0.01, "lifetime": "detached"}


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
        self, tool: ToolSpec, call: ToolCall, *, idempotency_key: str, timeout_s: float
    ) -> ToolOutcome:
        try:
            outcome: ToolOutcome = await self._actor.call.remote(
                tool, call, idempotency_key=idempotency_key, timeout_s=timeout_s
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


@ray.remote
class RunHostActor(RunHost):
    def __init__(self, host_id: str, settings: RuntimeSettings) -> None:
        check_agents_package()
        tools = ray.get_actor(TOOLS_ACTOR, namespace=settings.namespace)
        pool = ray.get_actor(POOL_ACTOR, namespace=settings.namespace)
        memory = ray.get_actor(MEMORY_ACTOR, namespace=settings.namespace)
        super().__init__(
            host_id,
            settings,
            RemoteTools(tools),
            RemoteMemory(memory),
            on_run_end=lambda h: pool.release.remote(h),
        )

    def ready(self) -> bool:
        return True


@ray.remote
class RunPoolActor:
    """The single RunPool for the cluster; it creates run hosts as load requires."""

    def __init__(self, settings: RuntimeSettings) -> None:
        check_agents_package()
        self._settings = settings
        self._pool = RunPool(settings.runs_per_actor, settings.warm_run_hosts, self._spawn)

    async def _spawn(self, host_id: str) -> None:
        host = RunHostActor.options(  # type: ignore[attr-defined]
            name=HOST_PREFIX + host_id,
            namespace=self._settings.namespace,
            max_concurrency=100_000,
            get_if_exists=True,
            **_ACTOR_OPTIONS,
        ).remote(host_id, self._settings)
        await host.ready.remote()

    async def warm_up(self) -> dict[str, int]:
        await self._pool.warm_up()
        return self._pool.stats()

    async def acquire(self) -> str:
        return await self._pool.acquire()

    def release(self, host_id: str) -> None:
        self._pool.release(host_id)

    def stats(self) -> dict[str, int]:
        return self._pool.stats()


async def ensure_runtime(settings: RuntimeSettings) -> ActorHandle[Any]:
    """Get or create the shared actors; returns the pool once its warm hosts are ready."""
    ToolPoolActor.options(
        name=TOOLS_ACTOR,
        namespace=settings.namespace,
        get_if_exists=True,
        max_concurrency=10_000,
        **_ACTOR_OPTIONS,
    ).remote()
    MemoryStoreActor.options(
        name=MEMORY_ACTOR, namespace=settings.namespace, get_if_exists=True, **_ACTOR_OPTIONS
    ).remote(settings.memory_path)
    pool: ActorHandle[Any] = RunPoolActor.options(  # type: ignore[attr-defined]
        name=POOL_ACTOR,
        namespace=settings.namespace,
        get_if_exists=True,
        max_concurrency=10_000,
        **_ACTOR_OPTIONS,
    ).remote(settings)
    await pool.warm_up.remote()
    return pool


class Runs:
    """How Serve replicas (and other callers) start runs and reach them by id."""

    def __init__(self, settings: RuntimeSettings, pool: ActorHandle[Any]) -> None:
        self._namespace = settings.namespace
        self._pool = pool
        self._hosts: dict[str, ActorHandle[Any]] = {}

    def _host(self, host_id: str) -> ActorHandle[Any]:
        host = self._hosts.get(host_id)
        if host is None:
            try:
                host = ray.get_actor(HOST_PREFIX + host_id, namespace=self._namespace)
            except ValueError:
                raise UnknownRun(f"run host {host_id!r} is gone", host_id) from None
            self._hosts[host_id] = host
        return host

    async def start(
        self, spec: AgentSpec, input: str, thread_id: str | None = None, namespace: str = "default"
    ) -> str:
        host_id = await self._pool.acquire.remote()
        request = RunInput(
            run_id=new_run_id(host_id), input=input, thread_id=thread_id, namespace=namespace
        )
        run_id: str = await self._host(host_id).start_run.remote(spec, request)
        return run_id

    async def events(self, run_id: str, after: int = 0) -> AsyncIterator[Event]:
        """Every event after seq `after`, live until the terminal one."""
        host = self._host(host_of(run_id))
        stream: Any = host.events.options(num_returns="streaming").remote(run_id, after)
        finished = False
        try:
            async for ref in stream:
                for event in await ref:
                    yield event
            finished = True
        finally:
            if not finished:
                # The reader went away (a client disconnect): stop following, never the run.
                ray.cancel(stream)

    async def summary(self, run_id: str) -> RunSummary:
        result: RunSummary = await self._host(host_of(run_id)).summary.remote(run_id)
        return result

    async def cancel(self, run_id: str) -> bool:
        cancelled: bool = await self._host(host_of(run_id)).cancel.remote(run_id)
        return cancelled
