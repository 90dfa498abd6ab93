"""Provider health for operators: each circuit breaker's state over the run hosts.

Breakers live in each run host's process (actors/breaker.py), so one provider can be open on
one host and closed on another. The report counts hosts per state and names the worst.
"""

from __future__ import annotations

from collections.abc import Mapping

from pydantic import BaseModel, ConfigDict, Field

from actors.breaker import BreakerState

_WORST_FIRST: tuple[BreakerState, ...] = ("open", "half_open", "closed")


class BreakerHealth(BaseModel):
    """One breaker (a provider, or a provider with one tenant's own key) over the hosts."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    breaker: str = Field(
        description="The provider's name, or `provider#digest` for a tenant's own key."
    )
    provider: str
    state: BreakerState = Field(description="The worst state on any host.")
    hosts: dict[BreakerState, int] = Field(description="How many hosts hold it in each state.")


class ProviderHealth(BaseModel):
    """Every breaker some run host has used, and how many hosts answered."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    providers: list[BreakerHealth]
    hosts: int = Field(description="Run hosts that reported their breakers.")


def provider_health(by_host: Mapping[str, Mapping[str, BreakerState]]) -> ProviderHealth:
    """The report from each host's breaker states (host id -> breaker -> state)."""
    counts: dict[str, dict[BreakerState, int]] = {}
    for states in by_host.values():
        for breaker, state in states.items():
            tally = counts.setdefault(breaker, {"closed": 0, "half_open": 0, "open": 0})
            tally[state] += 1
    providers = [
        BreakerHealth(
            breaker=breaker,
            provider=breaker.split("#", 1)[0],
            state=next(s for s in _WORST_FIRST if tally[s]),
            hosts=tally,
        )
        for breaker, tally in sorted(counts.items())
    ]
    return ProviderHealth(providers=providers, hosts=len(by_host))
