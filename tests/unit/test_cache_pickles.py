"""The caches never unpickle: a pickled entry another process planted in a node's cache
directory is a miss and a warning, and never loaded (actors/caches.py, StrDisk). Real
diskcache in a temporary directory; the planter is diskcache's own default Disk. No Ray."""

from __future__ import annotations

import logging
import os
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import diskcache
import pytest

from actors.caches import CachedTools, CacheStore, PickledEntry, StrDisk, cache_key
from agents.messages import ToolCall
from agents.ports import ToolOutcome
from agents.spec import ToolSpec


class Planted:
    """Unpickling one creates the directory `path`: proof that something was unpickled."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.mkdir, (str(self.path),))


class CountingTools:
    """A ToolPort that always answers and counts its calls."""

    def __init__(self) -> None:
        self.calls = 0

    async def call(
        self,
        tool: ToolSpec,
        call: ToolCall,
        *,
        idempotency_key: str,
        timeout_s: float,
        tenant: str = "default",
        user: str | None = None,
    ) -> ToolOutcome:
        self.calls += 1
        return ToolOutcome(ok=True, output=f"answer #{self.calls}")


TOOL = ToolSpec(
    name="lookup_order",
    description="Look up an order.",
    function="agents.examples.support_tools:lookup_order",
    cache_ttl_s=60.0,
)
CALL = ToolCall(id="call-1", name="lookup_order", arguments={"order_id": 1001})
KEY = cache_key("tool", "acme", TOOL.name, TOOL.function, CALL.arguments)


@pytest.fixture
def directory(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "cache"
    store = CacheStore(str(path))  # creates the private directory, as a run host would
    store.set("warm", "up", 60)
    store.close()
    yield path


def plant(directory: Path, key: Any, value: Any, *, in_file: bool) -> None:
    """What another process could write: diskcache's default Disk pickles `value`. With
    `in_file` the pickle goes to a file next to the database instead of into a row."""
    settings = {"disk_min_file_size": 0} if in_file else {}
    planter = diskcache.Cache(str(directory), **settings)
    planter.set(key, value, expire=60)
    planter.close()


def rows(directory: Path, key: str) -> int:
    with sqlite3.connect(directory / "cache.db") as db:
        (count,) = db.execute("SELECT count(*) FROM Cache WHERE key = ?", (key,)).fetchone()
    return int(count)


@pytest.mark.parametrize("in_file", [False, True], ids=["in-row", "in-file"])
async def test_a_planted_pickle_is_a_miss_and_never_unpickled(
    directory: Path, tmp_path: Path, in_file: bool, caplog: pytest.LogCaptureFixture
) -> None:
    marker = tmp_path / "unpickled"
    plant(directory, KEY, Planted(marker), in_file=in_file)
    assert rows(directory, KEY) == 1  # the planted entry is there, under the tool call's key

    store = CacheStore(str(directory))
    inner = CountingTools()
    with caplog.at_level(logging.WARNING, logger="rayfleet"):
        outcome = await CachedTools(inner, store).call(
            TOOL, CALL, idempotency_key="k", timeout_s=5, tenant="acme"
        )
    assert not marker.exists(), "the planted entry was unpickled"
    assert outcome.ok and outcome.cached is False and inner.calls == 1  # a miss
    assert any("PickledEntry" in r.getMessage() for r in caplog.records)
    # The real answer replaced the planted entry; the next call is a hit.
    again = await CachedTools(inner, store).call(
        TOOL, CALL, idempotency_key="k", timeout_s=5, tenant="acme"
    )
    assert again.cached is True and inner.calls == 1
    assert not marker.exists()
    store.close()


def test_a_planted_pickle_is_dropped_on_read(directory: Path, tmp_path: Path) -> None:
    marker = tmp_path / "unpickled"
    plant(directory, "some-key", Planted(marker), in_file=False)
    store = CacheStore(str(directory))
    assert store.get("some-key") is None
    assert rows(directory, "some-key") == 0  # not a warning on every lookup until it expires
    assert not marker.exists()
    store.close()


def test_a_pickled_key_is_never_unpickled(directory: Path, tmp_path: Path) -> None:
    # diskcache pickles keys that are not str/bytes/int/float, and unpickles them when it
    # walks the keys (iteration, peekitem, pull).
    marker = tmp_path / "unpickled"
    plant(directory, (Planted(marker),), "value", in_file=False)
    cache = diskcache.Cache(str(directory), disk=StrDisk)
    with pytest.raises(PickledEntry):
        cache.peekitem(last=True)
    with pytest.raises(PickledEntry):
        list(cache)
    assert not marker.exists()
    cache.close()


def test_storing_anything_but_str_or_bytes_is_a_programming_error(directory: Path) -> None:
    store = CacheStore(str(directory))
    for value in ({"a": 1}, ["a"], 1, 1.5, None, bytearray(b"x")):
        with pytest.raises(TypeError, match="str or bytes"):
            store.set("k", value, 60)
    assert store.get("k") is None
    cache = diskcache.Cache(str(directory), disk=StrDisk)
    with pytest.raises(TypeError, match="cache keys are str"):
        cache.set(("tuple", "key"), "value")
    with pytest.raises(TypeError, match="str or bytes"):
        cache.set("k", {"a": 1})
    cache.close()
    store.close()


@pytest.mark.parametrize("in_file", [False, True], ids=["in-row", "in-file"])
def test_str_and_bytes_round_trip(directory: Path, in_file: bool) -> None:
    # Small values live in the row, values past min_file_size in files (text and binary).
    size = 100_000 if in_file else 10
    text, blob = "é" * size, bytes(range(256)) * (size // 10 + 1)
    store = CacheStore(str(directory))
    store.set("text", text, 60)
    store.set("blob", blob, 60)
    assert store.get("text") == text
    assert store.get("blob") == blob
    store.close()
