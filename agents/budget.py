"""A run's budget: steps, tokens, dollars and wall clock, checked before every step."""

from __future__ import annotations

import time
from collections.abc import Callable

from agents.errors import BudgetLimit
from agents.messages import Usage
from agents.spec import BudgetSpec

NEAR = 0.9
"""Spent fraction of a token or dollar budget at which a run wraps up."""


class RunBudget:
    """What a run has spent against its BudgetSpec. Time is injected for tests."""

    def __init__(
        self,
        spec: BudgetSpec,
        *,
        steps: int = 0,
        usage: Usage | None = None,
        cost_usd: float = 0.0,
        elapsed_s: float = 0.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.spec = spec
        self.steps = steps
        self.usage = usage or Usage()
        self.cost_usd = cost_usd
        self._clock = clock
        self._started = clock() - elapsed_s

    @property
    def elapsed_s(self) -> float:
        return self._clock() - self._started

    @property
    def remaining_s(self) -> float:
        return max(0.0, self.spec.run_timeout_s - self.elapsed_s)

    def call_timeout_s(self, own_timeout_s: float) -> float:
        """A call gets its own timeout or what is left of the run, whichever is smaller."""
        return min(own_timeout_s, self.remaining_s)

    def exceeded(self) -> tuple[BudgetLimit, float, float] | None:
        """The first limit that leaves no room for another step, as (limit, used, cap)."""
        spec = self.spec
        if self.steps >= spec.max_steps:
            return "steps", self.steps, spec.max_steps
        if self.usage.total_tokens >= spec.max_tokens:
            return "tokens", self.usage.total_tokens, spec.max_tokens
        if self.cost_usd >= spec.max_cost_usd:
            return "cost", self.cost_usd, spec.max_cost_usd
        if self.remaining_s <= 0:
            return "time", self.elapsed_s, spec.run_timeout_s
        return None

    def near_limit(self, reserve_s: float) -> tuple[BudgetLimit, float, float] | None:
        """A limit the next step would likely break: the step cap reached, 90% of the tokens
        or dollars spent, or no more than `reserve_s` of wall clock left."""
        spec = self.spec
        if self.steps >= spec.max_steps:
            return "steps", self.steps, spec.max_steps
        if self.usage.total_tokens >= NEAR * spec.max_tokens:
            return "tokens", self.usage.total_tokens, spec.max_tokens
        if self.cost_usd >= NEAR * spec.max_cost_usd:
            return "cost", self.cost_usd, spec.max_cost_usd
        if self.remaining_s <= reserve_s:
            return "time", self.elapsed_s, spec.run_timeout_s
        return None

    def record(self, usage: Usage, cost_usd: float) -> None:
        self.usage = self.usage + usage
        self.cost_usd += cost_usd
