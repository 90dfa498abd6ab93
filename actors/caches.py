"""The caches: tool results and model responses, per tenant, on local disk (diskcache).

    CacheStore     diskcache.Cache + per-entry TTL; keys from `cache_key`, always per tenant
    CachedTools    ToolPort: answers repeated calls of a cacheable tool from the store
    CachedModel    ModelPort: answers repeated deterministic model calls from the store

Plain classes, no Ray. diskcache is SQLite plus files and is process-safe, so every run-host
process on a node shares one directory (and so one cache); a cluster has one cache per node.
A cache is an optimisation: any failure of the store (a full or broken disk, a locked
database, a garbled entry) is a miss and a logged warning, never a failed run.

Entries are str or bytes, never pickles: diskcache pickles any other value and unpickles any
entry stored that way, whoever wrote it, and unpickling runs code. `StrDisk` refuses both.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import AsyncIterator, Callable
from typing import Any, TypeVar

import diskcache
from pydantic import BaseModel, ConfigDict, Field, JsonValue, ValidationError

from actors.datadir import default_data_dir, private_dir
from agents import spans
from agents.messages import Message, TextDelta, ToolCall, ToolSchema, Usage
from agents.ports import Discard, ModelPort, ModelResult, ToolOutcome, ToolPort
from agents.spec import TierSpec, ToolSpec

logger = logging.getLogger("rayfleet")

_Model = TypeVar("_Model", bound=BaseModel)

_REOPEN_S = 30.0
"""After the store failed to open, try again at most this often (not on every call)."""
_WARN_EVERY_S = 60.0
"""A broken disk fails every call: warn at most this often, with the count in between."""


class PickledEntry(Exception):
    """A cache entry (or key) stored with pickle: rayfleet never writes one, so it came from
    elsewhere, and it is never unpickled."""


class StrDisk(diskcache.Disk):  # type: ignore[misc]  # diskcache has no type hints
    """diskcache's serializer for str keys and str or bytes values: it never pickles and
    never unpickles.

    diskcache's own Disk pickles any other value (MODE_PICKLE) and unpickles such an entry
    on every read. Here storing anything else is a TypeError (a programming error), and a
    pickled entry found on read raises `PickledEntry` instead of being loaded."""

    _READABLE = (diskcache.core.MODE_RAW, diskcache.core.MODE_BINARY, diskcache.core.MODE_TEXT)

    def put(self, key: object) -> tuple[Any, bool]:
        # Non-str keys would be pickled (and unpickled by iteration and `peekitem`).
        if type(key) is not str:
            raise TypeError(f"cache keys are str, not {type(key).__name__}")
        db_key, raw = super().put(key)
        return db_key, bool(raw)

    def get(self, key: Any, raw: bool) -> Any:
        if not raw:
            raise PickledEntry("a cache key stored with pickle: never unpickled")
        return super().get(key, raw)

    def store(self, value: object, read: bool, key: Any = diskcache.core.UNKNOWN) -> Any:
        if read or type(value) not in (str, bytes):
            raise TypeError(
                f"cache values are str or bytes, not {type(value).__name__}: "
                "serialize them first (e.g. model_dump_json)"
            )
        return super().store(value, read, key=key)

    def fetch(self, mode: int, filename: str | None, value: Any, read: bool) -> Any:
        if mode not in self._READABLE:
            raise PickledEntry(f"a cache entry stored in mode {mode} (pickle): never loaded")
        return super().fetch(mode, filename, value, read)


class CacheSettings(BaseModel):
    """Where the caches live on each node and how big they may grow."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    directory: str = Field(
        default_factory=lambda: str(default_data_dir() / "cache"),
        description="diskcache directory on each node, shared by the node's processes "
        "(private: mode 0700, refused if another user owns or can write to it).",
    )
    size_limit_bytes: int = Field(
        1 << 30, gt=0, description="Beyond this the least recently stored entries are culled."
    )
    lock_timeout_s: float = Field(
        0.1,
        gt=0,
        description="Longest wait for SQLite's lock; beyond it the lookup is a miss. Cache "
        "calls run on the event loop, so this bounds how long one can stall it.",
    )


def cache_key(kind: str, tenant: str, *parts: JsonValue) -> str:
    """SHA-256 of the canonical JSON of (kind, tenant, *parts).

    The tenant is a required argument so that no key can leave it out: one tenant's entry is
    never found by another's lookup. `kind` keeps tool, model and embedding keys apart."""
    canonical = json.dumps(
        [kind, tenant, *parts], sort_keys=True, separators=(",", ":"), ensure_ascii=False
    )
    return hashlib.sha256(canonical.encode()).hexdigest()


