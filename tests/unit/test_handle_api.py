"""The handle surface without Ray: Serve's dispatch lookup sees only the public methods, each
behind the body checks; every other lookup sees the object as it is."""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import AsyncIterator
from typing import Any

import pytest

from agents.errors import RequestInvalid, RequestTooLarge
from serve_app.handle_api import HandleSurface, check_size


class Deployment(HandleSurface):
    handle_methods = frozenset({"start", "stream", "names"})

    def __init__(self) -> None:
        self._started: list[str] = []

    def handle_limit_bytes(self) -> int:
        return 100

    async def start(self, input: str, tags: list[str] | None = None) -> str:
        return await self._start(input)

    async def _start(self, input: str) -> str:
        self._started.append(input)
        return f"run-{len(self._started)}"

    async def stream(self, after: int = 0) -> AsyncIterator[int]:
        for seq in range(after + 1, 4):
            yield seq

    def names(self) -> list[str]:
        return sorted(self.handle_methods)

    async def reconfigure(self, config: dict[str, Any]) -> None:
        self._started.clear()


def get_user_method_info(replica: object, name: str) -> Any:
    """What Serve does with a request's method name (ray.serve._private.replica)."""
    assert hasattr(replica, name)
    return getattr(replica, name)


@pytest.mark.parametrize(
    "name", ["_start", "reconfigure", "__init__", "__setattr__", "__dict__", "no_such_name"]
)
def test_a_dispatched_name_that_is_not_public_is_refused(name: str) -> None:
    replica = Deployment()
    method = get_user_method_info(replica, name)
    with pytest.raises(RequestInvalid) as refused:
        method("x")
    assert f"{name!r} is not a handle method" in str(refused.value)
    assert "(handle methods: names, start, stream)" in str(refused.value)
    assert replica._started == []


def test_public_methods_keep_their_kind_and_the_rest_is_untouched() -> None:
    replica = Deployment()
    start = get_user_method_info(replica, "start")
    stream = get_user_method_info(replica, "stream")
    names = get_user_method_info(replica, "names")
    assert inspect.iscoroutinefunction(start) and inspect.isasyncgenfunction(stream)
    assert not inspect.iscoroutinefunction(names)
    assert list(inspect.signature(start).parameters) == ["input", "tags"]

    async def scenario() -> None:
        assert await start("hello") == "run-1"
        assert [seq async for seq in stream(after=1)] == [2, 3]
        await replica.reconfigure({})  # Serve's own call, not a dispatch: it runs

    asyncio.run(scenario())
    assert names() == ["names", "start", "stream"]
    assert replica._started == []


@pytest.mark.parametrize(
    ("args", "kwargs", "field"),
    [
        ((), {"input": 12}, "input"),
        ((), {"input": "x", "tags": ["a", 1]}, "tags"),
        ((), {"input": "x", "extra": 1}, "arguments"),
        ((), {}, "arguments"),
        (("x", None, "surplus"), {}, "arguments"),
    ],
)
def test_arguments_must_fit_the_signature_and_its_types(
    args: tuple[Any, ...], kwargs: dict[str, Any], field: str
) -> None:
    start = get_user_method_info(Deployment(), "start")
    with pytest.raises(RequestInvalid) as refused:
        asyncio.run(start(*args, **kwargs))
    assert refused.value.field == field


def test_arguments_over_the_limit_are_too_large_as_json_bytes() -> None:
    start = get_user_method_info(Deployment(), "start")
    assert asyncio.run(start("x" * 80)) == "run-1"  # {"input":"x..x"}: 92 bytes
    with pytest.raises(RequestTooLarge):
        asyncio.run(start("é" * 45))  # 45 characters, 90 bytes of UTF-8, plus the keys
    stream = get_user_method_info(Deployment(), "stream")

    async def drain() -> list[int]:
        return [seq async for seq in stream(after="1")]

    with pytest.raises(RequestInvalid):
        asyncio.run(drain())


def test_check_size_refuses_what_json_cannot_carry() -> None:
    check_size({"input": "x"}, 100)
    with pytest.raises(RequestInvalid, match="JSON"):
        check_size({"input": object()}, 100)
    nested: Any = []
    for _ in range(100_000):
        nested = [nested]
    with pytest.raises(RequestInvalid, match="nested"):
        check_size({"inputs": nested}, 10**9)
