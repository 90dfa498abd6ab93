"""Kill switches: what is switched off right now, and why. Set in the deploy config or by
an admin call; run hosts read them to stop running runs, refuse killed tools and skip
killed models."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Self

from pydantic import BaseModel, ConfigDict, Field, model_validator

KILL_PREFIX = "kill/"
"""Run-store settings holding kill switches: `kill/config` (the deploy config's) and
`kill/admin` (set by admin calls)."""
ROLLBACK_PREFIX = "rollback/"
"""Run-store settings holding canary rollbacks: `rollback/<agent>` (serve_app.delivery)."""


class KillSwitches(BaseModel):
    """Things switched off right now, each with the reason shown to callers."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    global_reason: str | None = Field(None, description="Set: every run is refused.")
    agents: dict[str, str] = Field(default_factory=dict, description="Agent -> reason.")
    versions: dict[str, str] = Field(default_factory=dict, description="'agent@version' -> reason.")
    tenants: dict[str, str] = Field(default_factory=dict, description="Tenant id -> reason.")
    tools: dict[str, str] = Field(default_factory=dict, description="Tool name -> reason.")
    models: dict[str, str] = Field(
        default_factory=dict, description="'provider/model' or bare model name -> reason."
    )

    @model_validator(mode="after")
    def _version_keys(self) -> Self:
        for key in self.versions:
            agent, at, version = key.partition("@")
            if not (agent and at and version):
                raise ValueError(f"kill.versions key {key!r} is not 'agent@version'")
        return self

    @classmethod
    def from_settings(cls, found: Mapping[str, str]) -> KillSwitches:
        """Every stored set of switches (the `kill/` settings), merged in key order."""
        merged = cls()
        for _, value in sorted(found.items()):
            merged = merged.merged(cls.model_validate_json(value))
        return merged

    def merged(self, other: KillSwitches) -> KillSwitches:
        """Both sets of switches (the config's and the admin's); `other` wins on a clash."""
        return KillSwitches(
            global_reason=other.global_reason or self.global_reason,
            agents={**self.agents, **other.agents},
            versions={**self.versions, **other.versions},
            tenants={**self.tenants, **other.tenants},
            tools={**self.tools, **other.tools},
            models={**self.models, **other.models},
        )

    def run_killed(self, agent: str, version: str, tenant: str) -> str | None:
        """Why a run of agent@version for tenant is refused, or None.

        Checked most specific first: the version, the agent, the tenant, then global; the
        first switch found is the one reported.
        """
        key = f"{agent}@{version}"
        if key in self.versions:
            return f"agent version {key!r} is switched off: {self.versions[key]}"
        if agent in self.agents:
            return f"agent {agent!r} is switched off: {self.agents[agent]}"
        if tenant in self.tenants:
            return f"tenant {tenant!r} is switched off: {self.tenants[tenant]}"
        if self.global_reason is not None:
            return f"service is switched off: {self.global_reason}"
        return None

    def tool_killed(self, name: str) -> str | None:
        """Why tool `name` may not be called, or None."""
        reason = self.tools.get(name)
        return None if reason is None else f"tool {name!r} is switched off: {reason}"

    def model_killed(self, model: str, provider: str | None = None) -> str | None:
        """Why a model may not be called, or None; 'provider/model' is checked before `model`."""
        for key in ([f"{provider}/{model}"] if provider is not None else []) + [model]:
            if key in self.models:
                return f"model {key!r} is switched off: {self.models[key]}"
        return None
