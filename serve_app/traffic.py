"""Traffic between agent versions: weights, stickiness, shadows, canary gates, kill switches.

Declared in the gateway's `user_config` (validated by `TrafficConfig`, changed live) and
evaluated per request by `TrafficRouter`. Pure Python: no Ray, no I/O, no clock; the canary
verdict (`judge_canary`) takes the stats as arguments, so whoever collects them owns the
time window.

Routing is a pure function of the config and the request: a point in [0, 1) from a blake2b
hash (stable across processes and releases, unlike `hash()`), laid on the cumulative weights
of the agent's versions in sorted-name order. With two versions (the canary case) a weight
change moves exactly the share that changed, and only toward the version that grew; with
three or more, only the boundaries that moved shift, which can move a little more than the
minimum when a middle version's neighbours change in opposite directions.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Annotated, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, model_validator

from actors.switches import KillSwitches
from agents.errors import UnknownAgent

__all__ = [
    "AgentTraffic",
    "CanaryGate",
    "Choice",
    "KillSwitches",
    "ShadowRule",
    "TrafficConfig",
    "TrafficRouter",
    "VersionStats",
    "judge_canary",
]

Weight = Annotated[float, Field(ge=0.0, allow_inf_nan=False)]


class _Config(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class CanaryGate(_Config):
    """When a canary counts as worse than the stable version (and is rolled back)."""

    min_runs: int = Field(50, ge=1, description="Finished runs needed on each side to judge.")
    window_s: float = Field(3600.0, gt=0, description="Look-back of the stats that are judged.")
    max_error_rate_ratio: float = Field(
        1.5, gt=0, description="Canary error rate may be at most this times the stable's ..."
    )
    error_rate_slack: float = Field(
        0.02, ge=0, le=1, description="... plus this absolute share (0.02 = 2 points)."
    )
    max_cost_per_success_ratio: float = Field(
        1.5, gt=0, description="Canary cost per successful run may be at most this times stable's."
    )
    max_p95_run_s_ratio: float = Field(
        2.0, gt=0, description="Canary p95 run duration may be at most this times stable's."
    )


class ShadowRule(_Config):
    """Mirror a share of an agent's runs to another version; its output is not returned."""

    version: str = Field(description="The version that receives the mirrored runs.")
    sample: float = Field(ge=0.0, le=1.0, description="Share of matching runs mirrored (0..1).")
    primary: str | None = Field(
        None, description="Mirror only runs served by this version; null: runs of any version."
    )


class AgentTraffic(_Config):
    """How one agent's traffic is split between its versions."""

    weights: dict[str, Weight] = Field(
        min_length=1, description="Version -> relative weight (>= 0; at least one > 0)."
    )
    stable: str | None = Field(
        None, description="Baseline a canary is judged against; null: highest-weight non-canary."
    )
    canary: str | None = Field(None, description="The version under the canary gate, if any.")
    gate: CanaryGate = Field(default_factory=CanaryGate, description="The canary's thresholds.")
    shadows: tuple[ShadowRule, ...] = Field((), description="Mirrored-traffic rules.")
    sticky: bool = Field(True, description="Keep a (tenant, thread) on one version.")

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        if not any(w > 0 for w in self.weights.values()):
            raise ValueError(f"weights need at least one version above 0: {self.weights}")
        known = ", ".join(sorted(self.weights))
        if self.canary is not None and self.canary not in self.weights:
            raise ValueError(f"canary {self.canary!r} has no weight (weights: {known})")
        if self.stable is not None and self.stable not in self.weights:
            raise ValueError(f"stable {self.stable!r} has no weight (weights: {known})")
        if self.canary is not None and self.stable_version == self.canary:
            raise ValueError(f"version {self.canary!r} cannot be both stable and canary")
        for rule in self.shadows:
            if rule.primary == rule.version:
                raise ValueError(f"shadow of {rule.version!r} onto itself")
        return self

    @property
    def stable_version(self) -> str:
        """`stable`, or the highest-weight version other than the canary (ties: last name)."""
        if self.stable is not None:
            return self.stable
        candidates = [v for v in self.weights if v != self.canary] or list(self.weights)
        return max(candidates, key=lambda v: (self.weights[v], v))

    def referenced_versions(self) -> list[tuple[str, str]]:
        """(where, version) for every version this entry names, for `check_against`."""
        refs = [("weights", v) for v in self.weights]
        refs += [("stable", v) for v in [self.stable] if v is not None]
        refs += [("canary", v) for v in [self.canary] if v is not None]
        for i, rule in enumerate(self.shadows):
            refs.append((f"shadows[{i}].version", rule.version))
            if rule.primary is not None:
                refs.append((f"shadows[{i}].primary", rule.primary))
        return refs


