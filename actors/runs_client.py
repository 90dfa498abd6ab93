"""The client Serve replicas (and other callers) reach runs with: start one on a host the
pool hands out, follow its events, and find it again on another host if its host died."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncGenerator
from typing import Any

import ray
from ray.actor import ActorHandle
from ray.exceptions import RayActorError

from actors.credentials import TenantContext
from actors.run_host import host_of, new_run_id
from actors.services import HOST_PREFIX, MAX_MOVES, POOL_ACTOR, service
from actors.settings import RuntimeSettings
from agents.encoded import EventBatch
from agents.errors import ServiceUnavailable, UnknownRun
from agents.events import Event
from agents.loop import RunInput
from agents.spec import AgentSpec
from agents.summary import RunSummary


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