class CacheStore:
    """A diskcache.Cache with per-entry TTL, where every failure is a miss.

    Opened on first use (a broken directory must not stop the process that owns the store
    from starting). Calls are synchronous SQLite on the caller's thread: sub-millisecond, and
    bounded by `lock_timeout_s` when another process holds the lock."""

    def __init__(
        self,
        directory: str,
        *,
        size_limit_bytes: int = 1 << 30,
        lock_timeout_s: float = 0.1,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.directory = directory
        self._size_limit = size_limit_bytes
        self._lock_timeout_s = lock_timeout_s
        self._clock = clock
        self._cache: diskcache.Cache | None = None
        self._open_failed_at: float | None = None
        self._warned_at = float("-inf")
        self._unwarned = 0

    @classmethod
    def from_settings(cls, settings: CacheSettings) -> CacheStore:
        return cls(
            settings.directory,
            size_limit_bytes=settings.size_limit_bytes,
            lock_timeout_s=settings.lock_timeout_s,
        )

    def get(self, key: str) -> str | bytes | None:
        """The live entry under `key`, or None (missing, expired, pickled, or the store
        failed)."""
        cache = self._open()
        if cache is None:
            return None
        try:
            found = cache.get(key, default=None, retry=False)
        except PickledEntry as exc:
            self._warn("read", exc)
            self._drop(cache, key)
            return None
        except Exception as exc:
            self._warn("read", exc)
            return None
        # Only str and bytes are ever stored; a number in a raw row came from elsewhere.
        return found if isinstance(found, (str, bytes)) else None

    def set(self, key: str, value: str | bytes, ttl_s: float) -> None:
        """Store `value` for `ttl_s` seconds; a failure of the store is logged. Anything
        but str or bytes is a TypeError: it would be pickled."""
        if type(value) not in (str, bytes):
            raise TypeError(f"cache values are str or bytes, not {type(value).__name__}")
        cache = self._open()
        if cache is None:
            return
        try:
            cache.set(key, value, expire=ttl_s, retry=False)
        except Exception as exc:
            self._warn("write", exc)

    def _drop(self, cache: diskcache.Cache, key: str) -> None:
        # A pickled entry would be a miss (and a warning) on every lookup until it expires.
        try:
            cache.delete(key, retry=False)
        except Exception as exc:
            self._warn("delete", exc)

    def close(self) -> None:
        if self._cache is not None:
            self._cache.close()
            self._cache = None

    def _open(self) -> diskcache.Cache | None:
        if self._cache is not None:
            return self._cache
        now = self._clock()
        if self._open_failed_at is not None and now - self._open_failed_at < _REOPEN_S:
            return None
        try:
            private_dir(self.directory)
            self._cache = diskcache.Cache(
                self.directory,
                timeout=self._lock_timeout_s,
                size_limit=self._size_limit,
                disk=StrDisk,
            )
        except Exception as exc:
            self._open_failed_at = now
            self._warn("open", exc)
            return None
        self._open_failed_at = None
        return self._cache

    def _warn(self, what: str, exc: Exception) -> None:
        # Only the error's type and text: never a key's parts or a value (they may hold a
        # tenant's data).
        now = self._clock()
        if now - self._warned_at < _WARN_EVERY_S:
            self._unwarned += 1
            return
        also = f" ({self._unwarned} more failures since the last warning)" if self._unwarned else ""
        logger.warning(
            "cache %s failed in %s, treated as a miss: %s: %s%s",
            what,
            self.directory,
            type(exc).__name__,
            exc,
            also,
        )
        self._warned_at, self._unwarned = now, 0


class CachedTools:
    """ToolPort that answers repeated calls of cacheable tools from a CacheStore.

    Cacheable: `cache_ttl_s` set and no side effects (the spec forbids both at once; checked
    again here, because a side-effecting call served from a cache would silently not act).
    Key: tenant, tool name, function path and the canonical arguments, and the run's end
    user if it has one (a tool may answer each user with their own data: one user's entry
    is never another's). Only ok outcomes are
    stored: a failure may be transient, and the next call deserves a real try."""

    def __init__(self, inner: ToolPort, cache: CacheStore) -> None:
        self._inner = inner
        self._cache = cache

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
        ttl_s = tool.cache_ttl_s
        if ttl_s is None or tool.side_effects:
            return await self._inner.call(
                tool,
                call,
                idempotency_key=idempotency_key,
                timeout_s=timeout_s,
                tenant=tenant,
                user=user,
            )
        parts: list[JsonValue] = [tool.name, tool.function, call.arguments]
        if tool.mcp is not None:  # two servers' tools may share a name across agents
            parts.append({"mcp": f"{tool.mcp.url}#{tool.mcp.tool}"})
        if user is not None:  # runs without a user keep the keys they had
            parts.append({"user": user})
        key = cache_key("tool", tenant, *parts)
        hit = _parse(ToolOutcome, self._cache.get(key))
        if hit is not None:
            # Nothing was spent this time, whatever the first call cost.
            return hit.model_copy(update={"cached": True, "cost_usd": 0.0, "usage": Usage()})
        outcome = await self._inner.call(
            tool,
            call,
            idempotency_key=idempotency_key,
            timeout_s=timeout_s,
            tenant=tenant,
            user=user,
        )
        if outcome.ok:
            self._cache.set(key, outcome.model_dump_json(), ttl_s)
        return outcome


class CachedModel:
    """ModelPort for one run of `tenant` that answers repeated deterministic calls from a
    CacheStore (exact match).

    Only calls on a tier with temperature 0 are cached: at any other temperature a repeat is
    supposed to differ. Key: tenant, `scope` (the agent version: a canary or a shadow must
    not be served stable's answers), the tier's chain, max_output_tokens, the messages and
    the tools. A miss streams from `inner` unchanged and stores the final result; a hit
    yields the whole text as one delta, then the stored result marked `cached`, with no cost
    and no usage (no provider tokens were spent)."""

    def __init__(
        self,
        inner: ModelPort,
        cache: CacheStore,
        tenant: str,
        ttl_s: float,
        clock: Callable[[], float] = time.perf_counter,
        *,
        scope: str = "",
    ) -> None:
        self._inner = inner
        self._cache = cache
        self._tenant = tenant
        self._ttl_s = ttl_s
        self._clock = clock
        self._scope = scope

    def key(
        self, tier: TierSpec, messages: tuple[Message, ...], tools: tuple[ToolSchema, ...]
    ) -> str:
        return cache_key(
            "model",
            self._tenant,
            self._scope,
            [ref.model_dump(mode="json") for ref in tier.chain],
            tier.max_output_tokens,
            [m.model_dump(mode="json") for m in messages],
            [t.model_dump(mode="json") for t in tools],
        )

    async def stream(
        self,
        tier: TierSpec,
        messages: tuple[Message, ...],
        tools: tuple[ToolSchema, ...],
        *,
        timeout_s: float,
    ) -> AsyncIterator[TextDelta | Discard | ModelResult]:
        if tier.temperature != 0:
            async for item in _forward(
                self._inner.stream(tier, messages, tools, timeout_s=timeout_s)
            ):
                yield item
            return
        started, started_ns = self._clock(), spans.now_ns()
        key = self.key(tier, messages, tools)
        hit = _parse(ModelResult, self._cache.get(key))
        if hit is not None:
            # Its span is ended before anything is yielded: none is open across a yield.
            spans.cache_hit(spans.current_context(), tier.chain[0].model, hit, started_ns)
            response = hit.response
            if response.message.content:
                yield TextDelta(text=response.message.content)
            yield hit.model_copy(
                update={
                    "response": response.model_copy(update={"usage": Usage()}),
                    "cost_usd": 0.0,
                    "latency_ms": (self._clock() - started) * 1000,
                    "tried": (),
                    "cached": True,
                    "usage_estimated": False,
                }
            )
            return
        async for item in _forward(self._inner.stream(tier, messages, tools, timeout_s=timeout_s)):
            if isinstance(item, ModelResult) and not item.cached:
                # Stored before it is yielded: a consumer may stop at the result, and code
                # after the last yield would then never run.
                self._cache.set(key, item.model_dump_json(), self._ttl_s)
            yield item


async def _forward(
    items: AsyncIterator[TextDelta | Discard | ModelResult],
) -> AsyncIterator[TextDelta | Discard | ModelResult]:
    """`items`, closed when we are (a consumer that stops early must not leave the inner
    stream, and its HTTP request, open)."""
    try:
        async for item in items:
            yield item
    finally:
        aclose = getattr(items, "aclose", None)
        if aclose is not None:
            await aclose()


def _parse(model: type[_Model], raw: Any) -> _Model | None:
    """A stored entry as `model`; anything unreadable (an older format, a torn write) is a miss."""
    if not isinstance(raw, str):
        return None
    try:
        return model.model_validate_json(raw)
    except ValidationError:
        logger.warning("cache entry unreadable as %s: treated as a miss", model.__name__)
        return None
