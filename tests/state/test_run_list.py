"""Listing runs from the store, on both backends: filters, keyset pages stable under inserts,
threads, and runs of a store from before the listing columns."""

from __future__ import annotations

import itertools
import sqlite3
from pathlib import Path

import pytest

from actors.credentials import TenantContext
from actors.state import State
from actors.state.run_index import BadCursor, RunFilter, RunPage, encode_cursor
from agents.events import RunCancelled, RunCompleted, RunCreated, RunFailed, StepStarted
from agents.examples import example_specs
from agents.loop import RunInput
from agents.messages import Usage
from agents.spec import AgentSpec
from agents.tracing import RunTrace

TRACE = "0123456789abcdef0123456789abcdef"


class Clock:
    """Each reading one second after the last: every run has its own created_at."""

    def __init__(self) -> None:
        self._ticks = itertools.count(1000)

    def __call__(self) -> float:
        return float(next(self._ticks))


@pytest.fixture
def clocked(state: State) -> State:
    """The same database as `state`, with a clock that ticks on every reading."""
    return State(state.url, clock=Clock())


def _spec(name: str) -> AgentSpec:
    return next(spec for spec in example_specs() if spec.name == name)


def _run_id(n: int) -> str:
    return f"run-h0-{n:020d}"


async def _create(
    state: State, n: int, tenant: str = "acme", thread_id: str | None = None, agent: str = "support"
) -> str:
    spec = _spec(agent)
    trace = RunTrace(trace_id=TRACE, span_id="0123456789abcdef")
    request = RunInput(
        run_id=_run_id(n), input="hi", tenant=tenant, thread_id=thread_id, trace=trace
    )
    await state.runs.create_run(spec, request, TenantContext(tenant=tenant), "h0")
    created = RunCreated(
        run_id=request.run_id, seq=1, agent=spec.name, version=spec.version, input="hi"
    )
    await state.runs.append_events({request.run_id: [created]})
    return request.run_id


def _ids(page: RunPage) -> list[str]:
    return [item.run_id for item in page.runs]


async def _all(state: State, where: RunFilter, limit: int) -> list[str]:
    found: list[str] = []
    cursor = None
    for _ in range(100):  # bounded
        page = await state.runs.list_runs(where, limit, cursor)
        found += _ids(page)
        cursor = page.next_cursor
        if cursor is None:
            return found
    raise AssertionError("pages never ended")


async def test_runs_list_newest_first_with_how_they_ended(clocked: State) -> None:
    state = clocked
    try:
        done, failed, cancelled, running = [await _create(state, n) for n in range(1, 5)]
        usage = Usage(input_tokens=10, output_tokens=5)
        end = {"steps": 2, "usage": usage, "cost_usd": 0.25}
        await state.runs.append_events(
            {
                done: [StepStarted(run_id=done, seq=2, step=1), RunCompleted(
                    run_id=done, seq=3, output="ok", **end)],
                failed: [RunFailed(
                    run_id=failed, seq=2, code="tool_failed", message="x", retryable=False, **end
                )],
                cancelled: [RunCancelled(run_id=cancelled, seq=2, reason="cancelled", **end)],
            }
        )  # fmt: skip
        page = await state.runs.list_runs(RunFilter(), 50)
        assert _ids(page) == [running, cancelled, failed, done] and page.next_cursor is None
        by_id = {item.run_id: item for item in page.runs}
        assert by_id[done].status == "completed" and by_id[done].tokens == 15
        assert by_id[done].steps == 2 and by_id[done].cost_usd == 0.25
        assert by_id[done].ended_at is not None and by_id[done].error_code is None
        assert by_id[failed].status == "failed" and by_id[failed].error_code == "tool_failed"
        assert by_id[cancelled].status == "cancelled"
        item = by_id[running]
        assert (item.status, item.ended_at, item.steps, item.cost_usd) == ("running", None, 0, 0)
        assert (item.tenant, item.agent, item.version) == ("acme", "support", "v1")
        assert item.assignment == "stable" and item.trace_id == TRACE
        assert by_id[done].created_at < item.created_at
    finally:
        await state.close()


