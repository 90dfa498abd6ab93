"""What a Serve handle may call on a rayfleet deployment, checked in one place.

Serve dispatches a handle call by looking its method name up on the replica's object
(`getattr` in `ray.serve._private.replica`, function `get_user_method_info`), so without a
guard every attribute answers: `_start` (no tenant check), `reconfigure` (new tenants and
keys), `__init__`, `__setattr__`. `HandleSurface.__getattribute__` answers that one lookup
with the class's `handle_methods` only; any other name gets a method that raises
`RequestInvalid` naming it and the public ones. Serve's own calls (constructor,
`reconfigure` from the deploy config, health checks, HTTP through `__call__`) and
rayfleet's code are other lookups and see the object as it is.

A public method comes back wrapped with the checks the HTTP API applies to a body: the
arguments must fit the method's signature and types (strictly: no "1" for 1), be JSON
values, and weigh at most the deployment's body limit (`max_body_bytes`, 1 MiB) as JSON.
The method itself then does what its HTTP route does (tenant from `api_key`, field rules).
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import inspect
import json
import sys
import typing
from collections.abc import AsyncIterator, Callable
from typing import Any, ClassVar

from pydantic import TypeAdapter, ValidationError

from agents.errors import RequestInvalid, RequestTooLarge

# Serve's lookup of a request's method name; a Ray upgrade that renames it makes the
# refusal tests fail (tests/serve/test_handle_driver.py), never passes silently.
_DISPATCH = "get_user_method_info"
# Names Serve's dispatch reads itself: HTTP requests enter through `__call__`, and
# `isinstance` may read `__class__`.
_SERVE_NAMES = frozenset({"__call__", "__class__"})


class HandleSurface:
    """Base of a Serve deployment class: a handle reaches `handle_methods` and nothing else."""

    handle_methods: ClassVar[frozenset[str]] = frozenset()
    """The public handle API of the deployment."""

    def handle_limit_bytes(self) -> int | None:
        """Largest JSON size of one call's arguments; None: no size cap (internal calls)."""
        return None

    def __getattribute__(self, name: str) -> Any:
        if sys._getframe(1).f_code.co_name != _DISPATCH:
            return object.__getattribute__(self, name)
        public = type(self).handle_methods
        if name in public:
            limit = object.__getattribute__(self, "handle_limit_bytes")()
            return checked(object.__getattribute__(self, name), limit)
        if name in _SERVE_NAMES:
            return object.__getattribute__(self, name)
        return _refusal(name, public)


def _refusal(name: str, public: frozenset[str]) -> Callable[..., Any]:
    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise RequestInvalid(
            f"{name[:80]!r} is not a handle method (handle methods: {', '.join(sorted(public))})",
            "method_name",
        )

    refuse.__name__ = "refuse"
    return refuse


def checked(method: Callable[..., Any], limit_bytes: int | None) -> Callable[..., Any]:
    """`method` behind the body checks, of the same kind (sync, async, async generator) so
    that Serve calls it as it would call the method."""
    signature = inspect.signature(method)
    # The module's names, not the function's globals: Serve ships the deployment class by
    # value, with only the globals its code uses (annotations are strings, not among them).
    hints = typing.get_type_hints(method, vars(importlib.import_module(method.__module__)))
    adapters = {name: TypeAdapter(hints[name]) for name in signature.parameters if name in hints}

    def check(args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        try:
            bound = signature.bind(*args, **kwargs)
        except TypeError as exc:
            raise RequestInvalid(f"{method.__name__}: {exc}", "arguments") from None
        if limit_bytes is not None:
            check_size(bound.arguments, limit_bytes)
        for name, value in bound.arguments.items():
            try:
                adapters[name].validate_python(value, strict=True)
            except ValidationError as exc:
                first = exc.errors(include_url=False)[0]
                raise RequestInvalid(f"{name}: {first['msg']}", name) from None

    wrapper: Callable[..., Any]
    if inspect.isasyncgenfunction(method):

        async def stream(*args: Any, **kwargs: Any) -> AsyncIterator[Any]:
            check(args, kwargs)
            async with contextlib.aclosing(method(*args, **kwargs)) as items:
                async for item in items:
                    yield item

        wrapper = stream
    elif inspect.iscoroutinefunction(method):

        async def call(*args: Any, **kwargs: Any) -> Any:
            check(args, kwargs)
            return await method(*args, **kwargs)

        wrapper = call
    else:

        def call_sync(*args: Any, **kwargs: Any) -> Any:
            check(args, kwargs)
            return method(*args, **kwargs)

        wrapper = call_sync
    return functools.wraps(method)(wrapper)


def check_size(arguments: dict[str, Any], limit_bytes: int) -> None:
    """Refuse arguments that are not JSON values or weigh over `limit_bytes` as JSON (what
    the same request would weigh as an HTTP body)."""
    try:
        encoded = json.dumps(arguments, ensure_ascii=False, separators=(",", ":"))
    except (TypeError, ValueError) as exc:
        raise RequestInvalid(f"arguments must be JSON values: {exc}", "arguments") from None
    except RecursionError:
        raise RequestInvalid("arguments are nested too deeply", "arguments") from None
    size = len(encoded.encode())
    if size > limit_bytes:
        raise RequestTooLarge(
            f"arguments of {size} bytes are over the {limit_bytes}-byte limit", "arguments"
        )
