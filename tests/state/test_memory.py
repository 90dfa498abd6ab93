"""The memory store's threads on both backends: order, namespaces, limits, persistence,
appends from several processes at once, and the SQLite file of older rayfleet."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

from actors.state import State
from agents.messages import Message


def turn(text: str) -> list[Message]:
    return [Message(role="user", content=text), Message(role="assistant", content=f"re: {text}")]


async def test_threads_keep_order_and_survive_a_reopen(state: State) -> None:
    await state.memory.append_thread("acme", "t1", turn("one"))
    await state.memory.append_thread("acme", "t1", turn("two"))
    await state.memory.append_thread("acme", "t1", [])
    reopened = State(state.url)
    try:
        loaded = await reopened.memory.load_thread("acme", "t1")
    finally:
        await reopened.close()
    assert [m.content for m in loaded] == ["one", "re: one", "two", "re: two"]


async def test_a_thread_id_from_another_namespace_finds_nothing(state: State) -> None:
    await state.memory.append_thread("acme", "shared-id", turn("secret plans"))
    assert await state.memory.load_thread("globex", "shared-id") == []
    assert await state.memory.load_thread("acme", "other-id") == []


async def test_only_the_last_messages_are_recalled(state: State) -> None:
    from actors.state.memory import MemoryStore

    store = MemoryStore(state.database("memory"), max_messages=3)
    for i in range(4):
        await store.append_thread("ns", "t", turn(str(i)))
    loaded = await store.load_thread("ns", "t")
    assert [m.content for m in loaded] == ["re: 2", "3", "re: 3"]


async def test_appends_from_several_processes_keep_every_turn_whole(state: State) -> None:
    # Three processes (each its own State, its own connections) append to one thread.
    others = [State(state.url) for _ in range(2)]
    try:
        stores = [state.memory, *(other.memory for other in others)]
        await asyncio.gather(
            *(
                store.append_thread("acme", "busy", turn(f"{n}.{i}"))
                for n, store in enumerate(stores)
                for i in range(5)
            )
        )
    finally:
        for other in others:
            await other.close()
    loaded = await state.memory.load_thread("acme", "busy")
    assert len(loaded) == 30
    questions = [m.content for m in loaded[0::2]]
    assert [m.content for m in loaded[1::2]] == [f"re: {q}" for q in questions]
    assert sorted(questions) == sorted(f"{n}.{i}" for n in range(3) for i in range(5))


# The table as the memory store before the state layer created it (actors/memory.py).
LEGACY_DDL = """
CREATE TABLE IF NOT EXISTS thread_messages (
    namespace TEXT NOT NULL,
    thread_id TEXT NOT NULL,
    position INTEGER NOT NULL,
    message TEXT NOT NULL,
    PRIMARY KEY (namespace, thread_id, position)
)
"""


async def test_a_sqlite_memory_file_of_older_rayfleet_is_taken_over(tmp_path: Path) -> None:
    directory = tmp_path / "data"
    directory.mkdir(mode=0o700)
    with sqlite3.connect(directory / "memory.sqlite") as legacy:
        legacy.execute(LEGACY_DDL)
        legacy.executemany(
            "INSERT INTO thread_messages VALUES (?, ?, ?, ?)",
            [
                ("acme", "t1", position, m.model_dump_json())
                for position, m in enumerate(turn("before"), start=1)
            ],
        )
    legacy.close()

    state = State(f"sqlite://{directory}")
    try:
        await state.memory.append_thread("acme", "t1", turn("after"))
        loaded = await state.memory.load_thread("acme", "t1")
    finally:
        await state.close()
    assert [m.content for m in loaded] == ["before", "re: before", "after", "re: after"]
