"""Provider clients: one module per wire format (OpenAI chat completions, Anthropic messages).

Each client streams over a shared `httpx2.AsyncClient`, yields TextDelta items then one
ModelResponse, and raises only ProviderUnavailable / ProviderRejected (and
ModelOutputUnusable for tool arguments that are not JSON). Clients never retry.
"""

from __future__ import annotations

from actors.providers.anthropic import AnthropicClient
from actors.providers.openai import OpenAIClient

__all__ = ["AnthropicClient", "OpenAIClient"]
