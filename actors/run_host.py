"""The run host: a process that owns runs — their state, budgets and event logs — as asyncio
tasks. Runs outlive the HTTP request and the Serve replica that started them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import secrets
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

import httpx2

from actors.credentials import TenantContext
from actors.router import ModelRouter
from actors.settings import RuntimeSettings
from actors.tenant_model import LimiterPort, TenantModel
from agents.errors import Overloaded, RequestInvalid, UnknownRun
from agents.eventlog import EventLog
from agents.events import Event
from agents.loop import Coalescing, Ports, RunInput, execute_run
from agents.ports import MemoryPort, ToolPort
from agents.pricing import PriceTable
from agents.spec import AgentSpec
from agents.summary import RunSummary, summarize

if TYPE_CHECKING:
    from actors.store import RunRecord

logger = logging.getLogger("rayfleet")

_RUN_ID = re.compile(r"^run-(?P<host>[a-z0-9]{1,16})-[0-9a-f]{20}$")


def new_run_id(host_id: str) -> str:
    """A run id names its host, so any replica can find the run without a lookup."""
    return f"run-{host_id}-{secrets.token_hex(10)}"


def host_of(run_id: str) -> str:
    """The host id inside a run id; UnknownRun for anything that is not one of ours."""
    match = _RUN_ID.fullmatch(run_id)
    if match is None:
        raise UnknownRun(f"unknown run {run_id!r}", run_id)
    return match["host"]


class RunStorePort(Protocol):
    """What a run host needs of the run store (actors.store.RunStore, or its actor)."""

    async def create_run(
        self, spec: AgentSpec, request: RunInput, context: TenantContext, host_id: str
    ) -> None: ...

    async def append_events(self, batch: dict[str, list[Event]]) -> None: ...

    async def load_run(self, run_id: str) -> RunRecord | None: ...


@dataclass
class _Run:
    spec_key: str
    log: EventLog
    task: asyncio.Task[None]


class RunHost:
    """Hosts many runs in one process; `runs_per_actor` decides how many (no Ray in here)."""

    def __init__(
        self,
        host_id: str,
        settings: RuntimeSettings,
        tools: ToolPort,
        memory: MemoryPort | None = None,
        store: RunStorePort | None = None,
        on_run_end: Callable[[str], None] | None = None,
        limiter: LimiterPort | None = None,
    ) -> None:
        self.host_id = host_id
        self._settings = settings
        self._tools = tools
        self._memory = memory
        self._store = store
        self._limiter = limiter
        self._prices = PriceTable(settings.prices)
        self._dirty: dict[str, EventLog] = {}
        self._background: set[asyncio.Task[None]] = set()
        self._flusher: asyncio.Task[None] | None = None
        self._on_run_end = on_run_end
        self._runs: dict[str, _Run] = {}
        self._finished: OrderedDict[str, None] = OrderedDict()
        self._router: ModelRouter | None = None
        self._http: httpx2.AsyncClient | None = None
        self._coalescing = Coalescing(settings.coalesce_chars, settings.coalesce_ms)

    def _model(self) -> ModelRouter:
        # Built on first use so the pooled client belongs to the event loop that uses it.
        if self._router is None:
            limits = httpx2.Limits(max_connections=1000, max_keepalive_connections=200)
            self._http = httpx2.AsyncClient(limits=limits, timeout=None)
            self._router = ModelRouter(
                self._settings.providers,
                PriceTable(self._settings.prices),
                self._http,
                settings=self._settings.router,
            )
        return self._router

    def load(self) -> int:
        """Runs still in flight here."""
        return len(self._runs) - len(self._finished)

    async def start_run(
        self, spec: AgentSpec, request: RunInput, context: TenantContext | None = None
    ) -> str:
        """Start a run as a task and return its id once `run.created` is in its log."""
        if request.run_id in self._runs:
            raise RequestInvalid(f"run {request.run_id!r} already exists", "run_id")
        if host_of(request.run_id) != self.host_id:
            raise RequestInvalid(f"run {request.run_id!r} belongs to another host", "run_id")
        # The record is durable before the run starts: from here on it can be resumed.
        context = context or TenantContext(tenant=request.tenant)
        if self._store is not None:
            await self._store.create_run(spec, request, context, self.host_id)
        log = self._launch(spec, request, context, [])
        try:  # answer once run.created is durable and visible
            await asyncio.wait_for(log.wait_published(1), self._settings.store_timeout_s)
        except TimeoutError:
            self._runs[request.run_id].task.cancel()
            raise Overloaded("the run store did not take the new run in time", 5.0) from None
        return request.run_id

    async def resume_run(self, run_id: str) -> str:
        """Take over a run whose host died, from its last durable event."""
        if run_id in self._runs:
            return run_id
        record = None if self._store is None else await self._store.load_run(run_id)
        if record is None:
            raise UnknownRun(f"unknown run {run_id!r}", run_id)
        self._launch(record.spec, record.request, record.context, record.events)
        return run_id

    def _launch(
        self, spec: AgentSpec, request: RunInput, context: TenantContext, events: list[Event]
    ) -> EventLog:
        durable = self._store is not None
        log = EventLog(request.run_id, events, durable=durable, on_append=self._mark_dirty)
        model = TenantModel(self._model(), context, self._prices, self._limiter)
        ports = Ports(model=model, tools=self._tools, memory=self._memory)
        task = asyncio.create_task(
            execute_run(spec, request, ports, log, coalescing=self._coalescing),
            name=request.run_id,
        )
        self._runs[request.run_id] = _Run(spec.key, log, task)
        task.add_done_callback(lambda _: self._finish(request.run_id, context.tenant))
        return log

    def _mark_dirty(self, log: EventLog) -> None:
        self._dirty[log.run_id] = log
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._flush())

    async def _flush(self) -> None:
        """Group commit: one store call carries every run's new events; events that arrive
        while a call is in flight go together in the next one."""
        assert self._store is not None
        failures = 0
        while self._dirty:
            logs, self._dirty = list(self._dirty.values()), {}
            batch = {log.run_id: log.take_unsent() for log in logs}
            try:
                await self._store.append_events({k: v for k, v in batch.items() if v})
            except Exception as exc:
                # Nothing is published until it is stored: readers wait, the runs go on.
                failures += 1
                logger.warning("run store write failed (%d): %r", failures, exc)
                for log in logs:
                    sent = batch[log.run_id]
                    if sent:
                        log.unsend(sent[0].seq - 1)
                    self._dirty.setdefault(log.run_id, log)
                await asyncio.sleep(min(0.05 * 2**failures, 2.0))
                continue
            failures = 0
            for log in logs:
                if batch[log.run_id]:
                    log.publish(batch[log.run_id][-1].seq)

    def _finish(self, run_id: str, tenant: str) -> None:
        if self._limiter is not None:
            ended = asyncio.create_task(self._limiter.end_run(tenant))
            self._background.add(ended)
            ended.add_done_callback(self._background.discard)
        self._finished[run_id] = None
        while len(self._finished) > self._settings.finished_runs_kept:
            evicted, _ = self._finished.popitem(last=False)
            self._runs.pop(evicted, None)
        if self._on_run_end is not None:
            self._on_run_end(self.host_id)

    def _run(self, run_id: str) -> _Run:
        run = self._runs.get(run_id)
        if run is None:
            raise UnknownRun(f"unknown run {run_id!r}", run_id)
        return run

    async def events(self, run_id: str, after: int = 0) -> AsyncIterator[list[Event]]:
        """The run's events after seq `after`, live until its terminal event, in batches:
        one batch is one Ray object, so a reader that falls behind catches up cheaply."""
        async for batch in self._run(run_id).log.follow(after):
            yield batch

    async def summary(self, run_id: str) -> RunSummary:
        """What readers may know of the run: its published (durable) events."""
        return summarize(self._run(run_id).log.published())

    async def cancel(self, run_id: str) -> bool:
        """Cancel a running run; False if it had already ended."""
        run = self._run(run_id)
        if run.task.done():
            return False
        run.task.cancel()
        await asyncio.gather(run.task, return_exceptions=True)
        # Answer once run.cancelled is stored (or the store has had its time).
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self._settings.store_timeout_s):
                await run.log.wait_published(run.log.last_seq)
        return True

    async def aclose(self) -> None:
        for run in self._runs.values():
            run.task.cancel()
        await asyncio.gather(*(run.task for run in self._runs.values()), return_exceptions=True)
        if self._http is not None:
            await self._http.aclose()
