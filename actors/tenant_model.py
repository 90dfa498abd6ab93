"""A run's model port: the shared router, plus the run's tenant — its own provider keys,
and its token and dollar limits reserved before each call and settled after."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Protocol

from actors.credentials import TenantContext
from actors.limiter import Admission
from actors.metrics import limiter_refused
from actors.router import Credentials, ModelRouter
from actors.switches import KillSwitches
from agents import spans
from agents.errors import Killed, TenantLimited
from agents.messages import Message, TextDelta, ToolSchema, Usage
from agents.ports import Discard, ModelResult
from agents.pricing import PriceTable
from agents.spec import TierSpec
from agents.tokens import estimate_tokens


class LimiterPort(Protocol):
    """What a run host needs of the tenant limiter (actors.limiter, or its actor)."""

    async def reserve(self, tenant: str, tokens: int, cost_usd: float) -> Admission: ...

    async def settle(self, reservation: str, tokens: int, cost_usd: float) -> None: ...

    async def release_run(self, lease: str) -> None: ...

    async def renew_runs(self, leases: list[str]) -> list[str]: ...


class TenantModel:
    """ModelPort for one run of one tenant."""

    def __init__(
        self,
        router: ModelRouter,
        context: TenantContext,
        prices: PriceTable,
        limiter: LimiterPort | None,
        switches: Callable[[], KillSwitches] | None = None,
    ) -> None:
        self._router = router
        self._context = context
        self._prices = prices
        self._limiter = limiter if context.metered else None
        self._credentials: Credentials | None = None
        self._switches = switches

    def _resolve(self) -> Credentials | None:
        context = self._context
        if not context.credentials and context.use_default_credentials:
            return None
        if self._credentials is None:
            # 'mcp:<server>' tokens are read where an MCP session opens (actors.mcp_tenant).
            keys = {
                name: ref.resolve()
                for name, ref in context.credentials.items()
                if not name.startswith("mcp:")
            }
            self._credentials = Credentials(keys, allow_default=context.use_default_credentials)
        return self._credentials

    def unkilled(self, tier: TierSpec) -> TierSpec:
        """The tier without the models a kill switch covers; none left ends the run."""
        if self._switches is None:
            return tier
        switches = self._switches()
        reasons = [switches.model_killed(ref.model, ref.provider) for ref in tier.chain]
        if not any(reasons):
            return tier
        chain = tuple(ref for ref, reason in zip(tier.chain, reasons, strict=True) if not reason)
        if not chain:
            raise Killed(next(r for r in reasons if r))
        return tier.model_copy(update={"chain": chain})

    async def stream(
        self,
        tier: TierSpec,
        messages: tuple[Message, ...],
        tools: tuple[ToolSchema, ...],
        *,
        timeout_s: float,
    ) -> AsyncIterator[TextDelta | Discard | ModelResult]:
        tier = self.unkilled(tier)
        credentials = self._resolve()
        if self._limiter is None:
            async for item in self._router.stream(
                tier, messages, tools, timeout_s=timeout_s, credentials=credentials
            ):
                yield item
            return
        # Reserve the worst case of the first model in the chain, settle to what it cost.
        tokens = estimate_tokens(messages, tools)
        worst = Usage(input_tokens=tokens, output_tokens=tier.max_output_tokens)
        estimate = self._prices.cost_usd(tier.chain[0].model, worst)
        span = spans.start_reserve(spans.current_context(), self._context.tenant)
        try:
            admission = await self._limiter.reserve(
                self._context.tenant, worst.total_tokens, estimate
            )
        except BaseException as exc:
            spans.fail(span, exc)
            span.end()
            raise
        spans.reserved(span, None if admission.ok else admission.limit or "unknown")
        if not admission.ok or admission.reservation is None:
            limiter_refused(self._context.tenant, admission.limit)
            raise TenantLimited(
                f"tenant {self._context.tenant!r} reached its {admission.limit} limit",
                admission.retry_after_s,
            )
        used, cost = 0, 0.0
        try:
            async for item in self._router.stream(
                tier, messages, tools, timeout_s=timeout_s, credentials=credentials
            ):
                if isinstance(item, ModelResult):
                    used, cost = item.response.usage.total_tokens, item.cost_usd
                yield item
        finally:
            await self._limiter.settle(admission.reservation, used, cost)
