"""Model prices and the cost of a call."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from agents.messages import Usage


class ModelPrice(BaseModel):
    """Dollars per million tokens for one model."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    input_per_mtok: float = Field(ge=0, description="Uncached input tokens.")
    cached_input_per_mtok: float = Field(ge=0, description="Input tokens read from a cache.")
    cache_write_per_mtok: float = Field(ge=0, description="Input tokens written to a cache.")
    output_per_mtok: float = Field(ge=0, description="Generated tokens.")

    def cost_usd(self, usage: Usage) -> float:
        return (
            usage.input_tokens * self.input_per_mtok
            + usage.cached_input_tokens * self.cached_input_per_mtok
            + usage.cache_write_tokens * self.cache_write_per_mtok
            + usage.output_tokens * self.output_per_mtok
        ) / 1_000_000


DEFAULT_PRICES: dict[str, ModelPrice] = {
    # Simulator models, priced like the public tiers they stand in for (2026 list prices).
    "sim-fast": ModelPrice(
        input_per_mtok=0.25,
        cached_input_per_mtok=0.025,
        cache_write_per_mtok=0.3125,
        output_per_mtok=1.25,
    ),
    "sim-strong": ModelPrice(
        input_per_mtok=3.0,
        cached_input_per_mtok=0.3,
        cache_write_per_mtok=3.75,
        output_per_mtok=15.0,
    ),
    "sim-embed": ModelPrice(  # embeddings: input only, like text-embedding-3-small
        input_per_mtok=0.02,
        cached_input_per_mtok=0.0,
        cache_write_per_mtok=0.0,
        output_per_mtok=0.0,
    ),
    "sim-local": ModelPrice(
        input_per_mtok=0.0,
        cached_input_per_mtok=0.0,
        cache_write_per_mtok=0.0,
        output_per_mtok=0.0,
    ),
}


class PriceTable:
    """Looks up a model's price; an unknown model is priced with `fallback` and reported."""

    def __init__(self, prices: dict[str, ModelPrice], fallback: ModelPrice | None = None) -> None:
        self._prices = dict(prices)
        self._fallback = fallback or DEFAULT_PRICES["sim-strong"]

    def knows(self, model: str) -> bool:
        return model in self._prices

    def cost_usd(self, model: str, usage: Usage) -> float:
        return self._prices.get(model, self._fallback).cost_usd(usage)
