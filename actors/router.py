"""The model router: a tier's fallback chain -> provider clients, with cost per call.

Runs in-process inside each run host (a hop to a shared router actor costs ~2 ms per step,
see DESIGN.md); every run in the process shares its pooled HTTP client.
"""

from __future__ import annotations

import os
import time
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Protocol

import httpx2

from actors.providers.anthropic import AnthropicClient
from actors.providers.openai import OpenAIClient
from actors.settings import ProviderConfig
from agents.errors import AllProvidersFailed, ConfigError, ProviderUnavailable
from agents.messages import Message, ModelRequest, StreamItem, TextDelta, ToolSchema
from agents.ports import ModelResult
from agents.pricing import PriceTable
from agents.spec import TierSpec


class ProviderClient(Protocol):
    def stream(self, request: ModelRequest, *, timeout_s: float) -> AsyncIterator[StreamItem]: ...


def build_client(name: str, config: ProviderConfig, http: httpx2.AsyncClient) -> ProviderClient:
    """A client for one provider; its key is read from the environment here, in the actor."""
    api_key = os.environ.get(config.api_key_env) if config.api_key_env else None
    if config.kind == "openai":
        return OpenAIClient(name, config.base_url, api_key, http)
    return AnthropicClient(name, config.base_url, api_key, http)


class ModelRouter:
    """Streams a turn from the first provider in the tier's chain that answers.

    A provider that fails before any token arrived is skipped for the next in the chain.
    """

    def __init__(
        self,
        providers: Mapping[str, ProviderConfig],
        prices: PriceTable,
        http: httpx2.AsyncClient,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._clients = {name: build_client(name, cfg, http) for name, cfg in providers.items()}
        self._prices = prices
        self._clock = clock

    def _client(self, provider: str) -> ProviderClient:
        client = self._clients.get(provider)
        if client is None:
            known = ", ".join(sorted(self._clients))
            raise ConfigError(f"unknown provider {provider!r} (known: {known})")
        return client

    async def stream(
        self,
        tier: TierSpec,
        messages: tuple[Message, ...],
        tools: tuple[ToolSchema, ...],
        *,
        timeout_s: float,
    ) -> AsyncIterator[TextDelta | ModelResult]:
        tried: list[str] = []
        last_error: ProviderUnavailable | None = None
        for ref in tier.chain:
            client = self._client(ref.provider)
            request = ModelRequest(
                model=ref.model,
                messages=messages,
                tools=tools,
                max_output_tokens=tier.max_output_tokens,
                temperature=tier.temperature,
            )
            started = self._clock()
            streamed = False
            try:
                async for item in client.stream(request, timeout_s=timeout_s):
                    if isinstance(item, TextDelta):
                        streamed = True
                        yield item
                        continue
                    yield ModelResult(
                        response=item,
                        provider=ref.provider,
                        cost_usd=self._prices.cost_usd(item.model, item.usage),
                        latency_ms=(self._clock() - started) * 1000,
                        tried=tuple(tried),
                    )
                    return
            except ProviderUnavailable as exc:
                if streamed:
                    # Text already reached the client; redoing the turn elsewhere needs the
                    # discard contract, so fail instead of splicing two models' output.
                    raise
                tried.append(f"{ref.provider}/{ref.model}")
                last_error = exc
        raise AllProvidersFailed(
            f"every provider in the chain failed ({', '.join(tried)}): {last_error}",
            tried[-1].split("/")[0] if tried else "",
        )
