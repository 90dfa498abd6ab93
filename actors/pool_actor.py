"""The run pool's actor: the cluster's one RunPool, its hosts' watcher, and the runtime's
long-lived chores (retention, outcome gauges)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Coroutine
from typing import Any

import ray
from ray.actor import ActorHandle

from actors.host_actor import RunHostActor
from actors.outcomes import METRICS_INTERVAL_S, RayOutcomeMetrics
from actors.retention import sweep_forever
from actors.run_pool import RunPool
from actors.services import ACTOR_OPTIONS, HOST_PREFIX, MAX_MOVES, check_agents_package
from actors.settings import RuntimeSettings
from actors.state import process_state
from actors.state.outcomes import OutcomeStore
from agents.errors import NotPending, UnknownRun
from agents.logs import configure_logging, first_traceback

logger = logging.getLogger("rayfleet")


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
        configure_logging("pool")
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
        self._deadlines = loop.create_task(self._expire_approvals_forever())

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
        options = dict(ACTOR_OPTIONS)
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

    async def acquire(self, full: list[str] | None = None) -> str:
        """A host with a free slot, now taken (made if none has one). `full`: hosts that
        refused a start for want of room."""
        return await (await self._ready()).acquire(full or ())

    async def loads(self) -> dict[str, int]:
        """Ready hosts and their runs in flight: the view run starters cache."""
        return (await self._ready()).loads()

    async def report(self, host_id: str, load: int) -> None:
        """A host's runs in flight, told by the host when it changed."""
        (await self._ready()).report(host_id, load)

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
            for attempt in range(1, MAX_MOVES + 1):
                new_host = None
                try:
                    new_host = await pool.acquire()
                    await self._handle(new_host).resume_run.remote(run_id)
                except Exception as exc:
                    # The host we got may be dying too (it sat on the same lost node, or was
                    # still starting there): drop it and take another.
                    logger.warning(
                        "resuming run %s failed (%d): %r",
                        run_id,
                        attempt,
                        exc,
                        exc_info=first_traceback(exc),
                    )
                    if new_host is not None:
                        pool.remove_host(new_host)
                    await asyncio.sleep(0.2 * attempt)
                    continue
                await self._runs.move_run(run_id, new_host)
                logger.warning("run %s moved from host %s to %s", run_id, host_id, new_host)
                return new_host
            raise UnknownRun(f"run {run_id!r} could not be resumed on any host", run_id)

    async def _expire_approvals_forever(self) -> None:
        """Give tool calls whose decision is overdue their `on_timeout` outcome: the paused
        run holds no process that could notice its own deadline."""
        while True:
            await asyncio.sleep(self._settings.approval_sweep_s)
            try:
                pool = await self._ready()
                for run_id in await self._runs.overdue_approvals(time.time()):
                    await self._expire(pool, run_id)
            except Exception as exc:  # the store is down: next sweep
                logger.warning(
                    "approval deadline sweep failed: %r", exc, exc_info=first_traceback(exc)
                )

    async def _expire(self, pool: RunPool, run_id: str) -> None:
        try:
            host_id = await self._recover(pool, run_id, None)
            await self._handle(host_id).decide.remote(run_id, None, "timeout", "deadline")
        except NotPending:
            pass  # decided meanwhile (by a person, or another sweep)
        except Exception as exc:  # one run's trouble must not stop the others' deadlines
            logger.warning(
                "expiring the approval of run %s failed: %r",
                run_id,
                exc,
                exc_info=first_traceback(exc),
            )

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
