"""ToolPool: resolution, arguments, idempotency keys, timeouts, the concurrency limit, retries.

The effect ledger's part is in test_ledger.py."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Callable, Iterator
from typing import Any

import httpx2
import pydantic
import pytest

from actors.tool_pool import ToolPool, ToolRetrySettings
from agents.errors import ToolFailed, ToolUnavailable
from agents.examples import support_tools
from agents.messages import ToolCall
from agents.spec import ToolSpec
from tests import tools_for_tests as tools
from tests.tools_for_tests import RecordedSleeps

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
def sleeps() -> RecordedSleeps:
    return RecordedSleeps()


@pytest.fixture
def pool(sleeps: RecordedSleeps) -> ToolPool:
    return ToolPool(sleep=sleeps)


@pytest.fixture(autouse=True)
def _clean_state() -> Iterator[None]:
    global release, running, peak
    seen_keys.clear()
    release = asyncio.Event()
    running = peak = 0
    support_tools.reset_refunds()
    tools.reset()
    yield
    support_tools.reset_refunds()
    tools.reset()


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
    # Transient, so retried; but reported as the tool's failure, not as our deadline.
    assert outcome.error == "tool t failed after 3 attempts: TimeoutError: upstream timed out"


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


# --- retries of transient failures ------------------------------------------------------

FLAKY = f"{tools.HERE}:flaky"
_REQUEST = httpx2.Request("POST", "http://127.0.0.1:9/tool")


def _status(code: int) -> httpx2.HTTPStatusError:
    response = httpx2.Response(code, request=_REQUEST)
    return httpx2.HTTPStatusError(f"HTTP {code}", request=_REQUEST, response=response)


def _validation_error() -> pydantic.ValidationError:
    try:
        pydantic.TypeAdapter(int).validate_python("not a number")
    except pydantic.ValidationError as exc:
        return exc
    raise AssertionError("validated")


TRANSIENT: dict[str, Callable[[], BaseException]] = {
    "tool-unavailable": lambda: ToolUnavailable("inventory service down"),
    "retryable-tool-failed": lambda: ToolFailed("busy", "t", True),
    "own-timeout": lambda: TimeoutError("upstream timed out"),
    "broken-pipe": lambda: BrokenPipeError(),
    "connection-reset": lambda: ConnectionResetError("reset by peer"),
    "connection-refused": lambda: ConnectionRefusedError(),
    "http-500": lambda: _status(500),
    "http-503": lambda: _status(503),
    "transport-error": lambda: httpx2.ConnectError("refused", request=_REQUEST),
    "read-timeout": lambda: httpx2.ReadTimeout("slow", request=_REQUEST),
}

PERMANENT: dict[str, Callable[[], BaseException]] = {
    "http-400": lambda: _status(400),
    "http-404": lambda: _status(404),
    "http-422": lambda: _status(422),
    "http-429": lambda: _status(429),
    "validation-error": _validation_error,
    "type-error": lambda: TypeError("unsupported operand"),
    "value-error": lambda: ValueError("no such customer"),
    "lookup-error": lambda: LookupError("no order 7"),
    "tool-failed": lambda: ToolFailed("refused", "t"),
    "unavailable-said-not-retryable": lambda: ToolUnavailable("gone for good", "t", False),
}


@pytest.mark.parametrize("make", TRANSIENT.values(), ids=TRANSIENT.keys())
@pytest.mark.parametrize("function", ["flaky", "flaky_sync"])
async def test_transient_failure_is_retried_then_succeeds(
    pool: ToolPool, sleeps: RecordedSleeps, make: Callable[[], BaseException], function: str
) -> None:
    tools.script[:] = [make(), make()]
    outcome = await run(pool, spec(f"{tools.HERE}:{function}"), call())
    assert outcome.ok and outcome.output == "ok"
    assert tools.calls[function] == 3
    assert len(sleeps.delays) == 2


@pytest.mark.parametrize("make", PERMANENT.values(), ids=PERMANENT.keys())
async def test_permanent_failure_goes_back_at_once(
    pool: ToolPool, sleeps: RecordedSleeps, make: Callable[[], BaseException]
) -> None:
    error = make()
    tools.script[:] = [error, error]
    outcome = await run(pool, spec(FLAKY), call())
    assert not outcome.ok
    assert outcome.error == f"tool t failed: {type(error).__name__}: {error}"
    assert tools.calls["flaky"] == 1
    assert sleeps.delays == []


async def test_a_permanent_failure_after_a_transient_one_says_how_many_attempts(
    pool: ToolPool,
) -> None:
    tools.script[:] = [ToolUnavailable("blip"), ValueError("no such customer")]
    outcome = await run(pool, spec(FLAKY), call())
    assert outcome.error == "tool t failed after 2 attempts: ValueError: no such customer"
    assert tools.calls["flaky"] == 2


async def test_retries_exhausted(pool: ToolPool, sleeps: RecordedSleeps) -> None:
    tools.script[:] = [ToolUnavailable(f"down {i}") for i in range(5)]
    outcome = await run(pool, spec(FLAKY, name="inventory"), call("inventory"))
    assert not outcome.ok and outcome.output == ""
    assert outcome.error == "tool inventory failed after 3 attempts: ToolUnavailable: down 2"
    assert tools.calls["flaky"] == 3
    assert len(sleeps.delays) == 2


async def test_one_attempt_means_no_retries(sleeps: RecordedSleeps) -> None:
    pool = ToolPool(retry=ToolRetrySettings(attempts=1), sleep=sleeps)
    tools.script[:] = [ToolUnavailable("down")]
    outcome = await run(pool, spec(FLAKY), call())
    assert outcome.error == "tool t failed after 1 attempt: ToolUnavailable: down"
    assert tools.calls["flaky"] == 1 and sleeps.delays == []


async def test_backoff_grows_exponentially_with_bounded_jitter(sleeps: RecordedSleeps) -> None:
    settings = ToolRetrySettings(attempts=6, initial_backoff_s=0.1, max_backoff_s=0.5)
    pool = ToolPool(retry=settings, sleep=sleeps)
    runs = []
    for _ in range(2):
        sleeps.delays.clear()
        tools.script[:] = [ConnectionResetError() for _ in range(6)]
        outcome = await run(pool, spec(FLAKY), call(), timeout_s=60)
        assert outcome.error is not None and "after 6 attempts" in outcome.error
        runs.append(list(sleeps.delays))
    for delays in runs:
        assert len(delays) == 5
        # initial * 2**n plus up to `initial` of jitter, capped at max_backoff_s
        for n, (delay, low) in enumerate(zip(delays, [0.1, 0.2, 0.4, 0.5, 0.5], strict=True)):
            assert low <= delay <= min(0.1 * 2**n + 0.1, 0.5), (n, delays)
        assert delays == sorted(delays)
    assert runs[0][:2] != runs[1][:2]  # jittered: two runs do not wait alike


async def test_no_retry_when_the_backoff_would_outlast_the_deadline(
    sleeps: RecordedSleeps,
) -> None:
    pool = ToolPool(retry=ToolRetrySettings(initial_backoff_s=5, max_backoff_s=10), sleep=sleeps)
    tools.script[:] = [ToolUnavailable("down")]
    outcome = await run(pool, spec(FLAKY), call(), timeout_s=2)
    assert outcome.error == (
        "tool t failed after 1 attempt, no time left within 2s to retry: ToolUnavailable: down"
    )
    assert tools.calls["flaky"] == 1 and sleeps.delays == []


async def test_the_deadline_covers_all_attempts(pool: ToolPool) -> None:
    # Attempt 1 uses 0.3 s of a 0.5 s timeout and fails transiently; attempt 2 hangs and gets
    # only what is left. A per-attempt timeout would end it near 0.8 s.
    slow = spec(f"{tools.HERE}:slow_then_hang", name="slow")
    loop = asyncio.get_running_loop()
    started = loop.time()
    outcome = await run(pool, slow, call("slow", slow_s=0.3), timeout_s=0.5)
    elapsed = loop.time() - started
    assert outcome.error == "tool slow timed out after 0.5s (2 attempts)"
    assert tools.calls["slow_then_hang"] == 2
    assert 0.5 <= elapsed < 0.75


async def test_no_slot_is_held_during_a_backoff() -> None:
    waiting = asyncio.Event()
    resume = asyncio.Event()

    async def held_sleep(seconds: float) -> None:
        waiting.set()
        await resume.wait()

    pool = ToolPool(max_concurrency=1, sleep=held_sleep)
    tools.script[:] = [ToolUnavailable("blip")]
    retried = asyncio.create_task(run(pool, spec(FLAKY), call()))
    await asyncio.wait_for(waiting.wait(), 5)
    # The only slot is free while the first call waits to retry.
    assert (await run(pool, spec(f"{HERE}:add"), call(a=1, b=2), timeout_s=1)).ok
    resume.set()
    assert (await retried).ok and tools.calls["flaky"] == 2


@pytest.mark.parametrize(
    "fields",
    [
        {"attempts": 0},
        {"initial_backoff_s": -1},
        {"initial_backoff_s": 1, "max_backoff_s": 0.5},
        {"attempt": 3},
    ],
    ids=["no-attempts", "negative-backoff", "max-below-initial", "unknown-field"],
)
def test_retry_settings_are_validated(fields: dict[str, Any]) -> None:
    with pytest.raises(pydantic.ValidationError):
        ToolRetrySettings(**fields)
