"""Bulk runs (C10): many inputs to one agent version, each an ordinary run, at most
`concurrency` at a time, driven by a detached actor so a batch outlives the HTTP request
and every gateway replica.

    gateway: key -> tenant, access, kill switch, ONE version for the whole batch
        | submit(BatchJob)
        v
    BatchRunner (actor `rayfleet-batches`, head node), `concurrency` workers; per item:
        kill switch? -> admit_run with the tenant limiter (refused: wait and retry, bounded;
                        admitted: the run gets the lease, its host releases it)
        -> Runs.start (the call an agent deployment makes) -> follow it to its terminal event

Items that share a `thread_id` are one conversation: they run one after another, in order.

A refusal by the tenant's limits (requests/min, concurrent runs) is waited out, up to
`limit_wait_s` per item in all; an item that would wait longer fails with code
`tenant_limited` and the limit named, and the batch goes on. A kill switch that covers the
batch's agent, version or tenant stops it: nothing new starts (running runs are stopped by
their hosts) and the batch ends `cancelled` with the switch's reason.

State lives in memory and in the state's settings, so a restarted actor (Ray restarts it)
answers for every batch and resumes the running ones. Four keys per batch, whatever its size
(the settings table is also where kill switches are polled from, every second):
    batch/<id>                 header: status, reason, ended_at
    batch/<id>/job             what was submitted (tenant context, spec, inputs); written once
    batch/<id>/runs            journal: item index -> run id (null while starting), written
                               before each run starts and once it has an id; retried with
                               bounded backoff, and an item whose entry cannot be stored
                               fails `journal_unavailable` without starting
    batch/<id>/items           every item's state: every `flush_s` while it changes, at the end
    batches/running            ids of the batches to resume after a restart
The journal is the truth for what started: a resumed driver follows every journalled run to
its end (a run that ended meanwhile replays its terminal event), so results newer than the
last snapshot are not lost. An item that was being started when the driver died (no run id
journalled) is reported failed (`interrupted`) rather than started again: it may have run,
and a second run could repeat its side effects. No Ray in the runner; the actor shell is at
the bottom.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import secrets
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, Protocol

import ray
from pydantic import BaseModel, ConfigDict, Field

from actors.credentials import TenantContext
from actors.limiter import Admission
from actors.settings import RuntimeSettings
from actors.state import process_state
from actors.switches import KILL_PREFIX, ROLLBACK_PREFIX, KillSwitches
from agents.encoded import EventBatch
from agents.errors import RayfleetError, RequestInvalid, ServiceUnavailable, TenantLimited
from agents.events import Event, RunCancelled, RunCompleted, RunFailed
from agents.logs import configure_logging, first_traceback
from agents.spec import AgentSpec

if TYPE_CHECKING:
    from actors.runs_client import Runs

logger = logging.getLogger("rayfleet")

MAX_ITEMS = 1000
"""Inputs in one batch."""
MAX_CONCURRENCY = 64
"""Runs of one batch in flight at once."""
DEFAULT_CONCURRENCY = 4
MAX_RUNNING_BATCHES = 16
"""Running batches per tenant; one more is a 429."""
BATCH_ID_PATTERN = r"^batch-[0-9a-f]{24}$"
THREAD_PATTERN = r"^[A-Za-z0-9._:-]{1,128}$"
"""As `RunRequest.thread_id`."""

ItemStatus = Literal["pending", "running", "completed", "failed", "cancelled"]
BatchStatus = Literal["running", "completed", "cancelled"]

_BATCH_ID = re.compile(BATCH_ID_PATTERN)
_RUNNING_KEY = "batches/running"
JOURNAL_FAILED = "journal_unavailable"
"""The error code of an item not started because its journal entry could not be stored."""
_ENDED: frozenset[str] = frozenset({"completed", "failed", "cancelled"})


def new_batch_id() -> str:
    return f"batch-{secrets.token_hex(12)}"


def is_batch_id(text: str) -> bool:
    """Only ids of this shape are looked up (they also go into a LIKE prefix)."""
    return _BATCH_ID.fullmatch(text) is not None


class BatchInput(BaseModel):
    """One input of a batch: what `POST /v1/agents/{agent}/runs` takes, less the version."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    input: str = Field(min_length=1, max_length=100_000, description="The user's request.")
    thread_id: str | None = Field(
        None,
        pattern=THREAD_PATTERN,
        description="Continue this conversation; items of one thread run in order.",
    )


