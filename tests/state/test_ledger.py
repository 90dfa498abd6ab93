"""The effect ledger on both backends: recall what was recorded, the first outcome recorded
for a key stands (however many processes record it at once), records survive a restart,
retention forgets old ones, and a ledger file of an earlier rayfleet is taken as it is."""

from __future__ import annotations

import asyncio
import sqlite3
from contextlib import closing
from pathlib import Path

from actors.state import State
from agents.ports import ToolOutcome

# What actors/ledger.py created before the state layer, in <data dir>/effects.sqlite.
LEGACY_DDL = """
CREATE TABLE IF NOT EXISTS effects (
    key TEXT PRIMARY KEY,
    outcome TEXT NOT NULL,
    created_at REAL NOT NULL
)
"""


def done(output: str) -> ToolOutcome:
    return ToolOutcome(ok=True, output=output)


async def test_record_then_recall(state: State) -> None:
    ledger = state.ledger
    assert await ledger.recall("nope") is None
    failed = ToolOutcome(ok=False, output="", error="tool ship failed: ValueError: no stock")
    await ledger.record("k", failed)
    assert await ledger.recall("k") == failed
    assert await ledger.recall("other") is None


async def test_the_first_outcome_recorded_stands(state: State) -> None:
    await state.ledger.record("k", done("first"))
    await state.ledger.record("k", done("second"))
    assert await state.ledger.recall("k") == done("first")


async def test_the_first_outcome_stands_under_concurrent_records(state: State) -> None:
    # Two processes (two States, their own connections) racing to record one key.
    other = State(state.url)
    try:
        ledgers = [state.ledger, other.ledger]
        await asyncio.gather(
            *(ledgers[i % 2].record("race", done(f"outcome-{i}")) for i in range(20))
        )
        winner = await state.ledger.recall("race")
        assert winner is not None and winner.output.startswith("outcome-")
        assert await other.ledger.recall("race") == winner
        await other.ledger.record("race", done("late"))
        assert await state.ledger.recall("race") == winner
        rows = await state.database("ledger").fetchall("SELECT key FROM effects")
        assert rows == [("race",)]
    finally:
        await other.close()


async def test_records_survive_a_restart_with_their_time(state: State) -> None:
    stamped = State(state.url, clock=lambda: 1_700_000_000.5)
    try:
        await stamped.ledger.record("run-1:2:c1", done('{"refund_id": "rf-0001"}'))
    finally:
        await stamped.close()
    reopened = State(state.url)
    try:
        assert await reopened.ledger.recall("run-1:2:c1") == done('{"refund_id": "rf-0001"}')
        row = await reopened.database("ledger").fetchone("SELECT created_at FROM effects")
        assert row == (1_700_000_000.5,)  # 8-byte floats: unix time to the microsecond
    finally:
        await reopened.close()


async def test_purge_forgets_outcomes_recorded_before_a_time(state: State) -> None:
    now = [1_000.0]
    clocked = State(state.url, clock=lambda: now[0])
    try:
        for key in ("a", "b"):
            await clocked.ledger.record(key, done(key))
        now[0] = 2_000.0
        await clocked.ledger.record("c", done("c"))
        assert await clocked.ledger.purge(1_500.0) == 2
        assert await clocked.ledger.purge(1_500.0) == 0
        assert [await clocked.ledger.recall(k) for k in "abc"] == [None, None, done("c")]
    finally:
        await clocked.close()


async def test_an_sqlite_ledger_file_of_an_earlier_rayfleet_is_taken_as_it_is(
    tmp_path: Path,
) -> None:
    directory = tmp_path / "data"
    directory.mkdir(mode=0o700)
    with closing(sqlite3.connect(directory / "effects.sqlite")) as old, old:
        old.execute(LEGACY_DDL)
        old.execute(
            "INSERT INTO effects VALUES (?, ?, ?)",
            ("run-1:1:c1", done("refunded").model_dump_json(), 1_700_000_000.25),
        )
    state = State(f"sqlite://{directory}")
    try:
        assert await state.ledger.recall("run-1:1:c1") == done("refunded")
        await state.ledger.record("run-1:1:c1", done("again"))  # the old outcome stands
        assert await state.ledger.recall("run-1:1:c1") == done("refunded")
        await state.ledger.record("run-2:1:c1", done("new"))
        assert await state.ledger.purge(1_700_000_001.0) == 1  # the old row, by its time
        assert await state.ledger.recall("run-2:1:c1") == done("new")
    finally:
        await state.close()
