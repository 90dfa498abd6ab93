"""The run host: a process that owns runs — their state, budgets and event logs — as asyncio
tasks. Runs outlive the HTTP request and the Serve replica that started them.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import json
import logging
import re
import secrets
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable, Coroutine
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import httpx2
from pydantic import JsonValue

from actors.breaker import BreakerState
from actors.caches import CachedModel, CachedTools, CacheStore
from actors.credentials import TenantContext
from actors.mcp_tenant import TenantMcpTools, mcp_credentials
from actors.metrics import RunObserver, rayfleet_metrics
from actors.outcomes import RunOutcome
from actors.router import ModelRouter
from actors.settings import RuntimeSettings
from actors.switches import KILL_PREFIX, KillSwitches
from actors.tenant_model import LimiterPort, TenantModel
from agents.approvals import Decision, decision_fields, waiting
from agents.calls import canonical_json
from agents.encoded import EncodedEvent, EventBatch
from agents.errors import HostFull, NotPending, Overloaded, RequestInvalid, UnknownRun
from agents.eventlog import EventLog
from agents.events import (
    ApprovalDecided,
    BudgetExceededEvent,
    Event,
    RunCancelled,
    RunCreated,
    RunFailed,
    ToolCalled,
    ToolResulted,
    is_terminal,
)
from agents.guardrails import check_arguments
from agents.logs import first_traceback, in_run
from agents.loop import Coalescing, Ports, RunInput, execute_run
from agents.messages import Message, TextDelta, ToolCall, ToolSchema
from agents.ports import Discard, MemoryPort, ModelPort, ModelResult, ToolOutcome, ToolPort
from agents.pricing import PriceTable
from agents.spec import AgentSpec, TierSpec, ToolSpec
from agents.summary import RunSummary, summarize

if TYPE_CHECKING:
    from actors.state.runs import RunRecord

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
    """What a run host needs of the run store (actors.state.runs.RunStore)."""

    async def create_run(
        self, spec: AgentSpec, request: RunInput, context: TenantContext, host_id: str
    ) -> None: ...

    async def append_events(self, batch: dict[str, list[EncodedEvent]]) -> None: ...

    async def load_run(self, run_id: str) -> RunRecord | None: ...


class SettingsReader(Protocol):
    """Where a run host reads the kill switches (actors.state.runs.SettingsStore)."""

    async def settings(self, prefix: str) -> dict[str, str]: ...


class _GuardedTools:
    """The host's tools, refusing any tool a kill switch covers (the model sees it fail)."""

    def __init__(self, tools: ToolPort, switches: Callable[[], KillSwitches]) -> None:
        self._tools = tools
        self._switches = switches

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
        reason = self._switches().tool_killed(tool.name)
        if reason is not None:
            return ToolOutcome(ok=False, output="", error=f"unavailable: {reason}")
        return await self._tools.call(
            tool,
            call,
            idempotency_key=idempotency_key,
            timeout_s=timeout_s,
            tenant=tenant,
            user=user,
        )


class _UnkilledFirst:
    """Drops killed models from a tier before the response cache sees it (the cache's key
    names the chain), so a killed model's cached answers are never served."""

    def __init__(self, inner: ModelPort, unkilled: Callable[[TierSpec], TierSpec]) -> None:
        self._inner = inner
        self._unkilled = unkilled

    def stream(
        self,
        tier: TierSpec,
        messages: tuple[Message, ...],
        tools: tuple[ToolSchema, ...],
        *,
        timeout_s: float,
    ) -> AsyncIterator[TextDelta | Discard | ModelResult]:
        return self._inner.stream(self._unkilled(tier), messages, tools, timeout_s=timeout_s)


