"""The model router: a tier's fallback chain -> provider clients, with retries, breakers and
cost per call.

Runs in-process inside each run host (a hop to a shared router actor costs ~2 ms per step,
see DESIGN.md); every run in the process shares its pooled HTTP client and its circuit
breakers (so breaker state is per process, see actors/breaker.py).

The router is the only retry loop: provider clients never retry. For one call it walks the
tier's chain in order; for each provider:

- skip it while its breaker is open (no request is sent);
- ProviderRejected (a 4xx other than 408/409/429) propagates at once: no retry, no fallback;
- ProviderUnavailable (408/409/429/5xx, timeouts, connection errors, dropped streams, in-band
  stream errors) is retried on the same provider up to `attempts_per_provider` times, after
  a Retry-After no longer than `retry_after_cap_s` (waited once) or an exponential backoff
  with jitter; a longer Retry-After, or a timed-out attempt, falls back at once;
- every call has one deadline (`timeout_s`) covering attempts, waits and fallbacks.

If an attempt fails after it streamed text, the router yields `Discard` and the turn is
redone from scratch on the next attempt: nothing of a half-streamed answer (text or tool
call arguments) is continued by another model.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Mapping
from contextlib import aclosing
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

import httpx2
from pydantic import BaseModel, ConfigDict, Field, model_validator
from tenacity import AsyncRetrying, RetryCallState, wait_exponential_jitter

from actors.breaker import Breakers, Permit
from actors.metrics import attempt_ended, breaker_changed
from actors.providers.anthropic import AnthropicClient
from actors.providers.openai import OpenAIClient
from agents import spans
from agents.errors import AllProvidersFailed, ConfigError, ProviderRejected, ProviderUnavailable
from agents.messages import Message, ModelRequest, StreamItem, TextDelta, ToolSchema, Usage
from agents.ports import Discard, ModelResult
from agents.pricing import PriceTable
from agents.spec import ModelRef, TierSpec
from agents.tokens import estimate_tokens, message_tokens

if TYPE_CHECKING:  # at run time settings.py may import this module (RouterSettings)
    from actors.settings import ProviderConfig

Sleep = Callable[[float], Awaitable[None]]

# An attempt that ends this close to its time limit is counted as timed out.
_TIMEOUT_SLACK_S = 0.01


class RouterSettings(BaseModel):
    """Retries, Retry-After, backoff and circuit breakers of the model router."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    retry_after_cap_s: float = Field(
        2.0, ge=0, description="Wait out a Retry-After up to this long, then retry; else fall back."
    )
    attempts_per_provider: int = Field(
        2, ge=1, le=10, description="Attempts on one provider per call (1 = never retry it)."
    )
    max_attempts_per_call: int = Field(
        6, ge=1, le=50, description="Attempts per call across the whole chain."
    )
    breaker_failures: int = Field(
        5, ge=1, description="Consecutive failures that open a provider's circuit breaker."
    )
    breaker_open_s: float = Field(
        30.0, gt=0, description="How long an open breaker skips its provider before a probe."
    )
    backoff_initial_s: float = Field(
        0.2, ge=0, description="First backoff before a same-provider retry (plus as much jitter)."
    )
    backoff_max_s: float = Field(5.0, ge=0, description="Longest backoff between attempts.")

    @model_validator(mode="after")
    def _backoff_order(self) -> RouterSettings:
        if self.backoff_max_s < self.backoff_initial_s:
            raise ValueError(
                f"backoff_max_s ({self.backoff_max_s}) must be >= backoff_initial_s "
                f"({self.backoff_initial_s})"
            )
        return self


class ProviderClient(Protocol):
    def stream(
        self, request: ModelRequest, *, timeout_s: float, api_key: str | None = None
    ) -> AsyncIterator[StreamItem]: ...


def build_client(name: str, config: ProviderConfig, http: httpx2.AsyncClient) -> ProviderClient:
    """A client for one provider; its key is read from the environment here, in the actor."""
    api_key = os.environ.get(config.api_key_env) if config.api_key_env else None
    if config.kind == "openai":
        return OpenAIClient(name, config.base_url, api_key, http)
    return AnthropicClient(name, config.base_url, api_key, http)