async def test_filters(clocked: State) -> None:
    state = clocked
    try:
        a1 = await _create(state, 1, tenant="acme")
        b1 = await _create(state, 2, tenant="globex")
        a2 = await _create(state, 3, tenant="acme", agent="concierge", thread_id="t-1")
        a1_created = (await state.runs.list_runs(RunFilter(tenant="acme"), 50)).runs[-1]
        assert _ids(await state.runs.list_runs(RunFilter(tenant="acme"), 50)) == [a2, a1]
        assert _ids(await state.runs.list_runs(RunFilter(tenant="globex"), 50)) == [b1]
        assert _ids(await state.runs.list_runs(RunFilter(agent="concierge"), 50)) == [a2]
        assert _ids(await state.runs.list_runs(RunFilter(version="v2"), 50)) == []
        assert _ids(await state.runs.list_runs(RunFilter(thread_id="t-1"), 50)) == [a2]
        assert _ids(await state.runs.list_runs(RunFilter(status="completed"), 50)) == []
        assert len((await state.runs.list_runs(RunFilter(status="running"), 50)).runs) == 3
        since = RunFilter(since=a1_created.created_at + 1)
        assert _ids(await state.runs.list_runs(since, 50)) == [a2, b1]
        until = RunFilter(until=a1_created.created_at + 1)  # created before: exclusive
        assert _ids(await state.runs.list_runs(until, 50)) == [a1]
    finally:
        await state.close()


async def test_pages_are_stable_under_inserts(clocked: State) -> None:
    state = clocked
    try:
        older = [await _create(state, n) for n in range(1, 8)]
        first = await state.runs.list_runs(RunFilter(tenant="acme"), 3)
        assert _ids(first) == older[::-1][:3] and first.next_cursor is not None
        newer = [await _create(state, n) for n in range(8, 11)]  # between pages
        rest = await _all_after(state, first.next_cursor)
        assert rest == older[::-1][3:]  # no item twice, none skipped
        assert _ids(await state.runs.list_runs(RunFilter(), 3)) == newer[::-1]
        assert await _all(state, RunFilter(), 4) == (older + newer)[::-1]
    finally:
        await state.close()


async def _all_after(state: State, cursor: str) -> list[str]:
    found: list[str] = []
    next_cursor: str | None = cursor
    for _ in range(100):  # bounded
        if next_cursor is None:
            return found
        page = await state.runs.list_runs(RunFilter(tenant="acme"), 3, next_cursor)
        found += _ids(page)
        next_cursor = page.next_cursor
    raise AssertionError("pages never ended")


async def test_runs_created_in_the_same_instant_page_by_id(state: State) -> None:
    # The default clock may read the same time twice: the run id breaks the tie.
    same = State(state.url, clock=lambda: 5000.0)
    try:
        ids = [await _create(same, n) for n in range(1, 6)]
        assert await _all(same, RunFilter(), 2) == ids[::-1]
    finally:
        await same.close()


async def test_a_thread_lists_oldest_first(clocked: State) -> None:
    state = clocked
    try:
        turns = [await _create(state, n, thread_id="t-9") for n in range(1, 5)]
        await _create(state, 5, thread_id="t-other")
        await _create(state, 6, tenant="globex", thread_id="t-9")
        page = await state.runs.thread_runs("t-9", "acme", 3)
        assert _ids(page) == turns[:3] and page.next_cursor is not None
        rest = await state.runs.thread_runs("t-9", "acme", 3, page.next_cursor)
        assert _ids(rest) == turns[3:] and rest.next_cursor is None
        assert len((await state.runs.thread_runs("t-9", None, 50)).runs) == 5  # any tenant
    finally:
        await state.close()


@pytest.mark.parametrize("cursor", ["", "not-base64!", "e30", encode_cursor(1.0, "x")[:-2]])
async def test_a_bad_cursor_is_refused(state: State, cursor: str) -> None:
    with pytest.raises(BadCursor):
        await state.runs.list_runs(RunFilter(), 10, cursor)