class TrafficConfig(_Config):
    """The traffic part of the gateway's user_config."""

    agents: dict[str, AgentTraffic] = Field(
        default_factory=dict, description="Agent -> its split; absent: the last declared version."
    )
    kill: KillSwitches = Field(default_factory=KillSwitches, description="Kill switches.")

    def check_against(self, versions_by_agent: Mapping[str, Sequence[str]]) -> None:
        """Raise ValueError if an agent or version named here is not deployed."""
        agents = ", ".join(sorted(versions_by_agent))
        for agent, traffic in self.agents.items():
            if agent not in versions_by_agent:
                raise ValueError(f"traffic for unknown agent {agent!r} (known: {agents})")
            deployed = versions_by_agent[agent]
            for where, version in traffic.referenced_versions():
                if version not in deployed:
                    raise ValueError(
                        f"unknown version {version!r} in traffic.agents.{agent}.{where} "
                        f"(deployed: {', '.join(deployed)})"
                    )
        for agent in self.kill.agents:
            if agent not in versions_by_agent:
                raise ValueError(f"kill.agents names unknown agent {agent!r} (known: {agents})")
        for key in self.kill.versions:
            agent, _, version = key.partition("@")
            if version not in versions_by_agent.get(agent, ()):
                raise ValueError(f"kill.versions names unknown agent version {key!r}")


@dataclass(frozen=True, slots=True)
class Choice:
    """Where one run goes."""

    version: str
    assignment: Literal["stable", "canary"]  # "canary" iff `version` is the agent's canary
    shadows: tuple[str, ...] = ()  # versions this run is mirrored to


@dataclass(frozen=True, slots=True)
class VersionStats:
    """One version's finished runs over the gate's window."""

    runs: int
    failures: int
    successes: int
    cost_usd: float  # total over `runs`
    p95_run_s: float | None = None

    def __post_init__(self) -> None:
        if min(self.runs, self.failures, self.successes) < 0 or self.cost_usd < 0:
            raise ValueError(f"negative stats: {self}")
        if self.failures + self.successes > self.runs:
            raise ValueError(f"failures + successes exceed runs: {self}")

    @property
    def error_rate(self) -> float:
        return self.failures / self.runs if self.runs else 0.0

    @property
    def cost_per_success_usd(self) -> float:
        if self.successes:
            return self.cost_usd / self.successes
        return math.inf if self.runs else 0.0


def judge_canary(gate: CanaryGate, stable: VersionStats, canary: VersionStats) -> list[str]:
    """Why the canary is worse than stable; empty if healthy or too few runs to tell."""
    if stable.runs < gate.min_runs or canary.runs < gate.min_runs:
        return []
    breaches: list[str] = []
    allowed = stable.error_rate * gate.max_error_rate_ratio + gate.error_rate_slack
    if canary.error_rate > allowed:
        breaches.append(
            f"error rate {canary.error_rate:.1%} > {allowed:.1%} "
            f"(stable {stable.error_rate:.1%} x {gate.max_error_rate_ratio:g} "
            f"+ {gate.error_rate_slack:.1%})"
        )
    allowed = stable.cost_per_success_usd * gate.max_cost_per_success_ratio
    if canary.cost_per_success_usd > allowed:
        breaches.append(
            f"cost per success ${canary.cost_per_success_usd:.4f} > ${allowed:.4f} "
            f"(stable ${stable.cost_per_success_usd:.4f} x {gate.max_cost_per_success_ratio:g})"
        )
    if stable.p95_run_s is not None and canary.p95_run_s is not None:
        allowed = stable.p95_run_s * gate.max_p95_run_s_ratio
        if canary.p95_run_s > allowed:
            breaches.append(
                f"p95 run time {canary.p95_run_s:.2f}s > {allowed:.2f}s "
                f"(stable {stable.p95_run_s:.2f}s x {gate.max_p95_run_s_ratio:g})"
            )
    return breaches


