"""The memory store's threads: order, namespaces, limits, persistence."""

from __future__ import annotations

from pathlib import Path

from actors.memory import MemoryStore
from agents.messages import Message


def turn(text: str) -> list[Message]:
    return [Message(role="user", content=text), Message(role="assistant", content=f"re: {text}")]


async def test_threads_keep_order_and_survive_a_reopen(tmp_path: Path) -> None:
    path = str(tmp_path / "memory.sqlite")
    store = MemoryStore(path)
    await store.append_thread("acme", "t1", turn("one"))
    await store.append_thread("acme", "t1", turn("two"))
    store.close()
    reopened = MemoryStore(path)
    loaded = await reopened.load_thread("acme", "t1")
    assert [m.content for m in loaded] == ["one", "re: one", "two", "re: two"]
    reopened.close()


async def test_a_thread_id_from_another_namespace_finds_nothing(tmp_path: Path) -> None:
    store = MemoryStore(str(tmp_path / "m.sqlite"))
    await store.append_thread("acme", "shared-id", turn("secret plans"))
    assert await store.load_thread("globex", "shared-id") == []
    assert await store.load_thread("acme", "other-id") == []
    store.close()


async def test_only_the_last_messages_are_recalled(tmp_path: Path) -> None:
    store = MemoryStore(str(tmp_path / "m.sqlite"), max_messages=3)
    for i in range(4):
        await store.append_thread("ns", "t", turn(str(i)))
    loaded = await store.load_thread("ns", "t")
    assert [m.content for m in loaded] == ["re: 2", "3", "re: 3"]
    store.close()
