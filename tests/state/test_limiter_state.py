"""The tenant limiter's durable state on both backends: spend adds up per tenant and day,
leases come back oldest first, limits are replaced; writes are group-committed (what is
asked for during a commit goes into the next one), each commit all or nothing and durable;
and a limiter file of an earlier rayfleet is upgraded with its rows intact."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Sequence
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest

from actors.state import State
from actors.state.db import Database, Statement
from actors.state.limiter import (
    LimiterState,
    Saved,
    add_spend,
    drop_lease,
    put_lease,
    put_limits,
)
from agents.errors import Overloaded

DAY = 20_000  # days since the epoch, as the limiter counts them

# What actors/limiter_file.py created before the state layer, in <data dir>/limiter.sqlite.
LEGACY_DDL = (
    """CREATE TABLE IF NOT EXISTS spend (
        tenant TEXT NOT NULL,
        day INTEGER NOT NULL,
        usd REAL NOT NULL,
        PRIMARY KEY (tenant, day)
    )""",
    """CREATE TABLE IF NOT EXISTS leases (
        lease TEXT PRIMARY KEY,
        tenant TEXT NOT NULL
    )""",
    """CREATE TABLE IF NOT EXISTS limits (
        id INTEGER PRIMARY KEY CHECK (id = 1),
        body TEXT NOT NULL
    )""",
)


class Recorded:
    """A real database whose group commits are written down and can be held open."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self.dialect = db.dialect
        self.commits: list[list[Statement]] = []
        self.hold: asyncio.Event | None = None
        self.committing = asyncio.Event()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.db, name)

    async def batch(self, statements: Sequence[Statement]) -> None:
        self.commits.append(list(statements))
        self.committing.set()
        if self.hold is not None:
            await self.hold.wait()
        await self.db.batch(statements)


def rows_of(commit: list[Statement]) -> int:
    return sum(len(rows) for _, rows in commit)


async def reloaded(state: State, day: int = DAY) -> Saved:
    """What a new process on the same state loads."""
    fresh = State(state.url)
    try:
        return await fresh.limiter.load(day)
    finally:
        await fresh.close()


async def test_writes_round_trip(state: State) -> None:
    limiter = state.limiter
    assert await limiter.load(DAY) == Saved()
    await limiter.write(
        add_spend("acme", DAY, 0.25),
        add_spend("acme", DAY, 0.5),
        add_spend("globex", DAY, 1.0),
        add_spend("acme", DAY - 1, 9.0),
        put_lease("l-b", "acme"),
        put_lease("l-a", "globex"),
        put_lease("l-c", "acme"),
        drop_lease("l-c"),
        put_limits('{"acme": {}}'),
        put_limits('{"acme": {"concurrent_runs": 2}}'),
    )
    saved = await limiter.load(DAY)
    assert saved.spend_usd == {"acme": pytest.approx(0.75), "globex": 1.0}
    assert list(saved.leases.items()) == [("l-b", "acme"), ("l-a", "globex")]  # oldest first
    assert saved.limits == '{"acme": {"concurrent_runs": 2}}'
    # Loading a day deletes the days before it: a day's budget never looks back.
    assert (await limiter.load(DAY - 1)).spend_usd == {}
    await limiter.write(drop_lease("l-b"), put_lease("l-d", "acme"), put_lease("l-b", "acme"))
    assert list((await reloaded(state)).leases) == ["l-a", "l-d", "l-b"]


async def test_writes_asked_for_during_a_commit_go_into_the_next_one(state: State) -> None:
    recorded = Recorded(state.database("limiter"))
    limiter = LimiterState(recorded)  # type: ignore[arg-type]
    recorded.hold = asyncio.Event()
    first = limiter.write(put_lease("l-0", "acme"))
    await asyncio.wait_for(recorded.committing.wait(), 10)
    during = [limiter.write(put_lease(f"l-{i}", "acme")) for i in range(1, 11)]
    await asyncio.sleep(0)
    assert not first.done() and len(recorded.commits) == 1
    recorded.hold.set()
    await asyncio.wait_for(asyncio.gather(first, *during), 10)
    assert [rows_of(commit) for commit in recorded.commits] == [1, 10]
    assert list((await reloaded(state)).leases) == [f"l-{i}" for i in range(11)]


