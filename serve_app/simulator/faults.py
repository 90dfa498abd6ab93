"""Random fault injection for load tests: a failure rate, the kinds to pick from, a seed.

`POST /_sim/faults` installs a `FaultConfig`; from then on each model request (chat
completions and messages; embeddings only with `embeddings: true`) that no scripted reply
answers fails with probability `rate`, with a kind chosen uniformly from `kinds`. Given the
seed, the faults follow from the order of the requests alone. A fault becomes the same kind
of reply a test could have scripted, so it fails on the wire exactly as that reply does:

    status_429    429 (rate limit error) with `Retry-After: retry_after_s`
    status_500    500 (server error)
    drop          a stream cut after a few chunks (a non-streaming body cut halfway)
    stream_error  200, a few chunks, then an in-band error event (non-streaming: 529/503)
    slow          `slow_ms` of delay before the headers, then a normal answer
"""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass
from typing import Literal, get_args

from pydantic import BaseModel, ConfigDict, Field

from serve_app.simulator.script import DelayReply, DropReply, Reply, StatusReply, StreamErrorReply

FaultKind = Literal["status_429", "status_500", "drop", "stream_error", "slow"]
ALL_FAULT_KINDS: tuple[FaultKind, ...] = get_args(FaultKind)
MAX_AFTER_CHUNKS = 3
"""A random cut point falls within the first few chunks, so short replies are cut too."""


class FaultConfig(BaseModel):
    """How often model requests fail, and how."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    rate: float = Field(ge=0.0, le=1.0)
    """Probability that a request fails (0 = never, 1 = always)."""
    kinds: tuple[FaultKind, ...] = Field(default=ALL_FAULT_KINDS, min_length=1)
    """The kinds a fault is chosen from, uniformly (repeat a kind to weight it)."""
    seed: int | None = None
    """Seed of the fault sequence; None = a different sequence on every configuration."""
    retry_after_s: float | None = Field(default=0.0, ge=0)
    """`Retry-After` of an injected 429; None = no header."""
    slow_ms: float = Field(default=300.0, ge=0)
    """Delay of a `slow` fault before a normal answer."""
    after_chunks: int | None = Field(default=None, ge=0)
    """Chunks sent before a drop or an in-band error; None = random, 0..MAX_AFTER_CHUNKS."""
    embeddings: bool = False
    """Inject into embeddings requests too."""


@dataclass(frozen=True)
class Fault:
    """One injected fault: its kind and the reply that produces it on the wire."""

    kind: FaultKind
    reply: Reply


class FaultInjector:
    """Draws faults for a configuration: deterministic given the seed and the request order."""

    def __init__(self, config: FaultConfig) -> None:
        self.config = config
        self._rng = random.Random(config.seed)
        self.eligible = 0
        """Requests that were exposed to a draw."""
        self.injected: Counter[str] = Counter()

    def draw(self, endpoint: Literal["chat", "embeddings"]) -> Fault | None:
        """A fault for the next request to `endpoint`, or None to answer it normally."""
        if endpoint == "embeddings" and not self.config.embeddings:
            return None
        self.eligible += 1
        if self._rng.random() >= self.config.rate:
            return None
        kind = self._rng.choice(self.config.kinds)
        after = self.config.after_chunks
        if after is None:
            after = self._rng.randint(0, MAX_AFTER_CHUNKS)
        self.injected[kind] += 1
        return Fault(kind, _reply(kind, self.config, after, endpoint))

    def summary(self) -> dict[str, object]:
        """The configuration and what was injected so far (the body of `GET /_sim/faults`)."""
        return {
            "config": self.config.model_dump(mode="json"),
            "eligible": self.eligible,
            "injected": dict(self.injected),
        }


def _reply(
    kind: FaultKind, config: FaultConfig, after: int, endpoint: Literal["chat", "embeddings"]
) -> Reply:
    if kind == "status_429":
        return StatusReply(
            type="status",
            endpoint=endpoint,
            status=429,
            retry_after_s=config.retry_after_s,
            message="simulated fault: rate limited",
        )
    if kind == "status_500":
        return StatusReply(
            type="status", endpoint=endpoint, status=500, message="simulated fault: server error"
        )
    if kind == "drop":
        return DropReply(type="drop", endpoint=endpoint, after_chunks=after)
    if kind == "stream_error":
        return StreamErrorReply(
            type="stream_error",
            endpoint=endpoint,
            after_chunks=after,
            message="simulated fault: in-band error",
        )
    return DelayReply(type="delay", endpoint=endpoint, delay_ms=config.slow_ms)
