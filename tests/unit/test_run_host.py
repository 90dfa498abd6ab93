"""RunHost without Ray: runs as tasks against the simulator on loopback, tools in-process."""

from __future__ import annotations

import asyncio
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from actors.caches import CacheSettings
from actors.outcomes import RunOutcome
from actors.run_host import RunHost, host_of, new_run_id
from actors.settings import RuntimeSettings, simulator_providers
from actors.state import open_state
from actors.state.db import Database
from actors.state.runs import RunStore
from actors.tool_pool import ToolPool
from agents.encoded import EncodedEvent
from agents.errors import RequestInvalid, UnknownRun
from agents.events import TERMINAL_KINDS, Event, ModelCompleted, SubagentEvent, is_terminal
from agents.examples import example_specs
from agents.loop import RunInput
from agents.spec import AgentSpec
from tests.fixtures_sim import Sim
from tests.helpers import eventually, taken

HOST = "h1"


@pytest.fixture
def support() -> AgentSpec:
    return next(spec for spec in example_specs() if spec.name == "support")


ended: list[str] = []
"""Host ids passed to `on_run_end`, as the pool's `release` would receive them."""


def make_host(sim: Sim, finished_runs_kept: int = 10_000) -> RunHost:
    runtime = RuntimeSettings(
        providers=simulator_providers(sim.base_url),
        finished_runs_kept=finished_runs_kept,
        cache=CacheSettings(directory=tempfile.mkdtemp(prefix="rayfleet-test-cache-")),
    )
    return RunHost(HOST, runtime, ToolPool(), on_run_end=ended.append)


@pytest.fixture
async def host(sim: Sim) -> AsyncIterator[RunHost]:
    ended.clear()
    built = make_host(sim)
    try:
        yield built
    finally:
        await built.aclose()


async def follow(host: RunHost, run_id: str, after: int = 0) -> list[Event]:
    events: list[Event] = []
    async with asyncio.timeout(20):
        async for batch in host.events(run_id, after):
            events.extend(batch.events())
    return events


async def idle(host: RunHost) -> None:
    """Wait until no run is in flight: a run's task ends just after its terminal event."""

    async def no_load() -> bool:
        return host.load() == 0

    await eventually(no_load)


async def start(host: RunHost, spec: AgentSpec, text: str) -> str:
    return await host.start_run(spec, RunInput(run_id=new_run_id(host.host_id), input=text))


async def test_a_run_streams_to_its_terminal_event_and_its_summary_matches(
    host: RunHost, sim: Sim, support: AgentSpec
) -> None:
    run_id = await start(host, support, "Where is order 1234?")
    assert host_of(run_id) == HOST
    events = await follow(host, run_id)
    kinds = [e.kind for e in events]
    assert kinds[0] == "run.created" and kinds[-1] == "run.completed"
    assert [e.seq for e in events] == list(range(1, len(events) + 1))
    assert sum(kind in TERMINAL_KINDS for kind in kinds) == 1
    assert "tool.call" in kinds and "tool.result" in kinds
    final = events[-1]

    summary = await host.summary(run_id)
    assert summary.run_id == run_id
    assert summary.status == "completed"
    assert summary.output == final.output  # type: ignore[union-attr]
    assert summary.cost_usd == pytest.approx(final.cost_usd)  # type: ignore[union-attr]
    assert summary.last_seq == final.seq
    assert summary.steps == 2
    await idle(host)
    assert ended == [HOST]  # the pool is told the slot is free

    # Following a finished run from the middle replays exactly the rest.
    assert await follow(host, run_id, after=2) == events[2:]


