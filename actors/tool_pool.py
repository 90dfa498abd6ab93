"""ToolPool: runs an agent's Python function tools, bounded, timed and retried, never raising.

A plain class implementing `agents.ports.ToolPort`, tested without Ray; `ToolPoolActor` at
the bottom is the thin Ray shell. Every failure the model can react to (a bad import path,
wrong arguments, a timeout, an exception in the tool) comes back as `ToolOutcome(ok=False)`.

Transient failures (`ToolUnavailable`, a tool's own timeout, a connection error, an httpx2
transport error or 5xx) are retried with exponential backoff and jitter, all attempts inside
the call's one deadline. Anything else goes back to the model at once. Side-effecting calls
go through an optional `EffectLedger`: a key already recorded is answered from the ledger
and the tool is not called again.

One class for both places a tool can run (`ToolSpec.runs_in`): each run host keeps a pool for
its 'host' tools (actors.host_actor), and the shared actor here runs the 'process' ones and
keeps the tools' cluster-wide `max_concurrency` caps.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
import importlib
import inspect
import logging
import sys
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Self

import pydantic_core
import ray
from pydantic import BaseModel, ConfigDict, Field, model_validator
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    RetryError,
    retry_if_exception,
    stop_after_attempt,
    wait_exponential_jitter,
)
from tenacity.stop import stop_base

from actors.mcp_sessions import McpSessions
from actors.state import process_state
from agents.errors import ToolFailed
from agents.logs import configure_logging, first_traceback
from agents.messages import ToolCall
from agents.ports import EffectLedger, ToolOutcome
from agents.spec import ToolSpec

logger = logging.getLogger("rayfleet")

_IDEMPOTENCY_ARG = "idempotency_key"
_TENANT_ARG = "tenant"
_USER_ARG = "user"

Sleep = Callable[[float], Awaitable[None]]


class ToolRetrySettings(BaseModel):
    """How transient tool failures are retried; all attempts share the call's timeout."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    attempts: int = Field(3, ge=1, description="Attempts per call, the first included; 1: none.")
    initial_backoff_s: float = Field(
        0.1, ge=0, description="Wait before the first retry; doubles each retry, plus jitter."
    )
    max_backoff_s: float = Field(2.0, ge=0, description="Cap on any one wait between attempts.")

    @model_validator(mode="after")
    def _ordered(self) -> Self:
        if self.max_backoff_s < self.initial_backoff_s:
            raise ValueError(
                f"max_backoff_s ({self.max_backoff_s:g}) must be >= "
                f"initial_backoff_s ({self.initial_backoff_s:g})"
            )
        return self


class _Unusable(Exception):
    """A tool that cannot be called as configured; the message is the model-facing error."""


class _Resolved:
    """A tool's callable and its signature (None if it has none we can read)."""

    __slots__ = ("function", "signature")

    def __init__(self, function: Callable[..., Any], signature: inspect.Signature | None) -> None:
        self.function = function
        self.signature = signature


class _Attempts:
    """How many attempts a call has started (read after it ends, however it ends)."""

    __slots__ = ("count",)

    def __init__(self) -> None:
        self.count = 0


