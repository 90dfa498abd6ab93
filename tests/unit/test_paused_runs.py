"""A run that waits for a person, on a RunHost over a real store (SQLite) and the simulator:
the pause is in the store, holds nothing on the host, survives the host, and a decision
resumes it exactly once, on any host."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from actors.caches import CacheSettings
from actors.run_host import RunHost, new_run_id
from actors.settings import RuntimeSettings, simulator_providers
from actors.state import State, open_state
from actors.state.run_index import RunFilter
from actors.tool_pool import ToolPool
from agents.approvals import ApprovalRule, waiting
from agents.errors import NotPending
from agents.events import ApprovalDecided, ApprovalRequested
from agents.examples import example_specs, support_tools
from agents.loop import RunInput
from agents.spec import AgentSpec
from agents.summary import RunSummary
from tests.fixtures_sim import Sim
from tests.helpers import eventually

REFUND = {
    "type": "tool_call",
    "name": "issue_refund",
    "arguments": {"order_id": 1003, "reason": "late"},
}
ANSWER = {"type": "text", "text": "Refund handled."}


@pytest.fixture(autouse=True)
def _clean_ledger() -> Iterator[None]:
    support_tools.reset_refunds()
    yield
    support_tools.reset_refunds()


def guarded(**rule: object) -> AgentSpec:
    spec = next(s for s in example_specs() if s.name == "support")
    tools = tuple(
        t.model_copy(update={"approval": ApprovalRule(**rule)}) if t.name == "issue_refund" else t  # type: ignore[arg-type]
        for t in spec.tools
    )
    return spec.model_copy(update={"tools": tools})


@pytest.fixture
async def state(tmp_path: Path) -> AsyncIterator[State]:
    opened = open_state(f"sqlite://{tmp_path}")
    try:
        yield opened
    finally:
        await opened.close()


def make_host(sim: Sim, state: State, tmp_path: Path, host_id: str = "h1") -> RunHost:
    runtime = RuntimeSettings(
        providers=simulator_providers(sim.base_url),
        cache=CacheSettings(directory=str(tmp_path / "cache")),
    )
    return RunHost(host_id, runtime, ToolPool(), store=state.runs)


async def paused_run(host: RunHost, state: State, spec: AgentSpec) -> tuple[str, ApprovalRequested]:
    run_id = await host.start_run(
        spec, RunInput(run_id=new_run_id(host.host_id), input="refund 1003")
    )

    async def waits() -> bool:
        return (await host.summary(run_id)).status == "awaiting_approval"

    await eventually(waits, timeout_s=20)
    record = await state.runs.load_run(run_id)  # the pause is in the store
    assert record is not None
    asked = waiting(record.events)
    assert asked is not None
    return run_id, asked


async def ended(host: RunHost, run_id: str) -> RunSummary:
    async def done() -> bool:
        return (await host.summary(run_id)).ended_at is not None

    await eventually(done, timeout_s=20)
    return await host.summary(run_id)


async def test_a_paused_run_holds_nothing_and_a_decision_on_another_host_resumes_it_once(
    sim: Sim, state: State, tmp_path: Path
) -> None:
    sim.script(REFUND, ANSWER)
    first = make_host(sim, state, tmp_path)
    try:
        run_id, asked = await paused_run(first, state, guarded())
        assert first.load() == 0  # no task, no slot
        listed = await state.runs.list_runs(RunFilter(status="awaiting_approval"))
        assert [item.run_id for item in listed.runs] == [run_id]
        assert not support_tools.refunds()
    finally:
        await first.aclose()  # the host is gone; the pause is in the store

    second = make_host(sim, state, tmp_path, host_id="h2")
    try:
        decided = await second.decide(run_id, asked.call_id, "approve", "tenant:default")
        assert decided.status == "running"
        summary = await ended(second, run_id)
        assert summary.status == "completed" and summary.output == "Refund handled."
        assert len(support_tools.refunds()) == 1
        with pytest.raises(NotPending):  # twice
            await second.decide(run_id, asked.call_id, "reject", "admin")
        record = await state.runs.load_run(run_id)
        assert record is not None
        events = record.events
        assert [e.kind for e in events].count("approval.requested") == 1
        decision = next(e for e in events if isinstance(e, ApprovalDecided))
        assert (decision.decision, decision.by) == ("approve", "tenant:default")
        listed = await state.runs.list_runs(RunFilter(status="completed"))
        assert run_id in [item.run_id for item in listed.runs]
    finally:
        await second.aclose()


async def test_a_paused_run_can_be_cancelled(sim: Sim, state: State, tmp_path: Path) -> None:
    sim.script(REFUND)
    host = make_host(sim, state, tmp_path)
    try:
        run_id, asked = await paused_run(host, state, guarded())
        assert await host.cancel(run_id)
        assert (await ended(host, run_id)).status == "cancelled"
        with pytest.raises(NotPending):
            await host.decide(run_id, asked.call_id, "approve", "admin")
        assert not support_tools.refunds()
    finally:
        await host.aclose()


async def test_past_its_deadline_a_call_gets_the_declared_outcome(
    sim: Sim, state: State, tmp_path: Path
) -> None:
    sim.script(REFUND, ANSWER)
    host = make_host(sim, state, tmp_path)
    try:
        run_id, _ = await paused_run(host, state, guarded(timeout_s=0.2))

        async def overdue() -> bool:
            return run_id in await state.runs.overdue_approvals(time.time())

        await eventually(overdue, timeout_s=10)
        await host.decide(run_id, None, "timeout", "deadline")
        summary = await ended(host, run_id)
        assert summary.status == "completed" and not support_tools.refunds()
        assert await state.runs.overdue_approvals(time.time()) == []
    finally:
        await host.aclose()


async def test_a_timeout_before_the_deadline_is_refused(
    sim: Sim, state: State, tmp_path: Path
) -> None:
    sim.script(REFUND)
    host = make_host(sim, state, tmp_path)
    try:
        run_id, _ = await paused_run(host, state, guarded(timeout_s=3600))
        with pytest.raises(NotPending, match="not due"):
            await host.decide(run_id, None, "timeout", "deadline")
        assert await state.runs.overdue_approvals(time.time()) == []
        assert await host.cancel(run_id)
    finally:
        await host.aclose()