async def test_a_store_from_before_the_listing_is_backfilled(tmp_path: Path) -> None:
    """Runs stored before the listing columns list with what their rows and events say."""
    spec = _spec("support")
    request = RunInput(run_id=_run_id(1), input="hi", tenant="acme", thread_id="t-1")
    created = RunCreated(
        run_id=request.run_id, seq=1, ts=1234.5, agent="support", version="v1", input="hi"
    )
    failed = RunFailed(
        run_id=request.run_id, seq=2, code="budget_exceeded", message="x", retryable=False,
        steps=3, usage=Usage(output_tokens=7), cost_usd=0.5,
    )  # fmt: skip
    old = sqlite3.connect(tmp_path / "runs.sqlite")
    old.execute(
        "CREATE TABLE runs (run_id TEXT PRIMARY KEY, spec TEXT NOT NULL, request TEXT NOT NULL,"
        " context TEXT NOT NULL, host_id TEXT NOT NULL, ended INTEGER NOT NULL DEFAULT 0,"
        " ended_at DOUBLE PRECISION)"
    )
    old.execute(
        "CREATE TABLE events (run_id TEXT NOT NULL, seq BIGINT NOT NULL, event TEXT NOT NULL,"
        " PRIMARY KEY (run_id, seq))"
    )
    context = TenantContext(tenant="acme").model_dump_json()
    row = (request.run_id, spec.model_dump_json(), request.model_dump_json(), context)
    old.execute("INSERT INTO runs VALUES (?, ?, ?, ?, 'h0', 1, 2000.0)", row)
    old.execute("INSERT INTO runs VALUES ('r-odd', '{}', 'not json', '{}', 'h0', 0, NULL)")
    for event in (created, failed):
        old.execute(
            "INSERT INTO events VALUES (?, ?, ?)",
            (request.run_id, event.seq, event.model_dump_json()),
        )
    old.commit()
    old.close()
    state = State(f"sqlite://{tmp_path}")
    try:
        page = await state.runs.list_runs(RunFilter(tenant="acme"), 10)
        [item] = page.runs
        assert (item.created_at, item.ended_at, item.status) == (1234.5, 2000.0, "failed")
        assert (item.steps, item.tokens, item.cost_usd) == (3, 7, 0.5)
        assert (item.agent, item.thread_id, item.error_code) == (
            "support",
            "t-1",
            "budget_exceeded",
        )
        odd = await state.runs.list_runs(RunFilter(tenant="default"), 10)
        assert [(i.run_id, i.status) for i in odd.runs] == [("r-odd", "running")]
    finally:
        await state.close()


async def test_runs_from_before_the_listing_are_backfilled_on_both_backends(
    clocked: State,
) -> None:
    """Rows without the listing's values (as an older rayfleet left them) are filled in
    from their stored request and events when the schema is brought forward."""
    state = clocked
    try:
        running = await _create(state, 1, thread_id="t-old")
        done = await _create(state, 2)
        end = {"steps": 4, "usage": Usage(input_tokens=3), "cost_usd": 0.125}
        await state.runs.append_events(
            {done: [RunCompleted(run_id=done, seq=2, output="ok", **end)]}
        )
        db = state.database("runs")
        await db.execute(
            "UPDATE runs SET tenant = NULL, agent = NULL, version = NULL, assignment = NULL,"
            " thread_id = NULL, trace_id = NULL, created_at = NULL, status = NULL,"
            " steps = NULL, tokens = NULL, cost_usd = NULL"
        )
        await db.execute("UPDATE schema_versions SET version = 3 WHERE concern = 'runs'")
    finally:
        await state.close()
    later = State(state.url)  # a newer rayfleet opens the store
    try:
        page = await later.runs.list_runs(RunFilter(tenant="acme"), 10)
        # created_at is now the first event's time (0.0 here: its ts was not set).
        by_id = {item.run_id: item for item in page.runs}
        assert set(by_id) == {running, done}
        assert (by_id[running].status, by_id[running].thread_id) == ("running", "t-old")
        assert by_id[running].trace_id == TRACE and by_id[running].agent == "support"
        finished = by_id[done]
        assert (finished.status, finished.steps, finished.tokens) == ("completed", 4, 3)
        assert finished.cost_usd == 0.125 and finished.ended_at is not None
    finally:
        await later.close()