class ToolPool:
    """Calls function tools with a concurrency limit, a per-call deadline and retries of
    transient failures. No Ray in here.

    `ledger`, if given, makes side-effecting calls happen at most once per idempotency key,
    across retries, pools and resumed runs. `sleep` is the backoff wait (tests pass a recorder).
    `threads`: sync tools run in a thread pool of this many threads of the pool's own (none:
    the event loop's default executor), so they cannot starve the process's other threads.
    A tool's `max_concurrency` caps its calls in this pool.
    """

    def __init__(
        self,
        max_concurrency: int = 64,
        *,
        retry: ToolRetrySettings | None = None,
        ledger: EffectLedger | None = None,
        sleep: Sleep = asyncio.sleep,
        threads: int | None = None,
        mcp: McpSessions | None = None,
    ) -> None:
        if max_concurrency < 1:
            raise ValueError(f"max_concurrency must be >= 1, not {max_concurrency}")
        if threads is not None and threads < 1:
            raise ValueError(f"threads must be >= 1, not {threads}")
        self._slots = asyncio.Semaphore(max_concurrency)
        self._threads = (
            None if threads is None else ThreadPoolExecutor(threads, thread_name_prefix="rf-tool")
        )
        self._tool_slots: dict[tuple[str, int], asyncio.Semaphore] = {}
        self._resolved: dict[str, _Resolved] = {}
        self._retry = retry or ToolRetrySettings()
        self._ledger = ledger
        self._sleep = sleep
        self._keys = _KeyLocks()
        self._recording: set[asyncio.Future[None]] = set()  # strong refs while shielded
        # MCP tools: one session per server (and credentials) for every call of this pool.
        self._mcp = mcp if mcp is not None else McpSessions()

    async def aclose(self) -> None:
        """Close the pool's MCP sessions (each in its own owner task)."""
        await self._mcp.aclose()

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
        """Run one tool call. Never raises except CancelledError."""
        # One deadline for everything the caller waits on: a slot, the ledger, every attempt.
        deadline_at = asyncio.get_running_loop().time() + timeout_s
        if tool.side_effects and self._ledger is not None:
            return await self._call_once(
                self._ledger, tool, call, idempotency_key, timeout_s, deadline_at, tenant, user
            )
        try:
            kwargs, function = self._prepare(tool, call, idempotency_key, tenant, user)
        except _Unusable as exc:
            return _failure(str(exc))
        return await self._attempt(tool, function, kwargs, timeout_s, deadline_at)

    async def _call_once(
        self,
        ledger: EffectLedger,
        tool: ToolSpec,
        call: ToolCall,
        key: str,
        timeout_s: float,
        deadline_at: float,
        tenant: str,
        user: str | None,
    ) -> ToolOutcome:
        """A side-effecting call: answered from the ledger if its key is recorded, else run
        and recorded. Calls with one key in this pool run one after the other, so the second
        finds what the first recorded."""
        try:
            async with asyncio.timeout_at(deadline_at):
                await self._keys.acquire(key)
        except TimeoutError:
            return _failure(
                f"tool {tool.name} timed out after {timeout_s:g}s waiting for another call "
                "with the same idempotency key"
            )
        release_now = True
        try:
            try:
                async with asyncio.timeout_at(deadline_at):
                    recorded = await ledger.recall(key)
            except Exception as exc:  # unknown whether it ran: never risk running it twice
                return _failure(
                    f"effect ledger unavailable, tool {tool.name} was not called: {_describe(exc)}"
                )
            if recorded is not None:
                return recorded.model_copy(update={"replayed": True})
            # Checked after the recall: a resumed run gets what happened even if the tool's
            # definition has changed since.
            try:
                kwargs, function = self._prepare(tool, call, key, tenant, user)
            except _Unusable as exc:
                return _failure(str(exc))  # never ran: nothing to record
            outcome = await self._attempt(tool, function, kwargs, timeout_s, deadline_at)
            # Shielded: once the tool has acted, a cancelled caller must not lose the record,
            # and the key stays locked until it is written.
            recording = asyncio.ensure_future(self._record(ledger, tool, key, outcome, timeout_s))
            self._recording.add(recording)
            recording.add_done_callback(self._recording.discard)
            recording.add_done_callback(lambda _: self._keys.release(key))
            release_now = False
            await asyncio.shield(recording)
            return outcome
        finally:
            if release_now:
                self._keys.release(key)

    async def _record(
        self, ledger: EffectLedger, tool: ToolSpec, key: str, outcome: ToolOutcome, timeout_s: float
    ) -> None:
        # Not under the call's deadline, which the tool may have used up: the effect happened
        # (or may have) and the ledger must hear of it. Bounded all the same.
        try:
            async with asyncio.timeout(timeout_s):
                await ledger.record(key, outcome)
        except Exception as exc:  # the outcome stands; the tool's own key guards a rerun
            logger.warning(
                "effect ledger could not record tool %s key %r: %s",
                tool.name,
                key,
                _describe(exc),
                exc_info=first_traceback(exc),
            )

    async def _attempt(
        self,
        tool: ToolSpec,
        function: Callable[..., Any],
        kwargs: dict[str, Any],
        timeout_s: float,
        deadline_at: float,
    ) -> ToolOutcome:
        """All attempts of one call inside its deadline, as an outcome."""
        attempts = _Attempts()
        deadline = asyncio.timeout_at(deadline_at)
        try:
            async with deadline:
                value = await self._with_retries(
                    self._slot_of(tool), function, kwargs, deadline_at, attempts
                )
        except TimeoutError as exc:
            if deadline.expired():
                error = f"tool {tool.name} timed out after {timeout_s:g}s{_of(attempts)}"
                return _failure(error, attempts.count)
            error = f"tool {tool.name} failed{_after(attempts)}: {_describe(exc)}"
            return _failure(error, attempts.count)
        except RetryError as exc:
            last = exc.last_attempt.exception()
            early = attempts.count < self._retry.attempts
            why = f", no time left within {timeout_s:g}s to retry" if early else ""
            return _failure(
                f"tool {tool.name} failed after {_count(attempts)}{why}: "
                f"{_describe(last) if last is not None else 'unknown error'}",
                attempts.count,
            )
        except Exception as exc:  # any tool error is the model's to react to
            error = f"tool {tool.name} failed{_after(attempts)}: {_describe(exc)}"
            return _failure(error, attempts.count)
        try:
            return ToolOutcome(ok=True, output=_serialise(value), attempts=attempts.count)
        except Exception as exc:  # unserialisable types, circular references
            error = f"tool {tool.name} returned a value that is not JSON: {_describe(exc)}"
            return _failure(error, attempts.count)

    def _slot_of(self, tool: ToolSpec) -> contextlib.AbstractAsyncContextManager[Any]:
        """What an attempt holds besides a pool slot: one of the tool's own, if it has a cap.
        Keyed by function and cap: a redeployed tool with a new cap gets its own."""
        target = tool.function or (f"mcp:{tool.mcp.url}#{tool.mcp.tool}" if tool.mcp else None)
        if tool.max_concurrency is None or target is None:
            return contextlib.nullcontext()
        key = (target, tool.max_concurrency)
        slots = self._tool_slots.get(key)
        if slots is None:
            slots = self._tool_slots[key] = asyncio.Semaphore(tool.max_concurrency)
        return slots

    async def _with_retries(
        self,
        tool_slot: contextlib.AbstractAsyncContextManager[Any],
        function: Callable[..., Any],
        kwargs: dict[str, Any],
        deadline_at: float,
        attempts: _Attempts,
    ) -> Any:
        """Attempts until one succeeds, one fails for good, or attempts or time run out
        (RetryError). A slot is held per attempt, not across the backoff waits."""
        # The first attempt runs without tenacity, whose bookkeeping costs ~25 us a call:
        # most calls succeed the first time.
        attempts.count = 1
        try:
            async with tool_slot, self._slots:
                return await self._invoke(function, kwargs)
        except Exception as exc:
            if not is_transient(exc):
                raise
            first: BaseException | None = exc
        settings = self._retry
        retrying = AsyncRetrying(
            sleep=self._sleep,
            stop=stop_after_attempt(settings.attempts)
            | _NoTimeLeft(deadline_at, asyncio.get_running_loop().time),
            wait=wait_exponential_jitter(
                multiplier=settings.initial_backoff_s,
                max=settings.max_backoff_s,
                jitter=settings.initial_backoff_s,
            ),
            retry=retry_if_exception(is_transient),
        )
        async for attempt in retrying:
            with attempt:
                if first is not None:  # tenacity's attempt 1 is the failure above, replayed
                    failure, first = first, None
                    raise failure
                attempts.count += 1
                async with tool_slot, self._slots:
                    return await self._invoke(function, kwargs)
        raise AssertionError("unreachable: tenacity returns, raises or stops")  # pragma: no cover

    async def _invoke(self, function: Callable[..., Any], kwargs: dict[str, Any]) -> Any:
        """One attempt."""
        if inspect.iscoroutinefunction(function):
            return await function(**kwargs)
        if self._threads is None:
            value = await asyncio.to_thread(function, **kwargs)
        else:  # as asyncio.to_thread, in the pool's own threads
            context = contextvars.copy_context()
            value = await asyncio.get_running_loop().run_in_executor(
                self._threads, functools.partial(context.run, function, **kwargs)
            )
        if inspect.isawaitable(value):  # a sync wrapper around an async callable
            value = await value
        return value

    def _prepare(
        self, tool: ToolSpec, call: ToolCall, idempotency_key: str, tenant: str, user: str | None
    ) -> tuple[dict[str, Any], Callable[..., Any]]:
        if tool.mcp is not None:
            return self._prepare_mcp(tool, call, idempotency_key)
        if tool.function is None:
            raise _Unusable(f"tool {tool.name} is a sub-agent: the run loop calls it, not a pool")
        resolved = self._resolve(tool.function)
        kwargs = _arguments(tool, call, resolved, idempotency_key, tenant, user)
        return kwargs, resolved.function

    def _prepare_mcp(
        self, tool: ToolSpec, call: ToolCall, idempotency_key: str
    ) -> tuple[dict[str, Any], Callable[..., Any]]:
        """An MCP tool's call: the model's arguments as they are (the server validates them
        against its schema); a side-effecting one also carries the idempotency key."""
        locator = tool.mcp
        assert locator is not None
        key = idempotency_key if tool.side_effects else None
        sessions = self._mcp

        async def call_mcp(**arguments: Any) -> Any:
            return await sessions.call(locator, arguments, key)

        return dict(call.arguments), call_mcp

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
    tool: ToolSpec,
    call: ToolCall,
    resolved: _Resolved,
    idempotency_key: str,
    tenant: str,
    user: str | None,
) -> dict[str, Any]:
    """The keyword arguments for the call, checked against the function's signature."""
    kwargs: dict[str, Any] = dict(call.arguments)
    if tool.side_effects:
        # Ours, never the model's: a retried or resumed call must reuse the same key.
        kwargs[_IDEMPOTENCY_ARG] = idempotency_key
    signature = resolved.signature
    if signature is not None and _TENANT_ARG in signature.parameters:
        kwargs[_TENANT_ARG] = tenant  # ours too: a model cannot act as another tenant
    if signature is not None and _USER_ARG in signature.parameters:
        kwargs[_USER_ARG] = user  # and it cannot act for another user (None: none named)
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


