"""The run host's actor: a RunHost with its ports wired to the shared services and the state."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable

import ray

from actors.embeddings import NAMESPACE_ENV
from actors.limiter import Admission
from actors.named import NamedActor
from actors.outcomes import RayOutcomeMetrics
from actors.run_host import RunHost
from actors.services import LIMITER_ACTOR, POOL_ACTOR, TOOLS_ACTOR, check_agents_package, service
from actors.settings import RuntimeSettings
from actors.state import State, process_state
from actors.state.outcomes import OutcomeStore
from actors.tool_pool import ToolPool
from agents.errors import ServiceUnavailable
from agents.logs import configure_logging
from agents.messages import Message, ToolCall
from agents.ports import ToolOutcome, ToolPort
from agents.spec import ToolSpec
from agents.tracing import configure_tracing


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
        user: str | None = None,
    ) -> ToolOutcome:
        try:
            outcome: ToolOutcome = await self._actor.call.remote(
                tool,
                call,
                idempotency_key=idempotency_key,
                timeout_s=timeout_s,
                tenant=tenant,
                user=user,
            )
        except (ServiceUnavailable, ray.exceptions.RayError) as exc:
            return ToolOutcome(
                ok=False, output="", error=f"tool pool unavailable: {type(exc).__name__}"
            )
        return outcome


class RoutedTools:
    """ToolPort that runs each call where its tool says (`ToolSpec.runs_in`): 'host' tools in
    this process's own pool, 'process' ones in the shared tool-pool actor. Kill switches, the
    result cache and shadows sit above this port, so they act the same on both paths."""

    def __init__(self, local: ToolPort, remote: ToolPort) -> None:
        self._local = local
        self._remote = remote

    async def call(
        self,
        tool: ToolSpec,
        call: ToolCall,
        *,
        idempotency_key: str,
        timeout_s: float,
        tenant: str = "default",
        user: str | None = None,
    ) -> ToolOutcome:
        port = self._local if tool.runs_in == "host" else self._remote
        return await port.call(
            tool,
            call,
            idempotency_key=idempotency_key,
            timeout_s=timeout_s,
            tenant=tenant,
            user=user,
        )


HOST_TOOL_CALLS = 256
"""Tool calls in flight at once in one run host's own pool (more wait for a slot)."""
HOST_TOOL_THREADS = 8
"""Threads for one run host's sync tools: they share the GIL with its runs, so a few."""


def host_tools(settings: RuntimeSettings, state: State) -> RoutedTools:
    """A run host's tools: its own pool, with the same retries and effect ledger as the
    shared actor's (the same idempotency keys find the same records), and the actor."""
    local = ToolPool(
        HOST_TOOL_CALLS, retry=settings.tool_retry, ledger=state.ledger, threads=HOST_TOOL_THREADS
    )
    return RoutedTools(local, RemoteTools(service(settings, TOOLS_ACTOR)))


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


LOAD_REPORT_DELAY_S = 0.05
"""A host tells the pool its load at most this often: one message for a burst of starts."""


class LoadReports:
    """Tells the pool a host's runs in flight after they changed, coalesced: the pool's
    view only steers starters (the host refuses what it has no room for), so a report
    may lag; a lost one is repaired by the next, or by a restarted pool asking the hosts."""

    def __init__(
        self,
        send: Callable[[int], None],
        load: Callable[[], int],
        delay_s: float = LOAD_REPORT_DELAY_S,
    ) -> None:
        self._send = send
        self._load = load
        self._delay_s = delay_s
        self._pending: asyncio.TimerHandle | None = None

    def changed(self, _host_id: str) -> None:
        if self._pending is None:
            loop = asyncio.get_running_loop()
            self._pending = loop.call_later(self._delay_s, self._report)

    def _report(self) -> None:
        self._pending = None
        self._send(self._load())


@ray.remote
class RunHostActor(RunHost):
    def __init__(self, host_id: str, settings: RuntimeSettings) -> None:
        check_agents_package()
        configure_tracing()
        configure_logging("run-host")
        # Tools running here that use the shared actors (embeddings) find them in this
        # namespace, as in the tool-pool actor (whose runtime_env sets it).
        os.environ[NAMESPACE_ENV] = settings.namespace
        state = process_state(settings.state_url)
        pool = service(settings, POOL_ACTOR)
        reports = LoadReports(lambda load: pool.tell("report", host_id, load), self.load)
        super().__init__(
            host_id,
            settings,
            host_tools(settings, state),
            StateMemory(state),
            state.runs,
            # Lost if the pool is down: a restarted pool counts loads from the hosts.
            on_run_start=reports.changed,
            on_run_end=reports.changed,
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
