"""The databases under the state layer: statements, group commits, transactions, locks and
migrations behave the same on both backends."""

from __future__ import annotations

import asyncio

import pytest

from actors.state import State
from actors.state.db import Schema, Transaction
from agents.errors import ServiceUnavailable


async def _v1(tx: Transaction) -> None:
    await tx.execute("CREATE TABLE IF NOT EXISTS t_items (k TEXT PRIMARY KEY, n BIGINT NOT NULL)")


async def _v2(tx: Transaction) -> None:
    if "note" not in await tx.columns("t_items"):
        await tx.execute("ALTER TABLE t_items ADD COLUMN note TEXT")


V1 = Schema("contract", (_v1,))
V2 = Schema("contract", (_v1, _v2))


async def test_statements_batches_and_transactions(state: State) -> None:
    db = state.database("runs")
    await db.ensure(V1)
    await db.batch(
        [
            ("INSERT INTO t_items VALUES (?, ?) ON CONFLICT (k) DO NOTHING", [("a", 1), ("b", 2)]),
            ("INSERT INTO t_items VALUES (?, ?) ON CONFLICT (k) DO NOTHING", [("a", 9)]),
        ]
    )
    assert await db.fetchall("SELECT k, n FROM t_items ORDER BY k") == [("a", 1), ("b", 2)]
    assert await db.execute("UPDATE t_items SET n = n + 1 WHERE k = ?", ("a",)) == 1
    assert await db.fetchone("SELECT n FROM t_items WHERE k = ?", ("a",)) == (2,)
    with pytest.raises(RuntimeError):
        async with db.transaction() as tx:
            await tx.execute("DELETE FROM t_items")
            raise RuntimeError("rolled back")
    assert len(await db.fetchall("SELECT k FROM t_items")) == 2


async def test_a_batch_that_fails_writes_nothing(state: State) -> None:
    db = state.database("runs")
    await db.ensure(V1)
    with pytest.raises(Exception):  # noqa: B017 - each driver has its own integrity error
        await db.batch(
            [
                ("INSERT INTO t_items VALUES (?, ?)", [("x", 1)]),
                ("INSERT INTO t_items VALUES (?, ?)", [("x", 2)]),  # duplicate key
            ]
        )
    assert await db.fetchall("SELECT k FROM t_items") == []


async def test_locked_read_modify_write_loses_no_update(state: State) -> None:
    db = state.database("runs")
    await db.ensure(V1)
    await db.execute("INSERT INTO t_items VALUES (?, ?)", ("c", 0))

    async def bump() -> None:
        async with db.transaction() as tx:
            await tx.lock("c")
            row = await tx.fetchone("SELECT n FROM t_items WHERE k = ?", ("c",))
            assert row is not None
            await tx.execute("UPDATE t_items SET n = ? WHERE k = ?", (int(row[0]) + 1, "c"))

    await asyncio.gather(*(bump() for _ in range(20)))
    assert await db.fetchone("SELECT n FROM t_items WHERE k = ?", ("c",)) == (20,)


async def test_migrations_go_forward_and_refuse_a_newer_store(state: State) -> None:
    db = state.database("runs")
    await db.ensure(V1)
    await db.execute("INSERT INTO t_items VALUES (?, ?)", ("old", 1))
    fresh = State(state.url)  # another process, a newer rayfleet
    try:
        newer = fresh.database("runs")
        await newer.ensure(V2)
        await newer.execute("UPDATE t_items SET note = ? WHERE k = ?", ("kept", "old"))
        assert await newer.fetchall("SELECT k, n, note FROM t_items") == [("old", 1, "kept")]
    finally:
        await fresh.close()
    older = State(state.url)  # the older rayfleet again: it must not write a newer store
    try:
        with pytest.raises(ServiceUnavailable, match="newer rayfleet"):
            await older.database("runs").ensure(V1)
    finally:
        await older.close()