def _failure(error: str, attempts: int = 0) -> ToolOutcome:
    return ToolOutcome(ok=False, output="", error=error, attempts=attempts)


def is_transient(exc: BaseException) -> bool:
    """True for a failure worth retrying: the tool said so (`ToolUnavailable`, or any
    `ToolFailed` with retryable=True), its own timeout, a lost connection, an httpx2 transport
    error or 5xx. Never a 4xx, a validation or argument error, or anything else."""
    if isinstance(exc, ToolFailed):
        return exc.retryable
    if isinstance(exc, (TimeoutError, ConnectionError)):
        return True
    # A tool that raised an httpx2 error has imported httpx2: no import here for the others.
    httpx2 = sys.modules.get("httpx2")
    if httpx2 is not None:
        if isinstance(exc, httpx2.HTTPStatusError):
            return bool(exc.response.status_code >= 500)
        if isinstance(exc, httpx2.TransportError):
            return True
    return False


class _NoTimeLeft(stop_base):
    """Stop when the next attempt could only start at or after the deadline.

    tenacity picks the wait before it asks stop: sleeping into the deadline is not worth it."""

    def __init__(self, deadline_at: float, clock: Callable[[], float]) -> None:
        self._deadline_at = deadline_at
        self._clock = clock

    def __call__(self, retry_state: RetryCallState) -> bool:
        return self._clock() + retry_state.upcoming_sleep >= self._deadline_at