async def test_cancelling_a_run_with_a_hanging_model_call_ends_it_cancelled(
    host: RunHost, sim: Sim, support: AgentSpec
) -> None:
    sim.script({"type": "text", "text": "x", "delay_ms": 60000})
    run_id = await start(host, support, "Where is order 1234?")
    # The scripted reply is taken when the model request arrives: then the call hangs.
    await eventually(lambda: taken(sim), timeout_s=10)
    assert host.load() == 1
    assert (await host.summary(run_id)).status == "running"

    assert await host.cancel(run_id) is True
    events = await follow(host, run_id)
    assert events[-1].kind == "run.cancelled"
    assert (await host.summary(run_id)).status == "cancelled"
    assert await host.cancel(run_id) is False  # already ended
    await idle(host)
    assert ended == [HOST]


async def test_an_unknown_run_id_is_unknown_run(host: RunHost) -> None:
    missing = new_run_id(HOST)
    with pytest.raises(UnknownRun) as raised:
        await host.summary(missing)
    assert raised.value.run_id == missing
    with pytest.raises(UnknownRun):
        await host.cancel(missing)
    with pytest.raises(UnknownRun):
        await follow(host, missing)


async def test_finished_runs_kept_evicts_the_oldest(sim: Sim, support: AgentSpec) -> None:
    host = make_host(sim, finished_runs_kept=2)
    try:
        run_ids = []
        for text in ("Where is order 1?", "Where is order 2?", "Where is order 3?"):
            run_ids.append(await start(host, support, text))
            await follow(host, run_ids[-1])
            await idle(host)
        with pytest.raises(UnknownRun):
            await host.summary(run_ids[0])
        for kept in run_ids[1:]:
            assert (await host.summary(kept)).status == "completed"
    finally:
        await host.aclose()


def test_run_ids_name_their_host() -> None:
    run_id = new_run_id("h2a")
    assert run_id.startswith("run-h2a-")
    assert host_of(run_id) == "h2a"
    assert new_run_id("h2a") != run_id
    for bad in ("", "run-", "run-h1", "run-H1-" + "0" * 20, "run-h1-xyz", "../run-h1-" + "0" * 20):
        with pytest.raises(UnknownRun):
            host_of(bad)


async def test_a_run_id_for_another_host_or_a_reused_id_is_refused(
    host: RunHost, sim: Sim, support: AgentSpec
) -> None:
    with pytest.raises(RequestInvalid) as raised:
        await host.start_run(support, RunInput(run_id=new_run_id("h2"), input="hi"))
    assert raised.value.field == "run_id"
    assert "another host" in str(raised.value)
    with pytest.raises(UnknownRun):
        await host.start_run(support, RunInput(run_id="not-a-run-id", input="hi"))

    run_id = await start(host, support, "Where is order 1234?")
    await follow(host, run_id)
    with pytest.raises(RequestInvalid, match="already exists"):
        await host.start_run(support, RunInput(run_id=run_id, input="again"))


async def test_a_sub_agent_uses_its_own_response_cache(host: RunHost, sim: Sim) -> None:
    concierge = next(spec for spec in example_specs() if spec.name == "concierge")
    desk = concierge.tools[0]
    assert desk.agent is not None
    orders = desk.agent.model_copy(update={"response_cache_ttl_s": 600.0})
    spec = concierge.model_copy(
        update={
            "response_cache_ttl_s": None,  # the supervisor does not cache; its sub-agent does
            "tools": (desk.model_copy(update={"agent": orders}), *concierge.tools[1:]),
        }
    )

    async def calls(question: str) -> list[tuple[str, bool]]:
        events = await follow(host, await start(host, spec, question))
        assert events[-1].kind == "run.completed"
        nested = [e.event for e in events if isinstance(e, SubagentEvent)]
        inner = [("sub", bool(e["cached"])) for e in nested if e["kind"] == "model.completed"]
        own = [("own", e.cached) for e in events if isinstance(e, ModelCompleted)]
        return inner + own

    first = await calls("Where is order 1003?")
    again = await calls("Where is order 1003?")
    assert first == [("sub", False), ("sub", False), ("own", False), ("own", False)]
    assert again == [("sub", True), ("sub", True), ("own", False), ("own", False)]