class BatchJob(BaseModel):
    """What the gateway hands to the driver: everything needed to run (and resume) a batch."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    batch_id: str = Field(pattern=BATCH_ID_PATTERN)
    agent: str
    version: str
    assignment: str = Field(description="How the version was chosen: stable, canary, pinned.")
    spec: AgentSpec
    context: TenantContext
    namespace: str = Field(description="The tenant's memory namespace.")
    inputs: list[BatchInput] = Field(min_length=1, max_length=MAX_ITEMS)
    concurrency: int = Field(ge=1, le=MAX_CONCURRENCY)
    created_at: float


class BatchItem(BaseModel):
    """One input's run and how it ended."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    index: int = Field(ge=0, description="Position in the submitted `inputs`.")
    run_id: str | None = Field(None, description="Its run (GET /v1/runs/{id}); null if none.")
    status: ItemStatus = "pending"
    output: str | None = Field(None, description="The run's final output, once completed.")
    error: dict[str, str] | None = Field(
        None, description="`code` and `message` when the item failed or was cancelled."
    )
    cost_usd: float = Field(0.0, ge=0, description="What its run cost.")


class BatchView(BaseModel):
    """`GET /v1/batches/{batch_id}`: progress and per-item results."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    batch_id: str
    agent: str
    version: str
    assignment: str
    status: BatchStatus = Field(description="running until every item has ended.")
    reason: str | None = Field(None, description="Why a cancelled batch stopped.")
    concurrency: int
    total: int
    done: int = Field(description="Items that ended: succeeded + failed + cancelled.")
    succeeded: int
    failed: int
    cancelled: int
    cost_usd: float = Field(description="Total over the items' runs.")
    created_at: float
    ended_at: float | None
    items: list[BatchItem]


class _Header(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    status: BatchStatus
    reason: str | None = None
    ended_at: float | None = None


# -- ports --------------------------------------------------------------------------------------


class RunsPort(Protocol):
    """Starting, following and cancelling runs (`actors.runs_client.Runs` in the actor)."""

    async def start(
        self,
        spec: AgentSpec,
        input: str,
        thread_id: str | None,
        context: TenantContext,
        namespace: str,
        assignment: str,
    ) -> str: ...

    async def wait(self, run_id: str) -> Event:
        """The run's terminal event, once it has ended."""
        ...

    async def cancel(self, run_id: str) -> None: ...


class AdmissionPort(Protocol):
    """The tenant limiter's run admission."""

    async def admit_run(self, tenant: str) -> Admission: ...

    async def release_run(self, lease: str) -> None: ...


class SettingsPort(Protocol):
    """The state's settings (actors.state.runs.SettingsStore)."""

    async def put_setting(self, key: str, value: str | None) -> None: ...

    async def settings(self, prefix: str) -> dict[str, str]: ...


# -- the runner ---------------------------------------------------------------------------------


@dataclass(eq=False)
class _Batch:
    job: BatchJob
    items: list[BatchItem]
    status: BatchStatus = "running"
    reason: str | None = None
    ended_at: float | None = None
    stop: asyncio.Event = field(default_factory=asyncio.Event)
    in_flight: dict[int, str] = field(default_factory=dict)
    """Item index -> run id of the runs not ended yet."""
    journal: dict[int, str | None] = field(default_factory=dict)
    """Item index -> run id of every item started (None: being started)."""
    dirty: bool = False
    """Items changed since the last snapshot was stored."""
    task: asyncio.Task[None] | None = None

    def view(self) -> BatchView:
        counts = {status: 0 for status in ("completed", "failed", "cancelled")}
        for item in self.items:
            if item.status in counts:
                counts[item.status] += 1
        job = self.job
        return BatchView(
            batch_id=job.batch_id,
            agent=job.agent,
            version=job.version,
            assignment=job.assignment,
            status=self.status,
            reason=self.reason,
            concurrency=job.concurrency,
            total=len(self.items),
            done=sum(counts.values()),
            succeeded=counts["completed"],
            failed=counts["failed"],
            cancelled=counts["cancelled"],
            cost_usd=sum(item.cost_usd for item in self.items),
            created_at=job.created_at,
            ended_at=self.ended_at,
            items=list(self.items),
        )


