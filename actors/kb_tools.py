"""Help-article search by meaning: the support agent's articles ranked by the cosine
similarity of their embeddings to the query's embedding.

Embeddings come from the shared embedding batcher (`actors.embeddings.embed_texts`), booked
to the run's tenant. The articles go through the same cached batcher as the query, in the
same call: the first search of a tenant embeds them, later ones find them in the cache.
It lives in `actors/`, not beside the example agents' other tools, because it uses a shared
actor (`agents` never imports `actors`); `use_embedder` swaps the embedder (tests).
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Sequence
from typing import Protocol

from pydantic import JsonValue

from actors.embeddings import embed_texts
from agents.errors import ProviderUnavailable, ToolUnavailable
from agents.examples.support_tools import _ARTICLES

TOP_K = 3


class Embed(Protocol):
    """Texts -> one vector each, in order, booked to `tenant`."""

    def __call__(self, texts: list[str], *, tenant: str) -> Awaitable[list[list[float]]]: ...


_embedder: Embed | None = None


def use_embedder(embed: Embed | None) -> None:
    """Embed with `embed` from now on in this process; None: back to the shared batcher."""
    global _embedder
    _embedder = embed


def _article_text(article: dict[str, str]) -> str:
    return f"{article['title']}\n{article['body']}"


def cosine(a: Sequence[float], b: Sequence[float]) -> float:
    """Cosine similarity; 0.0 if either vector is all zeros."""
    dot = sum(x * y for x, y in zip(a, b, strict=True))
    norm = math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in b))
    return dot / norm if norm else 0.0


async def semantic_search_kb(query: str, tenant: str) -> list[dict[str, JsonValue]]:
    """The help articles closest in meaning to `query`, best first (at most 3)."""
    if not query.strip():
        raise ValueError("query is empty")
    embed: Embed = _embedder or embed_texts
    try:
        vectors = await embed([query, *(_article_text(a) for a in _ARTICLES)], tenant=tenant)
    except ProviderUnavailable as exc:  # transient: the tool pool retries it
        raise ToolUnavailable(f"embeddings unavailable: {exc}", "semantic_search_kb") from None
    wanted, articles = vectors[0], vectors[1:]
    scored = sorted(
        (
            (cosine(wanted, vector), article)
            for vector, article in zip(articles, _ARTICLES, strict=True)
        ),
        key=lambda pair: -pair[0],  # stable: ties keep the articles' order
    )
    return [
        {"id": a["id"], "title": a["title"], "body": a["body"], "score": round(score, 4)}
        for score, a in scored[:TOP_K]
    ]