async def test_many_concurrent_writes_are_one_durable_commit(state: State) -> None:
    recorded = Recorded(state.database("limiter"))
    limiter = LimiterState(recorded)  # type: ignore[arg-type]

    async def admit(i: int) -> None:
        await limiter.write(put_lease(f"lease-{i:03d}", f"t{i % 7}"), add_spend("acme", DAY, 0.5))

    await asyncio.wait_for(asyncio.gather(*(admit(i) for i in range(200))), 30)
    assert [rows_of(commit) for commit in recorded.commits] == [400]
    saved = await reloaded(state)
    assert list(saved.leases) == [f"lease-{i:03d}" for i in range(200)]
    assert saved.spend_usd == {"acme": 100.0}


async def test_a_commit_that_fails_writes_none_of_it_and_every_caller_hears(
    state: State,
) -> None:
    limiter = state.limiter
    await limiter.write(put_lease("kept", "acme"))
    broken = ("INSERT INTO limiter_leases (lease, tenant, seq) VALUES (?, NULL, 0)", ("x",))
    asked = [limiter.write(put_lease(f"l-{i}", "acme")) for i in range(50)]
    asked.append(limiter.write(add_spend("acme", DAY, 1.0), broken))
    results = await asyncio.wait_for(asyncio.gather(*asked, return_exceptions=True), 10)
    assert all(isinstance(r, Overloaded) for r in results), results
    assert "the tenant limiter cannot write its state" in str(results[0])
    saved = await reloaded(state)
    assert (list(saved.leases), saved.spend_usd) == (["kept"], {})
    await limiter.write(put_lease("after", "acme"))  # the next commit goes ahead
    assert list((await reloaded(state)).leases) == ["kept", "after"]


async def test_write_soon_queues_without_waiting(state: State) -> None:
    limiter = state.limiter
    await limiter.write(put_lease("l-1", "acme"))
    limiter.write_soon(drop_lease("l-1"))
    await limiter.write(put_limits("{}"))
    assert (await reloaded(state)).leases == {}


async def test_an_sqlite_limiter_file_of_an_earlier_rayfleet_is_upgraded_intact(
    tmp_path: Path,
) -> None:
    directory = tmp_path / "data"
    directory.mkdir(mode=0o700)
    with closing(sqlite3.connect(directory / "limiter.sqlite")) as old, old:
        for ddl in LEGACY_DDL:
            old.execute(ddl)
        old.executemany(
            "INSERT INTO spend VALUES (?, ?, ?)",
            [("acme", DAY, 0.4), ("globex", DAY, 2.5), ("acme", DAY - 3, 7.0)],
        )
        # Inserted out of key order: the old file's order (rowid) is the order kept.
        old.executemany(
            "INSERT INTO leases VALUES (?, ?)",
            [("l-z", "acme"), ("l-a", "globex"), ("l-m", "acme")],
        )
        old.execute("INSERT INTO limits VALUES (1, ?)", ('{"acme": {"concurrent_runs": 2}}',))
    state = State(f"sqlite://{directory}")
    try:
        saved = await state.limiter.load(DAY)
        assert saved.spend_usd == {"acme": 0.4, "globex": 2.5}
        assert list(saved.leases.items()) == [("l-z", "acme"), ("l-a", "globex"), ("l-m", "acme")]
        assert saved.limits == '{"acme": {"concurrent_runs": 2}}'
        await state.limiter.write(add_spend("acme", DAY, 0.1), put_lease("l-new", "acme"))
    finally:
        await state.close()
    again = await reloaded(state)
    assert again.spend_usd == {"acme": pytest.approx(0.5), "globex": 2.5}
    assert list(again.leases) == ["l-z", "l-a", "l-m", "l-new"]
    with closing(sqlite3.connect(directory / "limiter.sqlite")) as db:
        tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master")}
    assert {"spend", "leases", "limits"}.isdisjoint(tables)