class _ShadowTools:
    """A shadow run's tools: read-only tools run; a side-effecting one never does. It gets
    the primary run's recorded result for the same call, else the tool's dry-run result."""

    def __init__(self, tools: ToolPort, store: RunStorePort, primary_run_id: str) -> None:
        self._tools = tools
        self._store = store
        self._primary = primary_run_id
        self._recorded: dict[tuple[str, str], ToolOutcome] | None = None

    async def _primary_results(self) -> dict[tuple[str, str], ToolOutcome]:
        if self._recorded is None:
            record = await self._store.load_run(self._primary)
            events = record.events if record is not None else []
            # Providers may reuse call ids from step to step: a call is its id in its step.
            calls = {(e.step, e.call_id): e for e in events if isinstance(e, ToolCalled)}
            self._recorded = {}
            for event in events:
                if not isinstance(event, ToolResulted):
                    continue
                called = calls.get((event.step, event.call_id))
                if called is not None:
                    key = (event.tool, canonical_json(called.arguments))
                    outcome = ToolOutcome(ok=event.ok, output=event.output, error=event.error)
                    self._recorded.setdefault(key, outcome)
        return self._recorded

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
        if not tool.side_effects:
            return await self._tools.call(
                tool,
                call,
                idempotency_key=idempotency_key,
                timeout_s=timeout_s,
                tenant=tenant,
                user=user,
            )
        recorded = (await self._primary_results()).get((tool.name, canonical_json(call.arguments)))
        if recorded is not None:
            return recorded
        if tool.dry_run_result is not None:
            return ToolOutcome(ok=True, output=json.dumps(tool.dry_run_result))
        return ToolOutcome(
            ok=False, output="", error=f"{tool.name} is not executed in a shadow run"
        )


class OutcomePort(Protocol):
    """Where a finished run's outcome goes (actors.state.outcomes.OutcomeStore)."""

    async def record_run(self, outcome: RunOutcome) -> None: ...


async def _record_once_stored(outcomes: OutcomePort, log: EventLog, outcome: RunOutcome) -> None:
    """Record how a run ended once its terminal event is stored: if its host dies before,
    the run resumes elsewhere and may end otherwise, and the first outcome recorded stands."""
    await log.wait_published(log.last_seq)
    await outcomes.record_run(outcome)


def outcome_of(events: list[Event]) -> RunOutcome | None:
    """A finished run's outcome, from its events (None while it is still running)."""
    summary = summarize(events)
    if summary.status == "running" or summary.ended_at is None:
        return None
    created, end = events[0], events[-1]
    assert isinstance(created, RunCreated)
    return RunOutcome(
        run_id=summary.run_id,
        agent=summary.agent,
        version=summary.version,
        tenant=summary.tenant,
        assignment=created.assignment,
        status=summary.status,
        cost_usd=summary.cost_usd,
        run_s=max(0.0, summary.ended_at - summary.created_at),
        ended_at=summary.ended_at,
        primary_run_id=created.primary_run_id,
        output=summary.output,
        steps=summary.steps,
        over_budget=any(isinstance(e, BudgetExceededEvent) for e in events),
        code=end.code if isinstance(end, RunFailed) else "",
    )


