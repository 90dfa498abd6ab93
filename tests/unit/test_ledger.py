"""The ToolPool's use of the effect ledger for side-effecting tools: at most one effect per
idempotency key, across retries, pools and resumed runs; a ledger that is down means the
tool is not called. (The ledger on its own, on both backends: tests/state/test_ledger.py.)"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from actors.state import State
from actors.state.ledger import EffectLedger
from actors.tool_pool import ToolPool, _ToolPoolHost
from agents.errors import ToolUnavailable
from agents.examples import support_tools
from agents.messages import ToolCall
from agents.ports import ToolOutcome
from agents.spec import ToolSpec
from tests import tools_for_tests as tools
from tests.tools_for_tests import RecordedSleeps

EFFECT = ToolSpec(
    name="ship",
    description="ships an item",
    function=f"{tools.HERE}:flaky_effect",
    side_effects=True,
)
READ_ONLY = ToolSpec(name="look", description="reads", function=f"{tools.HERE}:flaky")


def ship(item: str = "kettle") -> ToolCall:
    return ToolCall(id="c1", name="ship", arguments={"item": item})


class MemoryLedger:
    """An in-memory EffectLedger that counts how it is used."""

    def __init__(self) -> None:
        self.outcomes: dict[str, ToolOutcome] = {}
        self.recalls: list[str] = []

    async def recall(self, key: str) -> ToolOutcome | None:
        self.recalls.append(key)
        return self.outcomes.get(key)

    async def record(self, key: str, outcome: ToolOutcome) -> None:
        self.outcomes.setdefault(key, outcome)


class DownLedger:
    """A ledger whose store is unreachable."""

    async def recall(self, key: str) -> ToolOutcome | None:
        raise ConnectionRefusedError("ledger store unreachable")

    async def record(self, key: str, outcome: ToolOutcome) -> None:
        raise AssertionError("a ledger that cannot recall must not be asked to record")


class HangingLedger(MemoryLedger):
    async def recall(self, key: str) -> ToolOutcome | None:
        await asyncio.Event().wait()
        return None


class WriteOnlyFails(MemoryLedger):
    async def record(self, key: str, outcome: ToolOutcome) -> None:
        raise OSError("disk full")


@pytest.fixture(autouse=True)
def _clean_state() -> Iterator[None]:
    tools.reset()
    support_tools.reset_refunds()
    yield
    tools.reset()
    support_tools.reset_refunds()


@pytest.fixture
def url(tmp_path: Path) -> str:
    return f"sqlite://{tmp_path / 'state'}"


@pytest.fixture
async def ledger(url: str) -> AsyncIterator[EffectLedger]:
    state = State(url)
    yield state.ledger
    await state.close()


def pool_with(ledger: object) -> ToolPool:
    return ToolPool(ledger=ledger, sleep=RecordedSleeps())  # type: ignore[arg-type]


async def go(
    pool: ToolPool, key: str = "run-1:1:c1", tool: ToolSpec = EFFECT, timeout_s: float = 5.0
) -> ToolOutcome:
    arguments = ship() if tool is EFFECT else ToolCall(id="c1", name=tool.name, arguments={})
    return await pool.call(tool, arguments, idempotency_key=key, timeout_s=timeout_s)


# --- the ToolPool and the ledger ----------------------------------------------------------


async def test_effect_recorded_once_across_retries(ledger: EffectLedger) -> None:
    tools.script[:] = [ToolUnavailable("carrier api down")]
    outcome = await go(pool_with(ledger))
    assert outcome.ok and json.loads(outcome.output) == {"done": "kettle", "key": "run-1:1:c1"}
    assert tools.calls["flaky_effect"] == 2 and tools.effects == ["run-1:1:c1"]
    assert await ledger.recall("run-1:1:c1") == outcome


async def test_a_resumed_run_in_another_pool_gets_the_recorded_outcome(url: str) -> None:
    # Two pools (two processes, say), each with its own connections to one ledger.
    first, second = State(url), State(url)
    try:
        before = await go(pool_with(first.ledger))
        resumed = await go(pool_with(second.ledger))
        again = await go(pool_with(first.ledger))
    finally:
        await first.close()
        await second.close()
    assert before.ok and resumed == before and again == before
    assert tools.calls["flaky_effect"] == 1 and tools.effects == ["run-1:1:c1"]


async def test_a_new_key_is_a_new_effect(ledger: EffectLedger) -> None:
    pool = pool_with(ledger)
    await go(pool, key="run-1:1:c1")
    await go(pool, key="run-1:2:c1")
    assert tools.effects == ["run-1:1:c1", "run-1:2:c1"]


async def test_a_final_failure_is_recorded_and_not_retried_on_resume(
    ledger: EffectLedger,
) -> None:
    tools.script[:] = [ValueError("address rejected")]
    failed = await go(pool_with(ledger))
    assert failed.error == "tool ship failed: ValueError: address rejected"
    assert await go(pool_with(ledger)) == failed
    assert tools.calls["flaky_effect"] == 1 and tools.effects == []


async def test_exhausted_retries_are_recorded(ledger: EffectLedger) -> None:
    tools.script[:] = [ToolUnavailable("down") for _ in range(3)]
    failed = await go(pool_with(ledger))
    assert failed.error == "tool ship failed after 3 attempts: ToolUnavailable: down"
    assert await ledger.recall("run-1:1:c1") == failed
    assert await go(pool_with(ledger)) == failed
    assert tools.calls["flaky_effect"] == 3


async def test_ledger_down_means_the_tool_is_not_called() -> None:
    outcome = await go(pool_with(DownLedger()))
    assert not outcome.ok and outcome.error == (
        "effect ledger unavailable, tool ship was not called: "
        "ConnectionRefusedError: ledger store unreachable"
    )
    assert tools.calls["flaky_effect"] == 0 and tools.effects == []


async def test_a_hanging_ledger_is_bounded_by_the_call_timeout() -> None:
    outcome = await go(pool_with(HangingLedger()), timeout_s=0.05)
    assert outcome.error == "effect ledger unavailable, tool ship was not called: TimeoutError"
    assert tools.calls["flaky_effect"] == 0


async def test_a_failed_record_keeps_the_outcome_and_is_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.WARNING, logger="rayfleet"):
        outcome = await go(pool_with(WriteOnlyFails()))
    assert outcome.ok and tools.effects == ["run-1:1:c1"]
    assert "could not record tool ship key 'run-1:1:c1': OSError: disk full" in caplog.text


async def test_read_only_tools_never_touch_the_ledger() -> None:
    ledger = MemoryLedger()
    outcome = await go(pool_with(ledger), tool=READ_ONLY)
    assert outcome.ok and ledger.recalls == [] and ledger.outcomes == {}
    assert (await go(pool_with(DownLedger()), tool=READ_ONLY)).ok


async def test_a_call_that_never_ran_is_not_recorded() -> None:
    ledger = MemoryLedger()
    bad = ToolCall(id="c1", name="ship", arguments={"item": "kettle", "colour": "red"})
    outcome = await pool_with(ledger).call(EFFECT, bad, idempotency_key="k", timeout_s=5)
    assert outcome.error is not None and outcome.error.startswith("invalid arguments for tool ship")
    assert ledger.recalls == ["k"] and ledger.outcomes == {}


async def test_the_recorded_outcome_wins_over_a_changed_tool_definition() -> None:
    ledger = MemoryLedger()
    ledger.outcomes["k"] = ToolOutcome(ok=True, output="refunded earlier")
    renamed = EFFECT.model_copy(update={"function": f"{tools.HERE}:no_such_tool"})
    outcome = await pool_with(ledger).call(renamed, ship(), idempotency_key="k", timeout_s=5)
    assert outcome == ToolOutcome(ok=True, output="refunded earlier")


async def test_concurrent_calls_with_one_key_run_the_effect_once() -> None:
    ledger = MemoryLedger()
    pool = pool_with(ledger)
    gated = ToolSpec(
        name="gated", description="d", function=f"{tools.HERE}:gated_effect", side_effects=True
    )
    no_args = ToolCall(id="c1", name="gated", arguments={})
    calls = [
        asyncio.create_task(pool.call(gated, no_args, idempotency_key="k", timeout_s=5))
        for _ in range(3)
    ]
    for _ in range(10):
        await asyncio.sleep(0)
    assert tools.calls["gated_effect"] == 1
    tools.gate.set()
    outcomes = await asyncio.gather(*calls)
    assert all(o == ToolOutcome(ok=True, output="done") for o in outcomes)
    assert tools.effects == ["k"]


async def test_without_a_ledger_side_effecting_tools_still_run() -> None:
    outcome = await go(ToolPool(sleep=RecordedSleeps()))
    assert outcome.ok and tools.effects == ["run-1:1:c1"]


async def test_a_refund_survives_the_tool_process_forgetting_it(url: str) -> None:
    # issue_refund's own idempotency store is in-process: a restart loses it. The ledger
    # file does not, so the resumed call is answered without refunding again.
    refund = ToolSpec(
        name="issue_refund",
        description="refund",
        function="agents.examples.support_tools:issue_refund",
        side_effects=True,
    )
    args = ToolCall(id="c1", name="issue_refund", arguments={"order_id": 1002, "reason": "broken"})
    first = State(url)
    try:
        paid = await pool_with(first.ledger).call(
            refund, args, idempotency_key="run-1:2:c1", timeout_s=5
        )
    finally:
        await first.close()
    support_tools.reset_refunds()  # the tool pool's process restarted

    second = State(url)
    try:
        resumed = await pool_with(second.ledger).call(
            refund, args, idempotency_key="run-1:2:c1", timeout_s=5
        )
    finally:
        await second.close()
    assert paid.ok and resumed == paid
    assert support_tools.refunds() == {}  # not called again in the new process


async def test_a_caller_cancelled_while_recording_does_not_lose_the_record() -> None:
    class SlowToRecord(MemoryLedger):
        def __init__(self) -> None:
            super().__init__()
            self.writing = asyncio.Event()
            self.finish = asyncio.Event()

        async def record(self, key: str, outcome: ToolOutcome) -> None:
            self.writing.set()
            await self.finish.wait()
            await super().record(key, outcome)

    ledger = SlowToRecord()
    pool = pool_with(ledger)
    caller = asyncio.create_task(go(pool))
    await asyncio.wait_for(ledger.writing.wait(), 5)
    caller.cancel()
    with pytest.raises(asyncio.CancelledError):
        await caller
    # A retry arriving meanwhile waits for the record instead of acting again.
    retry = asyncio.create_task(go(pool))
    for _ in range(10):
        await asyncio.sleep(0)
    assert not retry.done()
    ledger.finish.set()
    assert (await retry).ok
    assert tools.effects == ["run-1:1:c1"] and list(ledger.outcomes) == ["run-1:1:c1"]


async def test_the_actor_class_opens_its_ledger_from_the_state_url(url: str) -> None:
    # What ToolPoolActor runs, built without Ray: a URL, not a connection, crosses.
    host = _ToolPoolHost(state_url=url)
    assert (await go(host)).ok and (await go(host)).ok
    assert tools.effects == ["run-1:1:c1"]
    reopened = State(url)  # the state's ledger, where retention purges (actors.retention)
    try:
        assert await reopened.ledger.recall("run-1:1:c1") is not None
    finally:
        await reopened.close()