async def test_a_shadow_gets_the_primary_result_of_the_same_call_when_ids_repeat() -> None:
    """Providers may reuse a call id in every step: the shadow must match a side effect to
    the primary's call of the same step, not to another step's arguments."""
    from types import SimpleNamespace

    from actors.run_host import _ShadowTools
    from agents.events import ToolCalled, ToolResulted
    from agents.messages import ToolCall

    run = "run-p"
    events = [
        ToolCalled(run_id=run, seq=1, step=1, call_id="call_0", tool="issue_refund",
                   arguments={"order_id": 1, "reason": "late"}),
        ToolResulted(run_id=run, seq=2, step=1, call_id="call_0", tool="issue_refund",
                     ok=True, output="refund of order 1"),
        ToolCalled(run_id=run, seq=3, step=2, call_id="call_0", tool="issue_refund",
                   arguments={"order_id": 2, "reason": "late"}),
        ToolResulted(run_id=run, seq=4, step=2, call_id="call_0", tool="issue_refund",
                     ok=True, output="refund of order 2"),
    ]  # fmt: skip

    class Store:
        async def load_run(self, run_id: str) -> SimpleNamespace:
            return SimpleNamespace(events=events)

    spec = next(s for s in example_specs() if s.name == "support")
    refund = next(t for t in spec.tools if t.name == "issue_refund")
    shadow = _ShadowTools(ToolPool(), Store(), run)  # type: ignore[arg-type]
    for order in (1, 2):
        call = ToolCall(
            id="x", name="issue_refund", arguments={"order_id": order, "reason": "late"}
        )
        outcome = await shadow.call(refund, call, idempotency_key="k", timeout_s=1.0)
        assert outcome.output == f"refund of order {order}"


class EndHeldBack(RunStore):
    """The real run store (SQLite), failing every write that carries a run's terminal event
    while `holding` (a store that went down as the run ended)."""

    def __init__(self, db: Database) -> None:
        super().__init__(db)
        self.holding = True
        self.refused = 0

    async def append_events(self, batch: dict[str, list[EncodedEvent]]) -> None:
        if self.holding and any(is_terminal(e.event) for es in batch.values() for e in es):
            self.refused += 1
            raise ConnectionError("the store is down")
        await super().append_events(batch)


class RecordedOutcomes:
    """Where the host reports how runs ended (an OutcomePort), written down."""

    def __init__(self) -> None:
        self.outcomes: list[RunOutcome] = []

    async def record_run(self, outcome: RunOutcome) -> None:
        self.outcomes.append(outcome)


async def test_a_run_s_outcome_is_recorded_once_its_end_is_stored(
    sim: Sim, support: AgentSpec, tmp_path: Path
) -> None:
    state = open_state(f"sqlite://{tmp_path}")
    store = EndHeldBack(state.database("runs"))
    outcomes = RecordedOutcomes()
    runtime = RuntimeSettings(
        providers=simulator_providers(sim.base_url),
        cache=CacheSettings(directory=str(tmp_path / "cache")),
    )
    host = RunHost(HOST, runtime, ToolPool(), store=store, outcomes=outcomes)  # type: ignore[arg-type]
    try:
        run_id = await start(host, support, "Where is order 1234?")
        await idle(host)  # ended on the host ...

        async def refused_again() -> bool:
            return store.refused >= 2

        await eventually(refused_again)  # ... not in the store, even when retried
        # Were the host to die now, the run would resume elsewhere and end there, perhaps
        # otherwise: this end is not one yet.
        assert outcomes.outcomes == []
        store.holding = False

        async def recorded() -> bool:
            return bool(outcomes.outcomes)

        await eventually(recorded)
        assert [(o.run_id, o.status) for o in outcomes.outcomes] == [(run_id, "completed")]
    finally:
        await host.aclose()
        await state.close()