@dataclass
class _Run:
    spec: AgentSpec
    request: RunInput
    context: TenantContext
    log: EventLog
    task: asyncio.Task[None]
    lease: str | None = None
    """The run slot this host renews while the run lives and releases when it ends."""
    observer: RunObserver | None = None
    """Derives the run's metrics from the events this host stores (none for a shadow)."""

    @property
    def paused(self) -> bool:
        """Its task ended without a terminal event: it waits for a person's decision."""
        return self.task.done() and not self.log.closed


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
        outcomes: OutcomePort | None = None,
        switches: SettingsReader | None = None,
        on_run_start: Callable[[str], None] | None = None,
    ) -> None:
        """`switches`: where the kill switches are stored (none: no run is ever killed);
        `on_run_start` / `on_run_end`: told this host's id when a run starts (or resumes)
        here / ends, i.e. when `load()` changed."""
        self.host_id = host_id
        self._settings = settings
        self._switches = KillSwitches()
        self._switches_read_at = float("-inf")  # when the last good read was asked
        self._switch_watch: asyncio.Task[None] | None = None
        self._lease_renewer: asyncio.Task[None] | None = None
        self._cache = CacheStore.from_settings(settings.cache)
        self._tools = _GuardedTools(CachedTools(tools, self._cache), lambda: self._switches)
        self._memory = memory
        self._store = store
        self._stored_switches = switches
        self._limiter = limiter
        self._outcomes = outcomes
        self._prices = PriceTable(settings.prices)
        self._dirty: dict[str, EventLog] = {}
        self._background: set[asyncio.Task[None]] = set()
        self._flusher: asyncio.Task[None] | None = None
        self._on_run_end = on_run_end
        self._on_run_start = on_run_start
        self._starting = 0
        """start_run calls past the capacity check whose run is not launched yet."""
        self._runs: dict[str, _Run] = {}
        self._deciding: dict[str, asyncio.Lock] = {}
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

    def breaker_states(self) -> dict[str, BreakerState]:
        """This process's provider breakers (none before its first model call)."""
        return {} if self._router is None else self._router.breakers.states()

    def load(self) -> int:
        """Runs still in flight here."""
        return len(self._runs) - len(self._finished)

    async def start_run(
        self, spec: AgentSpec, request: RunInput, context: TenantContext | None = None
    ) -> str:
        """Start a run as a task and return its id once `run.created` is in its log.

        The host is the judge of its own room: holding `runs_per_actor` runs (resumed ones
        included), it refuses with HostFull, having started nothing. Starters pick hosts
        from a cached view of the pool (actors.host_view), so only the host knows for sure."""
        if request.run_id in self._runs:
            raise RequestInvalid(f"run {request.run_id!r} already exists", "run_id")
        if host_of(request.run_id) != self.host_id:
            raise RequestInvalid(f"run {request.run_id!r} belongs to another host", "run_id")
        capacity = self._settings.runs_per_actor
        if self.load() + self._starting >= capacity:
            raise HostFull(f"run host {self.host_id!r} holds runs_per_actor={capacity} runs", 0)
        # The record is durable before the run starts: from here on it can be resumed.
        context = context or TenantContext(tenant=request.tenant)
        self._starting += 1
        try:
            if self._store is not None:
                await self._store.create_run(spec, request, context, self.host_id)
            log = self._launch(spec, request, context, [])
        finally:
            self._starting -= 1
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
        trace_id = request.trace.trace_id if request.trace is not None else None
        log = EventLog(
            request.run_id, events, durable=durable, on_append=self._mark_dirty, trace_id=trace_id
        )
        # A run resumed after its end (a reader found its host dead) took no slot here: its
        # slot was released when it ended; nor does a run that waits for a person.
        ended = bool(events) and is_terminal(events[-1])
        lease = None if ended or waiting(events) is not None else context.lease
        observer = None
        if request.assignment != "shadow":
            observer = RunObserver(rayfleet_metrics(), spec, context.tenant, events)
        self._start(spec, request, context, log, lease, observer)
        return log

    def _start(
        self,
        spec: AgentSpec,
        request: RunInput,
        context: TenantContext,
        log: EventLog,
        lease: str | None,
        observer: RunObserver | None,
    ) -> None:
        """Run (or run again, after a decision) the loop over the run's log, as a task."""
        durable = self._store is not None
        trace_id = log.trace_id
        started = time.monotonic()
        self._watch_switches()
        tenant_model = TenantModel(
            self._model(), context, self._prices, self._limiter, lambda: self._switches
        )

        def model_for(agent: AgentSpec) -> ModelPort:
            """The tenant's model for `agent` (this run's, or a sub-agent's): through the
            response cache if the agent asks for one."""
            if agent.response_cache_ttl_s is None:
                return tenant_model
            ttl_s = agent.response_cache_ttl_s
            cached = CachedModel(tenant_model, self._cache, context.tenant, ttl_s, scope=agent.key)
            return _UnkilledFirst(cached, tenant_model.unkilled)

        model = model_for(spec)
        tools: ToolPort = self._tools
        if mcp_credentials(context):
            tools = TenantMcpTools(tools, context)
        if context.shadow_of is not None and self._store is not None:
            tools = _ShadowTools(tools, self._store, context.shadow_of)
        ports = Ports(
            model=model,
            tools=tools,
            memory=self._memory,
            guard=lambda: self._run_killed(spec, context.tenant, started),
            prices=self._prices,
            model_for=model_for,
            # A side effect runs once its tool.call is stored, i.e. published by `_flush`.
            durable=log.wait_published if durable else None,
        )
        # The task binds its run for its log lines (a task's context is its own copy).
        work = execute_run(spec, request, ports, log, coalescing=self._coalescing)
        task = asyncio.create_task(
            in_run(work, request.run_id, context.tenant, trace_id), name=request.run_id
        )
        self._runs[request.run_id] = _Run(spec, request, context, log, task, lease, observer)
        self._finished.pop(request.run_id, None)  # running again after a decision
        self._live_runs_changed()
        task.add_done_callback(lambda _: self._finish(request.run_id, lease))
        if lease is not None:
            self._renew_leases()
        if self._on_run_start is not None:
            self._on_run_start(self.host_id)

    def _run_killed(self, spec: AgentSpec, tenant: str, started: float) -> str | None:
        """Why a running run must stop, judged only by switches read after it started here:
        the gateway admitted it under switches at least that new, so an older copy (one that
        still holds a switch since cleared) must not cancel it."""
        if self._switches_read_at < started:
            return None
        return self._switches.run_killed(spec.name, spec.version, tenant)

    def _watch_switches(self) -> None:
        if self._stored_switches is not None and self._switch_watch is None:
            self._switch_watch = asyncio.create_task(self._poll_switches(self._stored_switches))

    async def _poll_switches(self, stored: SettingsReader) -> None:
        """Kill switches live in the state; a running run sees a new one within a poll."""
        while True:
            try:
                asked_at = time.monotonic()
                self._switches = KillSwitches.from_settings(await stored.settings(KILL_PREFIX))
                self._switches_read_at = asked_at
            except Exception as exc:  # keep the last known switches; try again
                logger.warning(
                    "reading kill switches failed: %r", exc, exc_info=first_traceback(exc)
                )
            await asyncio.sleep(self._settings.switches_poll_s)

    def _renew_leases(self) -> None:
        if self._limiter is not None and self._lease_renewer is None:
            self._lease_renewer = asyncio.create_task(self._renew_every(self._limiter))

    async def _renew_every(self, limiter: LimiterPort) -> None:
        """Keep the slots of this host's live runs, all in one call per interval: a slot
        whose host dies expires after the TTL unless its run resumes elsewhere."""
        while True:
            await asyncio.sleep(self._settings.run_lease_ttl_s / 3)
            leases = [r.lease for r in self._runs.values() if r.lease and not r.task.done()]
            if not leases:
                continue
            try:
                unknown = await limiter.renew_runs(leases)
            except Exception as exc:  # try again next interval, well within the TTL
                logger.warning(
                    "renewing %d run leases failed: %r",
                    len(leases),
                    exc,
                    exc_info=first_traceback(exc),
                )
                continue
            if unknown:
                logger.warning("%d live runs' leases had expired", len(unknown))

    def _mark_dirty(self, log: EventLog) -> None:
        self._dirty[log.run_id] = log
        if self._flusher is None or self._flusher.done():
            # Called from within some run's task: the flusher, which serves every run, must
            # not inherit that run's context (its log lines would name that run).
            self._flusher = asyncio.create_task(self._flush(), context=contextvars.Context())

    async def _flush(self) -> None:
        """Group commit: one store call carries every run's new events; events that arrive
        while a call is in flight go together in the next one."""
        assert self._store is not None
        failures = 0
        while self._dirty:
            logs, self._dirty = list(self._dirty.values()), {}
            # Encoded once here: the store's rows, and later every reader's SSE frames.
            batch = {log.run_id: log.encoded(log.take_unsent()) for log in logs}
            started = time.perf_counter()
            try:
                await self._store.append_events({k: v for k, v in batch.items() if v})
            except Exception as exc:
                self._observe_commit("error", time.perf_counter() - started, {})
                # Nothing is published until it is stored: readers wait, the runs go on.
                failures += 1
                logger.warning(
                    "run store write failed (%d): %r", failures, exc, exc_info=first_traceback(exc)
                )
                for log in logs:
                    sent = batch[log.run_id]
                    if sent:
                        log.unsend(sent[0].event.seq - 1)
                    self._dirty.setdefault(log.run_id, log)
                await asyncio.sleep(min(0.05 * 2**failures, 2.0))
                continue
            failures = 0
            elapsed_s = time.perf_counter() - started
            for log in logs:
                if batch[log.run_id]:
                    log.publish(batch[log.run_id][-1].event.seq)
            self._observe_commit("ok", elapsed_s, batch)

    def _observe_commit(
        self, status: str, elapsed_s: float, stored: dict[str, list[EncodedEvent]]
    ) -> None:
        """A commit's latency, and the metrics of the events it stored: observed once, here,
        and never again (a host that resumes a run reads its events back from the store).
        Metrics never stop the group commit: a failure here is logged and dropped."""
        try:
            rayfleet_metrics().store_commit_seconds.observe(elapsed_s, tags={"status": status})
            for run_id, events in stored.items():
                run = self._runs.get(run_id)
                if events and run is not None and run.observer is not None:
                    run.observer.observe(e.event for e in events)
        except Exception as exc:
            logger.warning("recording metrics failed: %r", exc)

    def _live_runs_changed(self) -> None:
        rayfleet_metrics().live_runs.set(self.load(), tags={"host": self.host_id})

    def _finish(self, run_id: str, lease: str | None) -> None:
        if self._limiter is not None and lease is not None:
            self._in_background(self._limiter.release_run(lease))
        run = self._runs[run_id]
        run.lease = None  # released: a run resumed by a decision runs without a slot
        self._record_outcome(run)
        self._finished[run_id] = None
        while len(self._finished) > self._settings.finished_runs_kept:
            evicted, _ = self._finished.popitem(last=False)
            self._runs.pop(evicted, None)
        self._live_runs_changed()
        if self._on_run_end is not None:
            self._on_run_end(self.host_id)

    def _record_outcome(self, run: _Run) -> None:
        if self._outcomes is not None:
            outcome = outcome_of(run.log.events())
            if outcome is not None:
                self._in_background(_record_once_stored(self._outcomes, run.log, outcome))

    async def decide(
        self,
        run_id: str,
        call_id: str | None,
        decision: Decision,
        by: str,
        arguments: dict[str, JsonValue] | None = None,
        message: str | None = None,
    ) -> RunSummary:
        """Decide the tool call a paused run waits on, durably, then resume the run here.
        `call_id` None: whichever call waits (the deadline sweeper's `timeout`). NotPending
        if the run does not wait on that call (decided already, running, ended)."""
        if run_id not in self._runs:
            await self.resume_run(run_id)  # from the store: it pauses again at once
        run = self._run(run_id)
        async with self._deciding.setdefault(run_id, asyncio.Lock()):
            with contextlib.suppress(TimeoutError):  # a resumed run still re-pausing
                await asyncio.wait_for(asyncio.shield(run.task), self._settings.store_timeout_s)
            asked = waiting(run.log.events()) if run.paused else None
            if asked is None:
                raise NotPending(f"run {run_id!r} does not wait for a decision")
            if decision == "timeout" and asked.deadline > time.time():
                raise NotPending(f"run {run_id!r}: its decision is not due yet")
            fields = decision_fields(
                run.log.events(), call_id or asked.call_id, decision, by, arguments, message
            )
            tool = run.spec.tool(asked.tool)
            if arguments is not None and tool is not None:
                check_arguments(tool, arguments)  # an edit the tool would refuse: 422 now
            run.log.emit(ApprovalDecided, **fields)
            async with asyncio.timeout(self._settings.store_timeout_s):
                await run.log.wait_published(run.log.last_seq)  # durable, then acted on
            self._start(run.spec, run.request, run.context, run.log, None, run.observer)
        self._deciding.pop(run_id, None)
        return summarize(run.log.published())

    def _in_background(self, call: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(call)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def _run(self, run_id: str) -> _Run:
        run = self._runs.get(run_id)
        if run is None:
            raise UnknownRun(f"unknown run {run_id!r}", run_id)
        return run

    async def events(self, run_id: str, after: int = 0) -> AsyncIterator[EventBatch]:
        """The run's events after seq `after`, live until its terminal event, in batches of
        SSE frames (each event encoded once, see EventLog.encoded): one batch is one small
        Ray object, so a reader that falls behind catches up cheaply."""
        log = self._run(run_id).log
        async for events in log.follow(after):
            yield EventBatch.of(log.encoded(events))

    async def summary(self, run_id: str) -> RunSummary:
        """What readers may know of the run: its published (durable) events."""
        return summarize(self._run(run_id).log.published())

    async def cancel(self, run_id: str) -> bool:
        """Cancel a running or paused run; False if it had already ended."""
        run = self._run(run_id)
        if run.paused:
            spent = summarize(run.log.events())
            run.log.emit(
                RunCancelled,
                reason="cancelled",
                steps=spent.steps,
                usage=spent.usage,
                cost_usd=spent.cost_usd,
            )
            self._record_outcome(run)
        elif run.task.done():
            return False
        run.task.cancel()
        await asyncio.gather(run.task, return_exceptions=True)
        # Answer once run.cancelled is stored (or the store has had its time).
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self._settings.store_timeout_s):
                await run.log.wait_published(run.log.last_seq)
        return True

    def forget(self, run_id: str) -> bool:
        """Drop an ended run from memory (it was deleted from the store); False, and
        nothing dropped, if it is still running here."""
        run = self._runs.get(run_id)
        if run is not None and not run.task.done():
            return False
        self._runs.pop(run_id, None)
        self._finished.pop(run_id, None)
        return True

    async def aclose(self) -> None:
        if self._lease_renewer is not None:
            self._lease_renewer.cancel()
        for run in self._runs.values():
            run.task.cancel()
        await asyncio.gather(*(run.task for run in self._runs.values()), return_exceptions=True)
        if self._http is not None:
            await self._http.aclose()
