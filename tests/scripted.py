"""A scripted fake ModelPort: a queue of replies; running out or leaving replies unused fails."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field

from agents.messages import Message, ModelResponse, TextDelta, ToolCall, ToolSchema, Usage
from agents.ports import ModelResult
from agents.pricing import DEFAULT_PRICES, PriceTable
from agents.spec import TierSpec

PRICES = PriceTable(DEFAULT_PRICES)
MODEL = "sim-strong"


@dataclass
class Reply:
    """One scripted model turn: text streamed in `chunks` deltas, then the result."""

    text: str = ""
    tool_calls: tuple[ToolCall, ...] = ()
    usage: Usage = field(default_factory=lambda: Usage(input_tokens=100, output_tokens=20))
    chunks: int = 3

    def items(self) -> list[TextDelta | ModelResult]:
        size = max(1, -(-len(self.text) // self.chunks))
        deltas: list[TextDelta | ModelResult] = [
            TextDelta(text=self.text[i : i + size]) for i in range(0, len(self.text), size)
        ]
        response = ModelResponse(
            message=Message(role="assistant", content=self.text, tool_calls=self.tool_calls),
            usage=self.usage,
            model=MODEL,
            finish_reason="tool_calls" if self.tool_calls else "stop",
        )
        result = ModelResult(
            response=response,
            provider="sim-openai",
            cost_usd=PRICES.cost_usd(MODEL, self.usage),
            latency_ms=1.0,
        )
        return [*deltas, result]


class Hang:
    """A scripted turn that never answers (until cancelled)."""


Script = Reply | BaseException | Hang


class ScriptedModel:
    """A ModelPort answering from a queue. Running out, or leaving replies unused, fails."""

    def __init__(self, script: Sequence[Script]) -> None:
        self._script = list(script)
        self.requests: list[tuple[Message, ...]] = []
        self.tiers: list[TierSpec] = []
        self.offered: list[tuple[ToolSchema, ...]] = []
        self.ran_out = False
        self.hanging = asyncio.Event()

    async def stream(
        self,
        tier: TierSpec,
        messages: tuple[Message, ...],
        tools: tuple[ToolSchema, ...],
        *,
        timeout_s: float,
    ) -> AsyncIterator[TextDelta | ModelResult]:
        self.requests.append(messages)
        self.tiers.append(tier)
        self.offered.append(tools)
        if not self._script:
            self.ran_out = True
            raise AssertionError("scripted model ran out of replies")
        step = self._script.pop(0)
        if isinstance(step, BaseException):
            raise step
        if isinstance(step, Hang):
            self.hanging.set()
            await asyncio.Event().wait()
            return
        for item in step.items():
            yield item

    def check(self) -> None:
        assert not self.ran_out, "the loop asked for more replies than were scripted"
        assert not self._script, f"{len(self._script)} scripted replies left unused"
