"""Run slots end to end without Ray: real run hosts, a real run store (SQLite) and a real
tenant limiter, the simulator on loopback. Admission is done as the gateway does it: take a
lease, start the run with it, release it if the start fails. After each story the tenant's
concurrent count is exact."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from actors.caches import CacheSettings
from actors.credentials import TenantContext
from actors.limiter import Admission, TenantLimiter, TenantLimits
from actors.run_host import RunHost, new_run_id
from actors.settings import RuntimeSettings, simulator_providers
from actors.state import State
from actors.state.runs import RunStore
from actors.tool_pool import ToolPool
from agents.encoded import EncodedEvent
from agents.errors import Overloaded
from agents.events import Event
from agents.examples import example_specs
from agents.loop import RunInput
from agents.spec import AgentSpec, ToolSpec
from tests import tools_for_tests
from tests.fixtures_sim import Sim
from tests.helpers import eventually, taken

LIMIT = 3


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class RecordingLimiter:
    """The real limiter, with the renewals a host sends written down."""

    def __init__(self, limiter: TenantLimiter) -> None:
        self.limiter = limiter
        self.renewals: list[list[str]] = []

    async def reserve(self, tenant: str, tokens: int, cost_usd: float) -> Admission:
        return await self.limiter.reserve(tenant, tokens, cost_usd)

    async def settle(self, reservation: str, tokens: int, cost_usd: float) -> None:
        await self.limiter.settle(reservation, tokens, cost_usd)

    async def release_run(self, lease: str) -> None:
        await self.limiter.release_run(lease)

    async def renew_runs(self, leases: list[str]) -> list[str]:
        self.renewals.append(sorted(leases))
        return await self.limiter.renew_runs(leases)


class SlowStore(RunStore):
    """The real store, whose event writes can be held back (a store that does not answer)."""

    def __init__(self, state: State) -> None:
        super().__init__(state.database("runs"))
        self.writable = asyncio.Event()
        self.writable.set()

    async def append_events(self, batch: dict[str, list[EncodedEvent]]) -> None:
        await self.writable.wait()
        await super().append_events(batch)


@dataclass
class Cluster:
    settings: RuntimeSettings
    store: SlowStore
    clock: Clock
    limiter: RecordingLimiter
    hosts: list[RunHost] = field(default_factory=list)

    def host(self, host_id: str) -> RunHost:
        host = RunHost(host_id, self.settings, ToolPool(), store=self.store, limiter=self.limiter)
        self.hosts.append(host)
        return host

    async def running(self) -> float:
        return (await self.limiter.limiter.usage("acme"))["running_runs"]

    async def start(self, host: RunHost, spec: AgentSpec, text: str) -> str:
        """As the gateway starts a run: admit, start with the lease, release on failure."""
        admission = await self.limiter.limiter.admit_run("acme")
        assert admission.ok and admission.lease is not None
        request = RunInput(run_id=new_run_id(host.host_id), input=text, tenant="acme")
        try:
            return await host.start_run(spec, request, _acme(admission.lease))
        except BaseException:
            await self.limiter.limiter.release_run(admission.lease)
            raise

    async def hold_one_slot(self) -> str:
        """A run of the tenant elsewhere, live throughout: a count that drops below it shows
        a slot freed that was never taken (the count never goes below zero)."""
        admission = await self.limiter.limiter.admit_run("acme")
        assert admission.lease is not None
        return admission.lease


def _acme(lease: str | None = None, shadow_of: str | None = None) -> TenantContext:
    return TenantContext(tenant="acme", lease=lease, shadow_of=shadow_of)


@pytest.fixture
def support() -> AgentSpec:
    return next(spec for spec in example_specs() if spec.name == "support")


@pytest.fixture
async def cluster(sim: Sim, tmp_path: Path) -> AsyncIterator[Cluster]:
    settings = RuntimeSettings(
        providers=simulator_providers(sim.base_url),
        cache=CacheSettings(directory=str(tmp_path / "cache")),
        store_timeout_s=0.5,
        run_lease_ttl_s=0.15,  # hosts renew every 50 ms of real time
    )
    clock = Clock(1000.0)
    limiter = TenantLimiter(
        {"acme": TenantLimits(concurrent_runs=LIMIT)}, clock=clock, lease_ttl_s=60.0
    )
    state = State(f"sqlite://{tmp_path}")
    built = Cluster(settings, SlowStore(state), clock, RecordingLimiter(limiter))
    try:
        yield built
    finally:
        for host in built.hosts:
            await host.aclose()
        built.store.writable.set()
        await state.close()


async def _ended(host: RunHost, run_id: str) -> list[Event]:
    events: list[Event] = []
    async with asyncio.timeout(20):
        async for batch in host.events(run_id):
            events.extend(batch.events())
    await _until(lambda: host.load() == 0)
    return events


async def _until(condition: Callable[[], bool]) -> None:
    async def holds() -> bool:
        return condition()

    await eventually(holds, timeout_s=10)


def holding(support: AgentSpec) -> AgentSpec:
    """`support` with one tool, which waits while a file exists (the run is held live)."""
    held = ToolSpec(
        name="held",
        description="Waits while the hold file exists.",
        parameters={"type": "object", "properties": {"hold": {"type": "string"}}},
        function=f"{tools_for_tests.HERE}:held",
    )
    return support.model_copy(update={"tools": (held,)})


async def test_a_run_frees_its_own_slot_once_and_a_shadow_frees_none(
    cluster: Cluster, support: AgentSpec, sim: Sim, tmp_path: Path
) -> None:
    await cluster.hold_one_slot()
    host = cluster.host("h1")
    # The run is held in its tool call while the count is read: a run that ended first
    # would have freed its slot already.
    hold = tmp_path / "hold"
    hold.touch()
    sim.script(
        {"type": "tool_call", "name": "held", "arguments": {"hold": str(hold)}},
        {"type": "text", "text": "Done."},
    )
    primary = await cluster.start(host, holding(support), "Hold on.")
    started = Path(f"{hold}.started")
    await _until(lambda: started.exists())
    assert await cluster.running() == 2
    hold.unlink()
    await _ended(host, primary)
    await _until(lambda: not host._background)  # the release is sent in the background
    assert await cluster.running() == 1

    # The gateway starts a shadow with no lease: it runs and ends, and frees nothing.
    request = RunInput(
        run_id=new_run_id("h1"),
        input="Where is order 1234?",
        tenant="acme",
        assignment="shadow",
        primary_run_id=primary,
    )
    shadow = await host.start_run(support, request, _acme(shadow_of=primary))
    assert (await _ended(host, shadow))[-1].kind == "run.completed"
    await _until(lambda: not host._background)
    assert await cluster.running() == 1
    assert [(await cluster.limiter.limiter.admit_run("acme")).ok for _ in range(3)] == [
        True,
        True,
        False,
    ]


async def test_a_start_that_times_out_frees_its_slot_exactly_once(
    cluster: Cluster, support: AgentSpec
) -> None:
    await cluster.hold_one_slot()
    host = cluster.host("h1")
    cluster.store.writable.clear()  # run.created is never durable in time
    with pytest.raises(Overloaded):
        await cluster.start(host, support, "Where is order 1234?")
    # The host cancelled the run (its task frees the lease) and the gateway released it too.
    await _until(lambda: host.load() == 0 and not host._background)
    assert await cluster.running() == 1
    cluster.store.writable.set()


async def test_a_recovered_run_that_had_finished_frees_nothing_again(
    cluster: Cluster, support: AgentSpec
) -> None:
    await cluster.hold_one_slot()
    first = cluster.host("h1")
    run_id = await cluster.start(first, support, "Where is order 1234?")
    events = await _ended(first, run_id)
    await _until(lambda: not first._background)
    assert await cluster.running() == 1

    # A reader finds h1 dead and the pool resumes the run on h2 (any tenant can cause this
    # by reading its own finished run), twice.
    for host_id in ("h2", "h3"):
        other = cluster.host(host_id)
        assert await other.resume_run(run_id) == run_id
        assert await _ended(other, run_id) == events
        await _until(lambda host=other: not host._background)
        assert await cluster.running() == 1


async def _renewed(cluster: Cluster) -> list[str]:
    """The leases of the next renewal sent after now."""
    cluster.limiter.renewals.clear()
    await _until(lambda: len(cluster.limiter.renewals) >= 1)
    return cluster.limiter.renewals[-1]


async def test_live_runs_are_renewed_in_one_call_per_host(
    cluster: Cluster, support: AgentSpec, sim: Sim
) -> None:
    host = cluster.host("h1")
    sim.script(*[{"type": "text", "text": "x", "delay_ms": 60_000}] * 2)
    runs = [await cluster.start(host, support, "Where is order 1234?") for _ in range(2)]
    await eventually(lambda: taken(sim), timeout_s=10)
    records = [await cluster.store.load_run(run_id) for run_id in runs]
    leases = sorted(r.context.lease or "" for r in records if r is not None)
    assert len(leases) == 2 and all(leases)  # each run's lease is stored with it
    for _ in range(3):  # 120 s of the limiter's clock, twice the TTL, in steps under it
        assert await _renewed(cluster) == leases  # both live runs, one call
        cluster.clock.now += 40.0
    assert await _renewed(cluster) == leases
    assert await cluster.running() == 2
    for run_id in runs:
        assert await host.cancel(run_id)
    await _until(lambda: host.load() == 0 and not host._background)
    assert await cluster.running() == 0


async def test_a_resumed_run_renews_its_lease_and_an_orphaned_one_expires(
    cluster: Cluster, support: AgentSpec, sim: Sim
) -> None:
    # Two runs were admitted on h1, which died before either had an event. The pool resumes
    # one on h2; the other was never resumed (so no host renews its lease).
    limiter = cluster.limiter.limiter
    resumed, orphan = (
        (await limiter.admit_run("acme")).lease,
        (await limiter.admit_run("acme")).lease,
    )
    assert resumed is not None and orphan is not None
    run_id = new_run_id("h1")
    request = RunInput(run_id=run_id, input="Where is order 1234?", tenant="acme")
    await cluster.store.create_run(support, request, _acme(resumed), "h1")
    sim.script({"type": "text", "text": "x", "delay_ms": 60_000})
    other = cluster.host("h2")
    assert await other.resume_run(run_id) == run_id
    await eventually(lambda: taken(sim), timeout_s=10)
    for _ in range(2):
        assert await _renewed(cluster) == [resumed]  # under the lease it was admitted with
        cluster.clock.now += 40.0
    assert await _renewed(cluster) == [resumed]
    assert await cluster.running() == 1  # the orphan's slot is free, the resumed run's held
    assert await other.cancel(run_id)
    await _until(lambda: other.load() == 0 and not other._background)
    assert await cluster.running() == 0