@dataclass
class _Call:
    """What one router call has been through so far."""

    deadline: float
    tried: list[str] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    attempts: int = 0
    last_provider: str = ""
    out_of_time: bool = False
    credentials: Credentials | None = None

    def key_for(self, provider: str) -> str | None:
        return None if self.credentials is None else self.credentials.keys.get(provider)

    def breaker_for(self, provider: str) -> str:
        """Breakers are per provider and credential: one tenant's exhausted key must not
        make every tenant skip the provider. Named by a digest, never by the key."""
        key = self.key_for(provider)
        if key is None:
            return provider
        return f"{provider}#{hashlib.sha256(key.encode()).hexdigest()[:12]}"


@dataclass(frozen=True)
class Credentials:
    """A tenant's own provider keys for one run, resolved inside the run host."""

    keys: Mapping[str, str]
    allow_default: bool = True
    """Whether a provider without a key here may use the deployment's default key."""


class _Attempt:
    """How one attempt ended, for the retry decision."""

    def __init__(self, error: ProviderUnavailable, timed_out: bool) -> None:
        self.error = error
        self.timed_out = timed_out


class ModelRouter:
    """Streams a turn from the first provider in the tier's chain that answers.

    Yields TextDelta items, Discard when an attempt fails after streaming, then exactly one
    ModelResult naming the provider that answered, the failed attempts (`tried`, one
    "provider/model" per failure) and the latency of the attempt that answered.
    Raises ProviderRejected at once for a rejected request, AllProvidersFailed when the
    chain is exhausted, the attempts are used up or the deadline passes.
    """

    def __init__(
        self,
        providers: Mapping[str, ProviderConfig],
        prices: PriceTable,
        http: httpx2.AsyncClient,
        clock: Callable[[], float] = time.monotonic,
        *,
        settings: RouterSettings | None = None,
        breakers: Breakers | None = None,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        self._clients = {name: build_client(name, cfg, http) for name, cfg in providers.items()}
        # A span's gen_ai.provider.name is the wire format the provider speaks (openai or
        # anthropic: all the router knows for sure of who serves it); rayfleet.provider is the
        # configured name, as in events and metrics.
        self._kinds = {name: cfg.kind for name, cfg in providers.items()}
        self._prices = prices
        self._clock = clock
        self._sleep = sleep
        self.settings = settings or RouterSettings()
        self.breakers = breakers or Breakers(
            failure_threshold=self.settings.breaker_failures,
            open_s=self.settings.breaker_open_s,
            clock=clock,
            on_change=breaker_changed,
        )
        # tenacity's strategy computes the backoff; the loop below owns the attempts because
        # it yields streamed items between them.
        self._retrying = AsyncRetrying(
            sleep=sleep,
            wait=wait_exponential_jitter(
                multiplier=self.settings.backoff_initial_s,
                max=self.settings.backoff_max_s,
                jitter=self.settings.backoff_initial_s,
            ),
            reraise=True,
        )

    def _client(self, provider: str) -> ProviderClient:
        client = self._clients.get(provider)
        if client is None:
            known = ", ".join(sorted(self._clients))
            raise ConfigError(f"unknown provider {provider!r} (known: {known})")
        return client

    def _backoff_s(self, attempt_number: int) -> float:
        state = RetryCallState(self._retrying, None, (), {})
        state.attempt_number = attempt_number
        return float(self._retrying.wait(state))

    def _first_item_s(self, call: _Call, chain: tuple[ModelRef, ...], index: int) -> float:
        """Time the attempt gets to produce its first item: a fair share of what is left
        among the providers still to try (open breakers excluded), so a hanging provider
        leaves time for the fallbacks. Once it streams, it may use all that is left."""
        later = sum(
            1
            for ref in chain[index + 1 :]
            if self.breakers[call.breaker_for(ref.provider)].state != "open"
        )
        return (call.deadline - self._clock()) / (1 + later)

    async def stream(
        self,
        tier: TierSpec,
        messages: tuple[Message, ...],
        tools: tuple[ToolSchema, ...],
        *,
        timeout_s: float,
        credentials: Credentials | None = None,
    ) -> AsyncIterator[TextDelta | Discard | ModelResult]:
        for ref in tier.chain:
            self._client(ref.provider)  # an unknown provider is a config error, up front
        parent = spans.current_context()  # the caller's (its step): attempts' spans go under it
        call = _Call(deadline=self._clock() + timeout_s, credentials=credentials)
        for index, ref in enumerate(tier.chain):
            if credentials is not None and not credentials.allow_default:
                if call.key_for(ref.provider) is None:
                    call.failures.append(f"{ref.provider}: no credentials for this tenant")
                    continue
            request = ModelRequest(
                model=ref.model,
                messages=messages,
                tools=tools,
                max_output_tokens=tier.max_output_tokens,
                temperature=tier.temperature,
            )
            waited_retry_after = False
            for number in range(1, self.settings.attempts_per_provider + 1):
                if call.attempts >= self.settings.max_attempts_per_call:
                    break
                if call.deadline - self._clock() <= 0:
                    call.out_of_time = True
                    break
                permit = self.breakers[call.breaker_for(ref.provider)].acquire()
                if permit is None:
                    if number == 1:
                        call.skipped.append(call.breaker_for(ref.provider))
                    break
                call.attempts += 1
                outcome: _Attempt | ModelResult | None = None
                kind = self._kinds[ref.provider]
                span = spans.start_chat(
                    parent, kind, ref.provider, ref.model, call.attempts, index > 0
                )
                attempt = self._attempt(ref, request, permit, call, tier.chain, index)
                try:
                    async with aclosing(attempt):
                        async for item in attempt:
                            if isinstance(item, _Attempt | ModelResult):
                                outcome = item
                            else:
                                if isinstance(item, Discard) and span.is_recording():
                                    span.set_attribute("rayfleet.discarded", True)
                                yield item
                except BaseException as exc:  # rejected, cancelled, or the caller stopped
                    spans.fail(span, exc)
                    span.end()
                    raise
                if isinstance(outcome, ModelResult):
                    spans.chat_result(span, outcome)
                    yield outcome
                    return
                assert outcome is not None
                spans.fail(span, outcome.error, outcome.timed_out)
                span.end()
                wait_s = self._next_wait_s(outcome, number, waited_retry_after)
                if wait_s is None:
                    break
                if wait_s >= call.deadline - self._clock():
                    break  # no time to wait and retry here: fall back
                waited_retry_after = waited_retry_after or outcome.error.retry_after_s is not None
                await self._sleep(wait_s)
        raise self._exhausted(call, tier)

    async def _attempt(
        self,
        ref: ModelRef,
        request: ModelRequest,
        permit: Permit,
        call: _Call,
        chain: tuple[ModelRef, ...],
        index: int,
    ) -> AsyncGenerator[TextDelta | Discard | ModelResult | _Attempt, None]:
        """One request to one provider: its deltas, then a ModelResult or an _Attempt."""
        breaker = self.breakers[call.breaker_for(ref.provider)]
        first_item_s = self._first_item_s(call, chain, index)
        started = self._clock()
        items = self._client(ref.provider).stream(
            request, timeout_s=max(0.0, call.deadline - started), api_key=call.key_for(ref.provider)
        )
        streamed: list[str] = []
        try:
            while True:
                try:
                    if streamed:
                        item = await anext(items)
                    else:
                        async with asyncio.timeout(first_item_s):
                            item = await anext(items)
                except StopAsyncIteration:
                    raise ProviderUnavailable(
                        f"{ref.provider}: stream ended without a reply", ref.provider
                    ) from None
                except TimeoutError:
                    raise ProviderUnavailable(
                        f"{ref.provider}: no answer within {first_item_s:.3g} s "
                        "(its share of the call's deadline)",
                        ref.provider,
                    ) from None
                if isinstance(item, TextDelta):
                    streamed.append(item.text)
                    yield item
                    continue
                breaker.succeeded(permit)
                attempt_ended(ref.provider, "ok", self._clock() - started)
                estimated = item.usage == Usage()  # no usage reported: estimate, and say so
                if estimated:
                    item = item.model_copy(update={"usage": _estimate(request, item.message)})
                yield ModelResult(
                    response=item,
                    provider=ref.provider,
                    cost_usd=self._prices.cost_usd(item.model, item.usage),
                    latency_ms=(self._clock() - started) * 1000,
                    tried=tuple(call.tried),
                    usage_estimated=estimated,
                )
                return
        except ProviderRejected:
            breaker.succeeded(permit)  # it answered: the provider is up, the request is bad
            attempt_ended(ref.provider, "rejected", self._clock() - started)
            raise
        except ProviderUnavailable as exc:
            elapsed = self._clock() - started
            timed_out = elapsed >= min(first_item_s, call.deadline - started) - _TIMEOUT_SLACK_S
            retry_after = exc.retry_after_s
            too_long = retry_after is not None and retry_after > self.settings.retry_after_cap_s
            breaker.failed(permit, open_for_s=retry_after if too_long else None)
            status = "timeout" if timed_out and not streamed else _status(exc)
            attempt_ended(ref.provider, status, elapsed)
            call.tried.append(f"{ref.provider}/{ref.model}")
            call.failures.append(f"{ref.provider}/{ref.model}: {exc}")
            call.last_provider = ref.provider
            if streamed:
                # The provider bills what it generated: book an estimate with the discard.
                cut = Message(role="assistant", content="".join(streamed))
                spent = self._prices.cost_usd(ref.model, _estimate(request, cut))
                yield Discard(reason=str(exc), provider=ref.provider, cost_usd=spent)
            yield _Attempt(exc, timed_out and not streamed)
        except BaseException:
            breaker.released(permit)  # cancelled, or unusable output: no verdict on health
            raise
        finally:
            await _aclose(items)

    def _next_wait_s(
        self, attempt: _Attempt, number: int, waited_retry_after: bool
    ) -> float | None:
        """Seconds to wait before retrying the same provider, or None: fall back now."""
        if attempt.timed_out or number >= self.settings.attempts_per_provider:
            return None
        retry_after = attempt.error.retry_after_s
        if retry_after is None:
            return self._backoff_s(number)
        if retry_after > self.settings.retry_after_cap_s or waited_retry_after:
            return None
        return retry_after

    def _exhausted(self, call: _Call, tier: TierSpec) -> AllProvidersFailed:
        chain = ", ".join(f"{r.provider}/{r.model}" for r in tier.chain)
        skipped = ", ".join(
            f"{p} ({self.breakers[p].open_for_s():.1f} s left)" for p in call.skipped
        )
        if not call.attempts and len(call.skipped) == len(tier.chain):
            return AllProvidersFailed(
                f"every provider in the chain ({chain}) was skipped: circuit breaker open "
                f"for {skipped}",
                call.skipped[-1],
            )
        if call.attempts >= self.settings.max_attempts_per_call:
            why = f"the {self.settings.max_attempts_per_call} attempts per call are used up"
        elif call.out_of_time or self._clock() >= call.deadline - _TIMEOUT_SLACK_S:
            why = "the call's deadline passed"
        else:
            why = "every provider in the chain failed"
        message = f"no provider answered on the chain ({chain}): {why}"
        if call.failures:
            message += f"; {call.attempts} failed attempts: {'; '.join(call.failures)}"
        if skipped:
            message += f"; skipped, circuit breaker open: {skipped}"
        return AllProvidersFailed(message, call.last_provider)


def _status(error: ProviderUnavailable) -> str:
    """An unavailable attempt's metric status: its HTTP status, else "unavailable"."""
    return "unavailable" if error.status_code is None else str(error.status_code)


def _estimate(request: ModelRequest, reply: Message) -> Usage:
    """Usage by the documented estimate (agents.tokens), for a reply without a usage report."""
    return Usage(
        input_tokens=estimate_tokens(request.messages, request.tools),
        output_tokens=message_tokens(reply),
    )


async def _aclose(items: AsyncIterator[StreamItem]) -> None:
    if isinstance(items, AsyncGenerator):
        await items.aclose()
