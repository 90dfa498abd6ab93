"""ToolPool: runs an agent's Python function tools, bounded and timed, never raising.

A plain class implementing `agents.ports.ToolPort`, tested without Ray; `ToolPoolActor` at
the bottom is the thin Ray shell. Every failure the model can react to (a bad import path,
wrong arguments, a timeout, an exception in the tool) comes back as `ToolOutcome(ok=False)`.
"""

from __future__ import annotations

import asyncio
import importlib
import inspect
from collections.abc import Callable
from typing import Any

import pydantic_core
import ray

from agents.messages import ToolCall
from agents.ports import ToolOutcome
from agents.spec import ToolSpec

_IDEMPOTENCY_ARG = "idempotency_key"


class _Unusable(Exception):
    """A tool that cannot be called as configured; the message is the model-facing error."""


class _Resolved:
    """A tool's callable and its signature (None if it has none we can read)."""

    __slots__ = ("function", "signature")

    def __init__(self, function: Callable[..., Any], signature: inspect.Signature | None) -> None:
        self.function = function
        self.signature = signature


class ToolPool:
    """Calls function tools with a concurrency limit and a per-call timeout. No Ray in here."""

    def __init__(self, max_concurrency: int = 64) -> None:
        if max_concurrency < 1:
            raise ValueError(f"max_concurrency must be >= 1, not {max_concurrency}")
        self._slots = asyncio.Semaphore(max_concurrency)
        self._resolved: dict[str, _Resolved] = {}

    async def call(
        self, tool: ToolSpec, call: ToolCall, *, idempotency_key: str, timeout_s: float
    ) -> ToolOutcome:
        """Run one tool call. Never raises except CancelledError."""
        try:
            resolved = self._resolve(tool.function)
            kwargs = _arguments(tool, call, resolved, idempotency_key)
        except _Unusable as exc:
            return _failure(str(exc))
        # The timeout covers waiting for a slot too: it bounds what the caller waits.
        deadline = asyncio.timeout(timeout_s)
        try:
            async with deadline, self._slots:
                value = await self._invoke(resolved.function, kwargs)
        except TimeoutError as exc:
            if deadline.expired():
                return _failure(f"tool {tool.name} timed out after {timeout_s:g}s")
            return _failure(f"tool {tool.name} failed: {_describe(exc)}")
        except Exception as exc:  # any tool error is the model's to react to
            return _failure(f"tool {tool.name} failed: {_describe(exc)}")
        try:
            return ToolOutcome(ok=True, output=_serialise(value))
        except Exception as exc:  # unserialisable types, circular references
            return _failure(f"tool {tool.name} returned a value that is not JSON: {_describe(exc)}")

    async def _invoke(self, function: Callable[..., Any], kwargs: dict[str, Any]) -> Any:
        """One attempt. The seam for retries: a later change wraps this (transient errors only,
        never argument or validation errors), inside the same deadline."""
        if inspect.iscoroutinefunction(function):
            return await function(**kwargs)
        value = await asyncio.to_thread(function, **kwargs)
        if inspect.isawaitable(value):  # a sync wrapper around an async callable
            value = await value
        return value

    def _resolve(self, path: str) -> _Resolved:
        cached = self._resolved.get(path)
        if cached is not None:
            return cached
        module_name, _, attr_path = path.partition(":")
        try:
            target: Any = importlib.import_module(module_name)
        except Exception as exc:
            raise _Unusable(f"cannot import tool function {path!r}: {_describe(exc)}") from None
        for attr in attr_path.split("."):
            try:
                target = getattr(target, attr)
            except AttributeError:
                raise _Unusable(
                    f"cannot import tool function {path!r}: {module_name!r} has no {attr_path!r}"
                ) from None
        if not callable(target):
            raise _Unusable(f"tool function {path!r} is not callable")
        try:
            signature: inspect.Signature | None = inspect.signature(target)
        except (TypeError, ValueError):
            signature = None
        resolved = _Resolved(target, signature)
        self._resolved[path] = resolved
        return resolved


def _arguments(
    tool: ToolSpec, call: ToolCall, resolved: _Resolved, idempotency_key: str
) -> dict[str, Any]:
    """The keyword arguments for the call, checked against the function's signature."""
    kwargs: dict[str, Any] = dict(call.arguments)
    if tool.side_effects:
        # Ours, never the model's: a retried or resumed call must reuse the same key.
        kwargs[_IDEMPOTENCY_ARG] = idempotency_key
    signature = resolved.signature
    if signature is None:
        return kwargs
    if tool.side_effects and not _accepts(signature, _IDEMPOTENCY_ARG):
        raise _Unusable(
            f"tool {tool.name} has side_effects: true but {tool.function!r} "
            f"takes no {_IDEMPOTENCY_ARG} argument"
        )
    try:
        signature.bind(**kwargs)
    except TypeError as exc:
        raise _Unusable(f"invalid arguments for tool {tool.name}: {exc}") from None
    return kwargs


def _accepts(signature: inspect.Signature, name: str) -> bool:
    return any(
        (p.name == name and p.kind is not inspect.Parameter.POSITIONAL_ONLY)
        or p.kind is inspect.Parameter.VAR_KEYWORD
        for p in signature.parameters.values()
    )


def _serialise(value: Any) -> str:
    if isinstance(value, str):
        return value
    return pydantic_core.to_json(value).decode("utf-8")


def _describe(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _failure(error: str) -> ToolOutcome:
    return ToolOutcome(ok=False, output="", error=error)


# Ray's stubs lack actor options (max_concurrency) in the keyword overload of `remote`.
ToolPoolActor = ray.remote(num_cpus=0, max_concurrency=1000)(ToolPool)  # type: ignore[call-overload]