def _unit(*parts: str) -> float:
    """A point in [0, 1) from `parts`: the same in every process, release and machine."""
    h = hashlib.blake2b(digest_size=8, person=b"rayfleet-traffic")
    for part in parts:
        data = part.encode()
        h.update(len(data).to_bytes(4, "big"))  # length-prefixed: ("ab","c") != ("a","bc")
        h.update(data)
    # 53 bits: exactly representable, so the result is never rounded up to 1.0.
    return (int.from_bytes(h.digest(), "big") >> 11) / float(1 << 53)


class TrafficRouter:
    """Evaluates a `TrafficConfig` per request. Immutable: build a new one on reconfigure."""

    def __init__(
        self, config: TrafficConfig, versions_by_agent: Mapping[str, Sequence[str]]
    ) -> None:
        config.check_against(versions_by_agent)
        self.config = config
        self._versions = {agent: tuple(vs) for agent, vs in versions_by_agent.items()}
        # Cumulative upper bounds in sorted-name order; weight-0 versions are left out.
        self._bounds: dict[str, tuple[tuple[float, str], ...]] = {}
        for agent, traffic in config.agents.items():
            total = sum(traffic.weights.values())
            acc, bounds = 0.0, []
            for version in sorted(traffic.weights):
                if traffic.weights[version] > 0:
                    acc += traffic.weights[version]
                    bounds.append((acc / total, version))
            self._bounds[agent] = tuple(bounds)

    def choose(self, agent: str, tenant: str, thread_id: str | None, run_key: str) -> Choice:
        """The version for this run, whether it is the canary, and where to mirror it.

        Sticky agents hash (agent, tenant, thread_id), so a thread stays on its version
        while the weights hold; without a thread (or not sticky) `run_key` is hashed.
        Shadows to versions under a kill switch are dropped.
        """
        versions = self._versions.get(agent)
        if not versions:
            known = ", ".join(sorted(self._versions))
            raise UnknownAgent(f"unknown agent {agent!r} (known: {known})", agent)
        traffic = self.config.agents.get(agent)
        if traffic is None:
            return Choice(version=versions[-1], assignment="stable")
        if traffic.sticky and thread_id is not None:
            point = _unit("route", agent, tenant, thread_id)
        else:
            point = _unit("route-run", agent, run_key)
        bounds = self._bounds[agent]
        # The last bound may fall short of 1.0 by rounding; it takes whatever is left.
        version = next((v for bound, v in bounds if point < bound), bounds[-1][1])
        shadows: list[str] = []
        for rule in traffic.shadows:
            if rule.version == version or rule.version in shadows:
                continue
            if rule.primary is not None and rule.primary != version:
                continue
            if _unit("shadow", agent, rule.version, run_key) >= rule.sample:
                continue
            if self.killed(agent, rule.version, tenant) is None:
                shadows.append(rule.version)
        return Choice(
            version=version,
            assignment="canary" if version == traffic.canary else "stable",
            shadows=tuple(shadows),
        )

    def killed(self, agent: str, version: str, tenant: str) -> str | None:
        """Why a run of agent@version for tenant is refused, or None (see KillSwitches)."""
        return self.config.kill.run_killed(agent, version, tenant)

    def tool_killed(self, name: str) -> str | None:
        return self.config.kill.tool_killed(name)

    def model_killed(self, model: str, provider: str | None = None) -> str | None:
        return self.config.kill.model_killed(model, provider)

    def with_weights(self, agent: str, weights: Mapping[str, float]) -> TrafficConfig:
        """A copy of the config with `agent`'s weights replaced (rollback: canary -> 0).

        A defaulted `stable` is pinned to the current stable version when it keeps a
        weight, so moving weights never silently changes the canary's baseline.
        """
        current = self.config.agents.get(agent)
        entry: dict[str, object] = {"weights": dict(weights)}
        if current is not None:
            entry = current.model_dump() | entry
            if current.stable is None and current.stable_version in weights:
                entry["stable"] = current.stable_version
        data = self.config.model_dump()
        data["agents"] = {**data["agents"], agent: entry}
        config = TrafficConfig.model_validate(data)
        config.check_against(self._versions)
        return config