class BatchRunner:
    """Runs batches with bounded concurrency; keeps and persists their state. No Ray here."""

    def __init__(
        self,
        runs: RunsPort,
        limiter: AdmissionPort,
        store: SettingsPort,
        *,
        limit_wait_s: float = 300.0,
        max_pause_s: float = 5.0,
        switches_ttl_s: float = 1.0,
        cancel_wait_s: float = 10.0,
        flush_s: float = 2.0,
        keep_finished: int = 100,
        max_running_per_tenant: int = MAX_RUNNING_BATCHES,
        journal_attempts: int = 6,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self._runs = runs
        self._limiter = limiter
        self._store = store
        self._limit_wait_s = limit_wait_s
        self._max_pause_s = max_pause_s
        self._switches_ttl_s = switches_ttl_s
        self._cancel_wait_s = cancel_wait_s
        self._flush_s = flush_s
        self._keep_finished = keep_finished
        self._max_running = max_running_per_tenant
        self._journal_attempts = max(1, journal_attempts)
        self._clock = clock
        self._sleep = sleep
        self._batches: OrderedDict[str, _Batch] = OrderedDict()
        self._switches = KillSwitches()
        self._rollbacks: dict[str, dict[str, Any]] = {}
        """agent -> its canary rollback record (serve_app.delivery writes them)."""
        self._switches_at = float("-inf")
        self._restored = asyncio.Event()
        self._restoring = asyncio.Lock()

    # -- public -----------------------------------------------------------------------------

    async def restore(self) -> int:
        """Load and resume the batches that were running when this driver (re)started;
        returns how many. Every other call waits for it, so call it once at start-up."""
        async with self._restoring:
            if self._restored.is_set():
                return 0
            resumed = 0
            try:
                index = await self._store.settings(_RUNNING_KEY)
                running = json.loads(index.get(_RUNNING_KEY, "[]"))
            except Exception:
                logger.exception("could not read which batches were running")
                running = []
            try:
                for batch_id in running:
                    try:
                        batch = await self._load(batch_id)
                    except Exception:
                        logger.exception("could not resume batch %s", batch_id)
                        continue
                    if batch is None or batch.task is not None:
                        continue
                    if batch.status != "running":  # it was stopping: finish stopping
                        batch.stop.set()
                    self._launch(batch)
                    resumed += 1
            finally:
                self._restored.set()
            if resumed:
                logger.warning("resumed %d running batches", resumed)
            return resumed

    async def submit(self, job: BatchJob) -> BatchView:
        """Start a batch. Submitting an id again returns that batch (a retried call)."""
        await self._ready()
        existing = await self._find(job.batch_id)
        if existing is not None:
            if existing.job.context.tenant != job.context.tenant:
                raise RequestInvalid(f"batch id {job.batch_id!r} is taken", "batch_id")
            return existing.view()
        tenant = job.context.tenant
        running = sum(
            1
            for b in self._batches.values()
            if b.job.context.tenant == tenant and b.status == "running"
        )
        if running >= self._max_running:
            raise TenantLimited(
                f"tenant {tenant!r} has {running} running batches (at most {self._max_running})",
                5.0,
                self._max_running,
                0,
                5.0,
            )
        batch = _Batch(job, [BatchItem(index=i) for i in range(len(job.inputs))])
        self._batches[job.batch_id] = batch
        await self._put(f"batch/{job.batch_id}/job", job.model_dump_json())
        await self._put_header(batch)
        await self._put_index()
        self._launch(batch)
        return batch.view()

    async def get(self, batch_id: str, tenant: str) -> BatchView | None:
        """The batch if it is `tenant`'s; None for an unknown batch or another tenant's."""
        batch = await self._owned(batch_id, tenant)
        return None if batch is None else batch.view()

    async def cancel(self, batch_id: str, tenant: str) -> BatchView | None:
        """Start nothing more and cancel the runs in flight; returns the batch once they
        have ended (or after `cancel_wait_s`). A no-op on a batch that has ended."""
        batch = await self._owned(batch_id, tenant)
        if batch is None:
            return None
        if batch.status == "running":
            await self._halt(batch, "cancelled by the caller")
        if batch.task is not None and not batch.task.done():
            await asyncio.wait({batch.task}, timeout=self._cancel_wait_s)
        return batch.view()

    async def wait(self, batch_id: str) -> BatchView | None:
        """Until the batch's driver is done (tests and the handle API's callers)."""
        await self._ready()
        batch = await self._find(batch_id)
        if batch is None:
            return None
        if batch.task is not None:
            await asyncio.gather(batch.task, return_exceptions=True)
        return batch.view()

    def running(self) -> int:
        """Batches whose driver has not finished."""
        return sum(1 for b in self._batches.values() if b.ended_at is None)

    async def aclose(self) -> None:
        """Stop driving (the batches stay `running` in the store, to be resumed)."""
        tasks = [b.task for b in self._batches.values() if b.task is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    # -- driving ----------------------------------------------------------------------------

    def _launch(self, batch: _Batch) -> None:
        batch.task = asyncio.create_task(self._drive(batch), name=batch.job.batch_id)

    async def _drive(self, batch: _Batch) -> None:
        units = _work_units(batch)
        workers = min(batch.job.concurrency, len(units)) or 1
        flusher = asyncio.create_task(self._flush_every(batch))
        try:
            await asyncio.gather(*(self._worker(batch, units) for _ in range(workers)))
        finally:
            flusher.cancel()
        if batch.status == "running":
            batch.status = "completed"
        batch.ended_at = self._clock()
        batch.dirty = True
        await self._flush(batch)
        await self._put_header(batch)
        await self._put_index()
        self._evict()

    async def _flush_every(self, batch: _Batch) -> None:
        while True:
            await asyncio.sleep(self._flush_s)
            await self._flush(batch)

    async def _flush(self, batch: _Batch) -> None:
        if batch.dirty:
            batch.dirty = False
            items = [item.model_dump(mode="json") for item in batch.items]
            await self._put(f"batch/{batch.job.batch_id}/items", json.dumps(items))

    async def _worker(self, batch: _Batch, units: list[list[int]]) -> None:
        while units:
            for index in units.pop(0):
                try:
                    await self._run_item(batch, index)
                except Exception as exc:  # never lose an item without a word
                    logger.exception("batch %s item %d failed", batch.job.batch_id, index)
                    await self._end(batch, index, "failed", error=_error_of(exc))

    async def _run_item(self, batch: _Batch, index: int) -> None:
        item = batch.items[index]
        if item.run_id is not None:  # resumed: its run goes on without us
            await self._follow(batch, index, item.run_id)
            return
        if item.status == "running":  # resumed: the driver died while starting it
            message = "the batch driver restarted while starting this item; it may have run"
            await self._end(
                batch, index, "failed", error={"code": "interrupted", "message": message}
            )
            return
        if item.status != "pending":
            return
        job = batch.job
        stopped = None if batch.stop.is_set() else await self._stopped_by(job)
        if stopped is not None:
            await self._halt(batch, stopped)
        if batch.stop.is_set():
            await self._end(batch, index, "cancelled", error=_stopped(batch))
            return
        lease = await self._admit(batch)
        if isinstance(lease, dict):
            await self._end(batch, index, "failed", error=lease)
            return
        if batch.stop.is_set():  # cancelled while waiting for the limiter
            if lease is not None:
                await self._limiter.release_run(lease)
            await self._end(batch, index, "cancelled", error=_stopped(batch))
            return
        failure = await self._set(batch, index, status="running")
        if failure is not None:  # not journalled: it must not start
            if lease is not None:  # it never started: free the slot
                await self._limiter.release_run(lease)
            batch.journal.pop(index, None)
            message = f"{failure}; the item was not started"
            await self._end(
                batch, index, "failed", error={"code": JOURNAL_FAILED, "message": message}
            )
            return
        entry = job.inputs[index]
        context = job.context.model_copy(update={"lease": lease})
        try:
            run_id = await self._runs.start(
                job.spec, entry.input, entry.thread_id, context, job.namespace, job.assignment
            )
        except Exception as exc:
            if lease is not None:  # it never started (or its host freed it: idempotent)
                await self._limiter.release_run(lease)
            await self._end(batch, index, "failed", error=_error_of(exc))
            return
        # If this write fails, the journal still says "being started": a restarted driver
        # then reports the item interrupted rather than running it again.
        await self._set(batch, index, run_id=run_id)
        if batch.stop.is_set():  # cancelled while it was starting
            await self._cancel_run(run_id)
        await self._follow(batch, index, run_id)

    async def _follow(self, batch: _Batch, index: int, run_id: str) -> None:
        batch.in_flight[index] = run_id
        try:
            terminal = await self._runs.wait(run_id)
        except Exception as exc:
            await self._end(batch, index, "failed", error=_error_of(exc))
            return
        finally:
            batch.in_flight.pop(index, None)
        if isinstance(terminal, RunCompleted):
            await self._end(
                batch, index, "completed", output=terminal.output, cost=terminal.cost_usd
            )
        elif isinstance(terminal, RunFailed):
            error = {"code": terminal.code, "message": terminal.message}
            await self._end(batch, index, "failed", error=error, cost=terminal.cost_usd)
        elif isinstance(terminal, RunCancelled):
            error = {"code": "cancelled", "message": terminal.reason}
            await self._end(batch, index, "cancelled", error=error, cost=terminal.cost_usd)
        else:
            message = f"run ended with {terminal.kind}"
            await self._end(batch, index, "failed", error={"code": "run_error", "message": message})

    async def _admit(self, batch: _Batch) -> str | dict[str, str] | None:
        """Take a run slot from the tenant limiter, waiting out refusals up to
        `limit_wait_s`: its lease once admitted, None if stopped first, else why not."""
        tenant = batch.job.context.tenant
        waited = 0.0
        while not batch.stop.is_set():
            try:
                admission = await self._limiter.admit_run(tenant)
            except ServiceUnavailable as exc:  # the limiter is restarting: wait it out too
                code = exc.code
                delay, why = exc.retry_after_s, "the tenant limiter is unavailable"
            else:
                if admission.ok:
                    return admission.lease
                delay, code = max(admission.retry_after_s, 0.01), TenantLimited.code
                why = f"tenant {tenant!r} is over its {admission.limit} limit"
            if waited + delay > self._limit_wait_s:
                return {
                    "code": code,
                    "message": f"{why} (waited {waited:.0f} s of the "
                    f"{self._limit_wait_s:.0f} s allowed)",
                }
            pause = min(delay, self._max_pause_s)
            try:
                await asyncio.wait_for(batch.stop.wait(), pause)
            except TimeoutError:
                pass
            waited += pause
        return None

    async def _stopped_by(self, job: BatchJob) -> str | None:
        """Why the batch must stop: a kill switch over its runs (as run hosts read them), or
        a rollback of its canary since it began. Re-read at most every `switches_ttl_s`."""
        now = time.monotonic()
        if now - self._switches_at >= self._switches_ttl_s:
            try:
                merged = KillSwitches.from_settings(await self._store.settings(KILL_PREFIX))
                rollbacks = await self._store.settings(ROLLBACK_PREFIX)
                self._rollbacks = {
                    key.removeprefix(ROLLBACK_PREFIX): json.loads(value)
                    for key, value in rollbacks.items()
                }
                self._switches, self._switches_at = merged, now
            except Exception as exc:  # keep the last known switches
                logger.warning(
                    "reading kill switches failed: %r", exc, exc_info=first_traceback(exc)
                )
        killed = self._switches.run_killed(job.agent, job.version, job.context.tenant)
        if killed is not None:
            return f"killed: {killed}"
        rollback = self._rollbacks.get(job.agent) or {}
        pulled = rollback.get("weights", {}).get(job.version) == 0
        if job.assignment == "canary" and pulled and rollback.get("at", 0.0) >= job.created_at:
            return f"rolled back: {rollback.get('reason')}"
        return None

    async def _halt(self, batch: _Batch, reason: str) -> None:
        if batch.status != "running":
            return
        batch.status, batch.reason = "cancelled", reason
        batch.stop.set()
        await self._put_header(batch)
        await asyncio.gather(*(self._cancel_run(r) for r in list(batch.in_flight.values())))

    async def _cancel_run(self, run_id: str) -> None:
        try:
            await self._runs.cancel(run_id)
        except Exception as exc:  # it may have ended: following it tells
            logger.warning(
                "cancelling run %s failed: %r", run_id, exc, exc_info=first_traceback(exc)
            )

    # -- state ------------------------------------------------------------------------------

    async def _set(self, batch: _Batch, index: int, **update: Any) -> str | None:
        """Update an item; a running one is journalled first. Why the journal could not be
        stored, or None."""
        item = batch.items[index].model_copy(update=update)
        batch.items[index] = item
        if item.status == "running":  # starting or started: journal it before going on
            batch.journal[index] = item.run_id
            return await self._put_journal(batch)
        batch.dirty = True
        return None

    async def _end(
        self,
        batch: _Batch,
        index: int,
        status: ItemStatus,
        *,
        output: str | None = None,
        error: dict[str, str] | None = None,
        cost: float = 0.0,
    ) -> None:
        await self._set(batch, index, status=status, output=output, error=error, cost_usd=cost)

    async def _ready(self) -> None:
        if not self._restored.is_set():
            await self.restore()

    async def _owned(self, batch_id: str, tenant: str) -> _Batch | None:
        await self._ready()
        batch = await self._find(batch_id)
        if batch is None or batch.job.context.tenant != tenant:
            return None
        return batch

    async def _find(self, batch_id: str) -> _Batch | None:
        if not is_batch_id(batch_id):
            return None
        batch = self._batches.get(batch_id)
        if batch is None:
            try:
                batch = await self._load(batch_id)
            except ValueError:  # stored by an incompatible version, or damaged
                logger.exception("batch %s cannot be read", batch_id)
                return None
        else:
            self._batches.move_to_end(batch_id)
        return batch

    async def _load(self, batch_id: str) -> _Batch | None:
        """A batch as stored (None if it is not), kept in memory from then on."""
        if not is_batch_id(batch_id):
            return None
        stored = await self._store.settings(f"batch/{batch_id}")
        prefix = f"batch/{batch_id}"
        if f"{prefix}/job" not in stored or prefix not in stored:
            return None
        job = BatchJob.model_validate_json(stored[f"{prefix}/job"])
        header = _Header.model_validate_json(stored[prefix])
        items = [BatchItem(index=i) for i in range(len(job.inputs))]
        for raw in json.loads(stored.get(f"{prefix}/items", "[]")):
            item = BatchItem.model_validate(raw)
            if 0 <= item.index < len(items):
                items[item.index] = item
        journal = {int(k): v for k, v in json.loads(stored.get(f"{prefix}/runs", "{}")).items()}
        for index, run_id in journal.items():  # started after the last snapshot
            if 0 <= index < len(items) and items[index].status not in _ENDED:
                items[index] = items[index].model_copy(
                    update={"status": "running", "run_id": run_id}
                )
        batch = _Batch(job, items, header.status, header.reason, header.ended_at)
        batch.journal = journal
        if header.ended_at is not None:
            batch.stop.set()
        self._batches[batch_id] = batch
        self._evict()
        return batch

    def _evict(self) -> None:
        """Forget the oldest ended batches beyond `keep_finished` (they stay stored)."""
        ended = [k for k, b in self._batches.items() if b.ended_at is not None]
        for batch_id in ended[: max(0, len(ended) - self._keep_finished)]:
            del self._batches[batch_id]

    async def _put_header(self, batch: _Batch) -> None:
        header = _Header(status=batch.status, reason=batch.reason, ended_at=batch.ended_at)
        await self._put(f"batch/{batch.job.batch_id}", header.model_dump_json())

    async def _put_index(self) -> None:
        running = [k for k, b in self._batches.items() if b.ended_at is None]
        await self._put(_RUNNING_KEY, json.dumps(running))

    async def _put_journal(self, batch: _Batch) -> str | None:
        """Store the journal, retrying with bounded backoff; None once stored, else why not.
        The journal is what keeps a restarted driver from running an item twice, so no item
        starts unless it is stored."""
        key = f"batch/{batch.job.batch_id}/runs"
        value = json.dumps(batch.journal)
        for attempt in range(1, self._journal_attempts + 1):
            try:
                await self._store.put_setting(key, value)
                return None
            except Exception as exc:
                logger.warning(
                    "could not store %s (%d): %r", key, attempt, exc, exc_info=first_traceback(exc)
                )
                error = f"{type(exc).__name__}: {str(exc)[:200]}"
            if attempt < self._journal_attempts:
                await self._sleep(min(0.1 * 2 ** (attempt - 1), 2.0))
        logger.error("batch %s: journal not stored: %s", batch.job.batch_id, error)
        return f"the batch journal could not be stored ({self._journal_attempts} tries, {error})"

    async def _put(self, key: str, value: str) -> None:
        """Persist, or say why not: a store outage must not stop the batches."""
        try:
            await self._store.put_setting(key, value)
        except Exception as exc:
            logger.warning("could not store %s: %r", key, exc, exc_info=first_traceback(exc))


def _work_units(batch: _Batch) -> list[list[int]]:
    """The items to work on, in order; the items of one thread form one unit (in order)."""
    units: list[list[int]] = []
    threads: dict[str, list[int]] = {}
    for index, item in enumerate(batch.items):
        if item.status in _ENDED:
            continue
        thread = batch.job.inputs[index].thread_id
        if thread is None:
            units.append([index])
        elif thread in threads:
            threads[thread].append(index)
        else:
            threads[thread] = [index]
            units.append(threads[thread])
    # Runs that were in flight when the driver restarted come first: they hold a slot.
    return sorted(units, key=lambda unit: batch.items[unit[0]].run_id is None)


def _stopped(batch: _Batch) -> dict[str, str]:
    return {"code": "cancelled", "message": batch.reason or "the batch was cancelled"}


def _error_of(exc: BaseException) -> dict[str, str]:
    if isinstance(exc, RayfleetError):
        return {"code": exc.code, "message": exc.message}
    return {"code": "internal_error", "message": f"{type(exc).__name__}: {exc}"[:500]}


# -- the Ray shell ------------------------------------------------------------------------------


class _FollowedRuns:
    """RunsPort over `actors.runs_client.Runs` (the client an agent deployment starts runs with)."""

    def __init__(self, runs: Runs) -> None:
        self._runs = runs

    async def start(
        self,
        spec: AgentSpec,
        input: str,
        thread_id: str | None,
        context: TenantContext,
        namespace: str,
        assignment: str,
    ) -> str:
        run_id: str = await self._runs.start(spec, input, thread_id, context, namespace, assignment)
        return run_id

    async def wait(self, run_id: str) -> Event:
        last: EventBatch | None = None
        async with contextlib.aclosing(self._runs.batches(run_id, 0)) as batches:
            async for batch in batches:
                last = batch
        if last is None:
            raise RequestInvalid(f"run {run_id!r} ended without events", "run_id")
        return last.last_event()  # only the terminal event is decoded

    async def cancel(self, run_id: str) -> None:
        await self._runs.cancel(run_id)


class _RemoteAdmission:
    """AdmissionPort over the tenant limiter's actor."""

    def __init__(self, actor: Any) -> None:
        self._actor = actor

    async def admit_run(self, tenant: str) -> Admission:
        admission: Admission = await self._actor.admit_run.remote(tenant)
        return admission

    async def release_run(self, lease: str) -> None:
        await self._actor.release_run.remote(lease)


@ray.remote
class BatchRunnerActor:
    """The cluster's one batch driver (detached, on the head node, restarted by Ray)."""

    def __init__(self, settings: RuntimeSettings) -> None:
        # Imported here: actors.runtime creates this actor, so it imports this module.
        from actors.runs_client import Runs
        from actors.services import LIMITER_ACTOR, check_agents_package, service

        check_agents_package()
        configure_logging("batches")
        runs = _FollowedRuns(Runs(settings))
        limiter = _RemoteAdmission(service(settings, LIMITER_ACTOR))
        # Batch journals are settings in the state, opened by this process itself.
        journals = process_state(settings.state_url).settings
        self._runner = BatchRunner(runs, limiter, journals)
        # An async actor builds itself in its event loop: resume what was running now.
        self._restore = asyncio.get_running_loop().create_task(self._runner.restore())

    async def submit(self, job: BatchJob) -> BatchView:
        return await self._runner.submit(job)

    async def get(self, batch_id: str, tenant: str) -> BatchView | None:
        return await self._runner.get(batch_id, tenant)

    async def cancel(self, batch_id: str, tenant: str) -> BatchView | None:
        return await self._runner.cancel(batch_id, tenant)

    async def wait(self, batch_id: str) -> BatchView | None:
        return await self._runner.wait(batch_id)

    async def running(self) -> int:
        await self._runner.restore()
        return self._runner.running()

    def ready(self) -> bool:
        return True
