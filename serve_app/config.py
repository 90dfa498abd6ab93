"""The deploy-config schema: what `serve deploy` passes to the app builder as `args`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from actors.mcp_sessions import discover_now
from actors.settings import RuntimeSettings
from agents.errors import ConfigError
from agents.examples import EXAMPLES_DIR, example_specs
from agents.spec import AgentSpec
from serve_app.tenancy import TenancyConfig
from serve_app.traffic import TrafficConfig


class AppConfig(BaseModel):
    """Arguments of the `rayfleet` Serve application."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    agents: tuple[str, ...] = Field(
        (),
        description="Agent spec YAML files, or 'example:<file>' for one shipped in "
        "agents/examples; empty means the built-in example agents.",
    )
    runtime: RuntimeSettings = Field(
        default_factory=RuntimeSettings, description="Providers, prices, run pooling."
    )
    tenancy: TenancyConfig = Field(
        default_factory=TenancyConfig,
        description="Tenants, keys, limits; the gateway's user_config (changeable live).",
    )
    traffic: TrafficConfig = Field(
        default_factory=TrafficConfig,
        description="Version weights, shadows, canary gates, kill switches (live).",
    )
    max_body_bytes: int = Field(1_048_576, gt=0, description="Largest request body accepted.")
    sse_ping_s: float = Field(15.0, gt=0, description="Keep-alive comment interval on SSE.")
    gateway_replicas: int = Field(1, ge=1, description="Gateway (ingress) replicas.")
    agent_replicas: int = Field(1, ge=1, description="Replicas per agent version.")

    @classmethod
    def from_args(cls, args: dict[str, Any]) -> AppConfig:
        try:
            return cls.model_validate(args)
        except ValidationError as exc:
            lines = [
                f"{'.'.join(str(p) for p in err['loc']) or '(top level)'}: {err['msg']}"
                for err in exc.errors(include_url=False)
            ]
            raise ConfigError("invalid rayfleet app config:\n" + "\n".join(lines)) from None

    def load_specs(self) -> list[AgentSpec]:
        # MCP servers' tools are listed here, once per deploy: a server that is down fails
        # the deploy with its URL named, and the specs that travel to run hosts are data.
        specs = [
            discover_now(AgentSpec.from_yaml(path), str(path))
            for path in map(_spec_path, self.agents)
        ] or example_specs()
        seen: set[str] = set()
        for spec in specs:
            if spec.key in seen:
                raise ConfigError(f"agent version {spec.key!r} is declared twice")
            seen.add(spec.key)
            for tier in spec.tiers.values():
                for ref in tier.chain:
                    if ref.provider not in self.runtime.providers:
                        known = ", ".join(sorted(self.runtime.providers))
                        raise ConfigError(
                            f"agent {spec.key!r} uses unknown provider {ref.provider!r} "
                            f"(known: {known})"
                        )
        return specs


def _spec_path(entry: str) -> Path:
    """A spec file: 'example:<file>' is one shipped with rayfleet (found wherever it is
    installed, so a deploy config need not know the cluster's paths)."""
    if entry.startswith("example:"):
        return EXAMPLES_DIR / entry.removeprefix("example:")
    return Path(entry)
