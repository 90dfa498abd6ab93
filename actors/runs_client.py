"""The client Serve replicas (and other callers) reach runs with: start one on a host of
the cached pool view (actors.host_view), follow its events, and find it again on another
host if its host died."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncGenerator
from typing import Any

import ray
from pydantic import JsonValue
from ray.actor import ActorHandle
from ray.exceptions import ActorDiedError, RayActorError

from actors.breaker import BreakerState
from actors.credentials import TenantContext
from actors.host_view import HostView
from actors.run_host import host_of, new_run_id
from actors.services import HOST_PREFIX, MAX_MOVES, POOL_ACTOR, service
from actors.settings import RuntimeSettings
from agents.approvals import Decision
from agents.encoded import EventBatch
from agents.errors import AgentSpecError, HostFull, Overloaded, ServiceUnavailable, UnknownRun
from agents.events import Event
from agents.logs import first_traceback
from agents.loop import RunInput
from agents.spec import AgentSpec
from agents.summary import RunSummary
from agents.tracing import RunTrace

logger = logging.getLogger("rayfleet")

BREAKERS_TIMEOUT_S = 5.0
"""How long a status page waits for one host's breaker states."""
START_TRIES = 4
"""Hosts one start is offered to (the view's pick, then the pool's) before Overloaded."""


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
        self._view = HostView(settings.runs_per_actor)
        self._fetching: asyncio.Task[None] | None = None

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
        trace: RunTrace | None = None,
        user: str | None = None,
    ) -> str:
        """Start a run (for the end user `user`, if the caller named one); its id once
        `run.created` is durable. One call to a host in the
        common case: the host comes from the cached view, the pool is asked only when the
        view has no room or a host refused (see actors.host_view)."""
        if spec.mcp_unlisted():
            # Its MCP tools would be silently missing: they are listed at load (discover).
            raise AgentSpecError(
                f"agent {spec.key!r} names MCP servers whose tools were not listed: load it "
                "with actors.mcp_sessions.discover (the app config does)",
                spec.key,
            )
        context = context or TenantContext()
        await self._fresh_view()
        full: list[str] = []
        for attempt in range(START_TRIES):
            host_id = self._view.pick() if attempt == 0 else None
            if host_id is None:
                host_id = await self._pool.acquire.remote(full)
                self._view.took(host_id)
                self._fetch_in_background()  # the pool made or found room: learn it
            request = RunInput(
                run_id=new_run_id(host_id),
                input=input,
                thread_id=thread_id,
                namespace=namespace or context.tenant,
                tenant=context.tenant,
                assignment=assignment,
                primary_run_id=context.shadow_of,
                trace=trace or RunTrace.start(),
                user=user,
            )
            try:
                return await self._start_on(host_id, spec, request, context)
            except HostFull:  # full, or gone: nothing started there
                self._view.full(host_id)
                full.append(host_id)
        raise Overloaded(f"no run host had room after {START_TRIES} tries; try again", 1.0)

    async def _start_on(
        self, host_id: str, spec: AgentSpec, request: RunInput, context: TenantContext
    ) -> str:
        host = self._handle(host_id)
        if host is None:  # no actor by that name: nothing was asked, so nothing started
            self._view.drop(host_id)
            raise HostFull(f"run host {host_id!r} is gone", 0)
        try:
            run_id: str = await host.start_run.remote(spec, request, context)
            return run_id
        except RayActorError as exc:
            # The host died before or while it started the run (the view may name a host
            # that died since it was fetched): Ray cannot say which.
            self._hosts.pop(host_id, None)
            self._view.drop(host_id)
            died = exc
        if await self._was_created(request.run_id, host_id):
            return request.run_id  # it was: the pool resumed it on a live host
        if isinstance(died, ActorDiedError):
            # Dead for good, and no record of the run: it never started (a host stores the
            # record before it starts the run, and a dead process stores nothing more).
            # Another host is asked, with another run id.
            raise HostFull(f"run host {host_id!r} is dead", 0)
        # Unreachable, maybe not dead: it may still store the run, so not asked again.
        why = f"died while starting a run ({type(died).__name__})"
        raise ServiceUnavailable(f"run host {host_id!r} {why}; try again", HOST_PREFIX + host_id)

    async def _was_created(self, run_id: str, host_id: str) -> bool:
        """True if the run's record exists: the pool then resumes it on a live host."""
        try:
            await self._pool.recover.remote(run_id, suspect=host_id)
        except UnknownRun:
            return False
        return True

    async def _fresh_view(self) -> None:
        if not self._view.fetched:
            await self._fetch()  # the first start waits for the view
        elif self._view.stale():
            self._fetch_in_background()

    def _fetch_in_background(self) -> None:
        if self._fetching is None or self._fetching.done():
            self._fetching = asyncio.create_task(self._fetch_view())

    async def _fetch(self) -> None:
        self._fetch_in_background()
        assert self._fetching is not None
        await asyncio.shield(self._fetching)

    async def _fetch_view(self) -> None:
        try:
            self._view.update(await self._pool.loads.remote())
        except Exception as exc:  # the view only steers: starts fall back to the pool
            logger.warning(
                "fetching the run pool's view failed: %r", exc, exc_info=first_traceback(exc)
            )

    async def batches(self, run_id: str, after: int = 0) -> AsyncGenerator[EventBatch, None]:
        """Every event after seq `after`, live until the terminal one, in batches as the
        host sent them (never decoded here). If the run's host dies, the run resumes
        elsewhere and the stream goes on from the last seq seen: seqs stay contiguous."""
        seen, suspect = after, None
        for _ in range(MAX_MOVES):
            host_id, host = await self._locate(run_id, suspect)
            stream: Any = host.events.options(num_returns="streaming").remote(run_id, seen)
            finished = False
            try:
                async for ref in stream:
                    batch: EventBatch = await ref
                    seen = batch.last_seq
                    yield batch
                    if batch.ended:
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
        raise UnknownRun(f"run {run_id!r} moved hosts more than {MAX_MOVES} times", run_id)

    async def events(self, run_id: str, after: int = 0) -> AsyncGenerator[Event, None]:
        """`batches`, decoded: for callers that need typed events."""
        async with contextlib.aclosing(self.batches(run_id, after)) as batches:
            async for batch in batches:
                for event in batch.events():
                    yield event

    async def _call(self, run_id: str, method: str, *args: Any) -> Any:
        host_id, host = await self._locate(run_id)
        try:
            return await getattr(host, method).remote(run_id, *args)
        except RayActorError:
            host_id, host = await self._locate(run_id, suspect=host_id)
            return await getattr(host, method).remote(run_id, *args)

    async def summary(self, run_id: str) -> RunSummary:
        result: RunSummary = await self._call(run_id, "summary")
        return result

    async def cancel(self, run_id: str) -> bool:
        cancelled: bool = await self._call(run_id, "cancel")
        return cancelled

    async def decide(
        self,
        run_id: str,
        call_id: str,
        decision: Decision,
        by: str,
        arguments: dict[str, JsonValue] | None = None,
        message: str | None = None,
    ) -> RunSummary:
        """Decide the tool call the paused run waits on, and resume it (RunHost.decide)."""
        decided: RunSummary = await self._call(
            run_id, "decide", call_id, decision, by, arguments, message
        )
        return decided

    async def forget(self, run_id: str) -> bool:
        """Make the run's host drop a deleted run from memory (False: it is running)."""
        forgotten: bool = await self._call(run_id, "forget")
        return forgotten

    async def breaker_states(self) -> dict[str, dict[str, BreakerState]]:
        """Each live host's provider breakers (host id -> breaker -> state). A host that
        does not answer within BREAKERS_TIMEOUT_S is left out: a status page must not hang."""
        host_ids = list(await self._pool.loads.remote())

        async def states(host_id: str) -> dict[str, BreakerState] | None:
            host = self._handle(host_id)
            if host is None:
                return None
            try:
                found: dict[str, BreakerState] = await asyncio.wait_for(
                    host.breaker_states.remote(), BREAKERS_TIMEOUT_S
                )
            except (RayActorError, TimeoutError):
                self._hosts.pop(host_id, None)
                return None
            return found

        answers = await asyncio.gather(*(states(h) for h in host_ids))
        return {h: a for h, a in zip(host_ids, answers, strict=True) if a is not None}