class _KeyLocks:
    """A lock per idempotency key, kept only while calls with that key are in flight."""

    def __init__(self) -> None:
        self._entries: dict[str, tuple[asyncio.Lock, int]] = {}

    async def acquire(self, key: str) -> None:
        lock, users = self._entries.get(key) or (asyncio.Lock(), 0)
        self._entries[key] = (lock, users + 1)
        try:
            await lock.acquire()
        except BaseException:
            self._drop(key)
            raise

    def release(self, key: str) -> None:
        self._entries[key][0].release()
        self._drop(key)

    def _drop(self, key: str) -> None:
        lock, users = self._entries[key]
        if users == 1:
            del self._entries[key]
        else:
            self._entries[key] = (lock, users - 1)


def _after(attempts: _Attempts) -> str:
    return f" after {attempts.count} attempts" if attempts.count > 1 else ""


def _count(attempts: _Attempts) -> str:
    return "1 attempt" if attempts.count == 1 else f"{attempts.count} attempts"


def _of(attempts: _Attempts) -> str:
    return f" ({attempts.count} attempts)" if attempts.count > 1 else ""


class _ToolPoolHost(ToolPool):
    """The ToolPool inside its actor: opens its effect ledger from the state URL in the
    actor's own process (connections do not pickle)."""

    def __init__(
        self,
        max_concurrency: int = 64,
        *,
        retry: ToolRetrySettings | None = None,
        state_url: str | None = None,
    ) -> None:
        configure_logging("tools")
        super().__init__(max_concurrency, retry=retry, ledger=process_state(state_url).ledger)


# Ray's stubs lack actor options (max_concurrency) in the keyword overload of `remote`.
ToolPoolActor = ray.remote(num_cpus=0, max_concurrency=1000)(_ToolPoolHost)  # type: ignore[call-overload]
