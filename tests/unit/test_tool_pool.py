"""ToolPool: resolution, arguments, idempotency keys, timeouts, the concurrency limit."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from actors.tool_pool import ToolPool
from agents.examples import support_tools
from agents.messages import ToolCall
from agents.spec import ToolSpec

HERE = __name__

# --- tools used by the tests (resolved by import path, like any agent's tools) -----------

seen_keys: list[str] = []
release = asyncio.Event()
running = 0
peak = 0


async def add(a: int, b: int) -> dict[str, int]:
    return {"sum": a + b}


def sync_upper(text: str) -> str:
    assert threading.current_thread() is not threading.main_thread()
    return text.upper()


async def echo_kwargs(**kwargs: Any) -> dict[str, Any]:
    return kwargs


async def record_key(note: str, idempotency_key: str) -> str:
    seen_keys.append(idempotency_key)
    return f"noted {note}"


async def no_key(note: str) -> str:
    return note


async def hang() -> None:
    await asyncio.Event().wait()


async def explode(reason: str) -> None:
    raise ValueError(f"cannot do {reason}")


async def inner_type_error() -> None:
    raise TypeError("bad operand inside the tool")


async def own_timeout() -> None:
    raise TimeoutError("upstream timed out")


async def unserialisable() -> object:
    return object()


async def gated() -> str:
    global running, peak
    running += 1
    peak = max(peak, running)
    try:
        await release.wait()
    finally:
        running -= 1
    return "done"


NOT_CALLABLE = 42


def spec(function: str, *, name: str = "t", side_effects: bool = False) -> ToolSpec:
    return ToolSpec(
        name=name,
        description="a test tool",
        function=function,
        side_effects=side_effects,
    )


def call(name: str = "t", **arguments: Any) -> ToolCall:
    return ToolCall(id="c1", name=name, arguments=arguments)


@pytest.fixture
def pool() -> ToolPool:
    return ToolPool()


@pytest.fixture(autouse=True)
def _clean_state() -> Iterator[None]:
    global release, running, peak
    seen_keys.clear()
    release = asyncio.Event()
    running = peak = 0
    support_tools.reset_refunds()
    yield
    support_tools.reset_refunds()


async def run(
    pool: ToolPool, tool: ToolSpec, tool_call: ToolCall, key: str = "k1", timeout_s: float = 5.0
) -> Any:
    return await pool.call(tool, tool_call, idempotency_key=key, timeout_s=timeout_s)


# --- behaviour ----------------------------------------------------------------------------


async def test_async_tool_result_is_json(pool: ToolPool) -> None:
    outcome = await run(pool, spec(f"{HERE}:add"), call(a=2, b=3))
    assert outcome.ok and outcome.error is None
    assert json.loads(outcome.output) == {"sum": 5}


async def test_sync_tool_runs_in_a_thread_and_str_is_returned_as_is(pool: ToolPool) -> None:
    outcome = await run(pool, spec(f"{HERE}:sync_upper"), call(text="hi"))
    assert outcome.ok and outcome.output == "HI"


async def test_idempotency_key_only_for_side_effecting_tools(pool: ToolPool) -> None:
    read_only = await run(pool, spec(f"{HERE}:echo_kwargs"), call(x=1), key="run:1:c1")
    assert json.loads(read_only.output) == {"x": 1}

    writer = spec(f"{HERE}:record_key", side_effects=True)
    outcome = await run(pool, writer, call(note="n"), key="run:1:c1")
    assert outcome.ok and outcome.output == "noted n"
    assert seen_keys == ["run:1:c1"]


async def test_the_model_cannot_choose_the_idempotency_key(pool: ToolPool) -> None:
    writer = spec(f"{HERE}:record_key", side_effects=True)
    await run(pool, writer, call(note="n", idempotency_key="forged"), key="ours")
    assert seen_keys == ["ours"]


async def test_side_effecting_tool_without_key_parameter_is_reported(pool: ToolPool) -> None:
    outcome = await run(pool, spec(f"{HERE}:no_key", name="nk", side_effects=True), call("nk"))
    assert not outcome.ok
    assert (
        outcome.error is not None and "idempotency_key" in outcome.error and "nk" in outcome.error
    )


@pytest.mark.parametrize(
    "arguments",
    [{}, {"a": 1}, {"a": 1, "b": 2, "c": 3}],
    ids=["missing-both", "missing-one", "unexpected"],
)
async def test_wrong_arguments(pool: ToolPool, arguments: dict[str, Any]) -> None:
    outcome = await run(pool, spec(f"{HERE}:add", name="adder"), call("adder", **arguments))
    assert not outcome.ok and outcome.output == ""
    assert outcome.error is not None
    assert outcome.error.startswith("invalid arguments for tool adder: ")


async def test_type_error_inside_the_tool_is_not_called_invalid_arguments(pool: ToolPool) -> None:
    outcome = await run(pool, spec(f"{HERE}:inner_type_error"), call())
    assert not outcome.ok
    assert outcome.error == "tool t failed: TypeError: bad operand inside the tool"


@pytest.mark.parametrize(
    "path",
    [
        "no_such_module_xyz:f",
        f"{HERE}:no_such_function",
        f"{HERE}:add.nested",
        f"{HERE}:NOT_CALLABLE",
    ],
)
async def test_bad_import_path_is_an_outcome_naming_the_path(pool: ToolPool, path: str) -> None:
    outcome = await run(pool, spec(path), call())
    assert not outcome.ok
    assert outcome.error is not None and repr(path) in outcome.error


async def test_resolution_is_cached_per_path(
    pool: ToolPool, monkeypatch: pytest.MonkeyPatch
) -> None:
    imports: list[str] = []
    real = __import__("importlib").import_module

    def counting(name: str) -> Any:
        imports.append(name)
        return real(name)

    monkeypatch.setattr("actors.tool_pool.importlib.import_module", counting)
    for _ in range(3):
        assert (await run(pool, spec(f"{HERE}:add"), call(a=1, b=1))).ok
    assert imports == [HERE]


async def test_timeout(pool: ToolPool) -> None:
    outcome = await run(pool, spec(f"{HERE}:hang", name="slow"), call("slow"), timeout_s=0.05)
    assert not outcome.ok
    assert outcome.error == "tool slow timed out after 0.05s"


async def test_a_tools_own_timeout_error_is_a_failure_not_our_timeout(pool: ToolPool) -> None:
    outcome = await run(pool, spec(f"{HERE}:own_timeout"), call(), timeout_s=5)
    assert outcome.error == "tool t failed: TimeoutError: upstream timed out"


async def test_exception_becomes_an_outcome_with_type_and_message(pool: ToolPool) -> None:
    outcome = await run(pool, spec(f"{HERE}:explode", name="boom"), call("boom", reason="x"))
    assert not outcome.ok
    assert outcome.error == "tool boom failed: ValueError: cannot do x"


async def test_unserialisable_return_value(pool: ToolPool) -> None:
    outcome = await run(pool, spec(f"{HERE}:unserialisable"), call())
    assert not outcome.ok
    assert outcome.error is not None and "not JSON" in outcome.error


async def test_concurrency_limit() -> None:
    pool = ToolPool(max_concurrency=2)
    tasks = [asyncio.create_task(run(pool, spec(f"{HERE}:gated"), call())) for _ in range(5)]
    for _ in range(20):  # let every task reach the semaphore
        await asyncio.sleep(0)
    assert running == 2
    release.set()
    outcomes = await asyncio.gather(*tasks)
    assert all(o.ok and o.output == "done" for o in outcomes)
    assert peak == 2


async def test_waiting_for_a_slot_counts_against_the_timeout() -> None:
    pool = ToolPool(max_concurrency=1)
    holder = asyncio.create_task(run(pool, spec(f"{HERE}:gated"), call()))
    for _ in range(5):
        await asyncio.sleep(0)
    outcome = await run(pool, spec(f"{HERE}:gated", name="waiter"), call("waiter"), timeout_s=0.05)
    assert outcome.error == "tool waiter timed out after 0.05s"
    release.set()
    assert (await holder).ok


async def test_cancellation_propagates(pool: ToolPool) -> None:
    task = asyncio.create_task(run(pool, spec(f"{HERE}:hang"), call()))
    for _ in range(5):
        await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


def test_max_concurrency_must_be_positive() -> None:
    with pytest.raises(ValueError, match="max_concurrency"):
        ToolPool(max_concurrency=0)


# --- the support agent's tools through the pool ------------------------------------------

SUPPORT = "agents.examples.support_tools"


async def test_issue_refund_same_key_twice_refunds_once(pool: ToolPool) -> None:
    refund = spec(f"{SUPPORT}:issue_refund", name="issue_refund", side_effects=True)
    args = call("issue_refund", order_id=1002, reason="arrived broken")
    first = await run(pool, refund, args, key="run-1:2:call-1")
    again = await run(pool, refund, args, key="run-1:2:call-1")
    assert first.ok and again.ok
    assert json.loads(first.output) == json.loads(again.output)
    assert json.loads(first.output)["amount_usd"] == 54.5
    assert list(support_tools.refunds()) == ["run-1:2:call-1"]


async def test_issue_refund_with_a_new_key_does_not_refund_the_same_order_twice(
    pool: ToolPool,
) -> None:
    refund = spec(f"{SUPPORT}:issue_refund", name="issue_refund", side_effects=True)
    args = call("issue_refund", order_id=1002, reason="broken")
    assert (await run(pool, refund, args, key="a")).ok
    second = await run(pool, refund, args, key="b")
    assert not second.ok and second.error is not None and "already refunded" in second.error
    assert len(support_tools.refunds()) == 1


async def test_lookup_order_and_search_kb(pool: ToolPool) -> None:
    lookup = spec(f"{SUPPORT}:lookup_order", name="lookup_order")
    found = await run(pool, lookup, call("lookup_order", order_id=1001))
    assert json.loads(found.output)["status"] == "shipped"
    missing = await run(pool, lookup, call("lookup_order", order_id=7))
    assert not missing.ok and missing.error is not None and "no order 7" in missing.error

    search = spec(f"{SUPPORT}:search_kb", name="search_kb")
    hits = json.loads(
        (await run(pool, search, call("search_kb", query="how do I get a refund"))).output
    )
    assert hits[0]["id"] == "kb-returns"
    none = json.loads((await run(pool, search, call("search_kb", query="zzz"))).output)
    assert none == []
