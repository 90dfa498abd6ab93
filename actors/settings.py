"""Settings every run host needs: providers, prices, pooling and streaming knobs.

Embedded in the deploy config (serve_app.config) and passed to actors as one frozen model.
"""

from __future__ import annotations

from typing import Literal
from urllib.parse import parse_qsl, urlsplit

from pydantic import BaseModel, ConfigDict, Field, field_validator

from actors.caches import CacheSettings
from actors.embeddings import EmbeddingSettings
from actors.router import RouterSettings
from actors.state import STATE_URL_ENV, describe
from actors.tool_pool import ToolRetrySettings
from agents.errors import ConfigError
from agents.pricing import DEFAULT_PRICES, ModelPrice


class ProviderConfig(BaseModel):
    """One model provider endpoint. The key is referenced by name, never written here."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    kind: Literal["openai", "anthropic"] = Field(description="Wire format spoken.")
    base_url: str = Field(description="e.g. https://api.openai.com/v1 or the simulator's URL.")
    api_key_env: str | None = Field(
        None, description="Environment variable holding the key, read inside the actor."
    )


def simulator_providers(base_url: str) -> dict[str, ProviderConfig]:
    """The embedded default: both wire formats served by the provider simulator."""
    root = base_url.rstrip("/")
    return {
        "sim-openai": ProviderConfig(kind="openai", base_url=f"{root}/v1"),
        "sim-anthropic": ProviderConfig(kind="anthropic", base_url=root),
    }


class RuntimeSettings(BaseModel):
    """What the run hosts and their router need, validated once at deploy time."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    providers: dict[str, ProviderConfig] = Field(
        default_factory=lambda: simulator_providers("http://127.0.0.1:8000/sim"),
        description="Provider name -> endpoint.",
    )
    prices: dict[str, ModelPrice] = Field(
        default_factory=lambda: dict(DEFAULT_PRICES), description="Model -> price per 1M tokens."
    )
    runs_per_actor: int = Field(
        2000,
        ge=1,
        le=20_000,
        description="Runs packed into one run-host actor; 1 gives every run its own process.",
    )
    warm_run_hosts: int = Field(
        1, ge=0, le=64, description="Idle run-host actors kept ready beyond current load."
    )
    coalesce_chars: int = Field(64, ge=1, description="Flush token deltas at this many chars.")
    coalesce_ms: float = Field(20.0, ge=0, description="... or after this many milliseconds.")
    finished_runs_kept: int = Field(
        10_000, ge=1, description="Finished runs each host keeps for status and replay."
    )
    namespace: str = Field("rayfleet", description="Ray namespace of rayfleet's named actors.")
    restart_wait_s: float = Field(
        10.0,
        gt=0,
        description="How long a call waits for a crashed shared service to come back before "
        "it fails (HTTP: 503 + Retry-After); only calls safe to repeat wait.",
    )
    store_timeout_s: float = Field(
        30.0, gt=0, description="How long a new run waits for the store before 503."
    )
    run_host_resources: dict[str, float] = Field(
        default_factory=dict,
        description="Custom Ray resources each run host needs, to place run hosts on nodes.",
    )
    router: RouterSettings = Field(
        default_factory=RouterSettings,
        description="Retries, Retry-After cap, backoff and circuit breakers of the model router.",
    )
    tool_retry: ToolRetrySettings = Field(
        default_factory=ToolRetrySettings, description="Retries of transient tool failures."
    )
    cache: CacheSettings = Field(
        default_factory=CacheSettings,
        description="The tool-result, model-response and embedding caches (diskcache).",
    )
    embeddings: EmbeddingSettings = Field(
        default_factory=EmbeddingSettings,
        description="The shared embedding batcher: model, batch size and wait.",
    )
    switches_poll_s: float = Field(
        1.0, gt=0, description="How often run hosts re-read the kill switches."
    )
    approval_sweep_s: float = Field(
        5.0,
        gt=0,
        description="How often the run pool decides overdue approvals (their on_timeout).",
    )
    retention_days: float | None = Field(
        30.0,
        gt=0,
        description="Runs that ended longer ago are deleted (record, events, outcome); "
        "null keeps them for ever.",
    )
    idempotency_key_ttl_s: float = Field(
        86_400.0, gt=0, description="How long an Idempotency-Key is remembered (default 24 h)."
    )
    run_lease_ttl_s: float = Field(
        60.0,
        gt=0,
        description="A run slot not renewed for this long is freed (its run's host died); "
        "hosts renew every third of it.",
    )
    state_url: str | None = Field(
        None,
        description="Where the state lives: postgresql://... or sqlite:///dir; None: "
        "$RAYFLEET_STATE_URL, else SQLite in the data directory; a password in it is refused "
        "— put the URL in $RAYFLEET_STATE_URL or the password in PGPASSWORD.",
    )

    @field_validator("state_url")
    @classmethod
    def _state_url_without_password(cls, url: str | None) -> str | None:
        # Settings are logged, shown and passed to every actor: no secret may be in them.
        # ConfigError, not ValueError: pydantic would quote the URL in its error.
        if url is None:
            return None
        shown = describe(url.split("?", 1)[0])
        if _has_password(url):
            raise ConfigError(
                f"runtime.state_url {shown!r} holds a password: put the URL in "
                f"${STATE_URL_ENV} or the password in PGPASSWORD"
            )
        if not url.startswith(("postgresql://", "postgres://", "sqlite:///")):
            raise ConfigError(
                f"runtime.state_url {shown!r}: expected postgresql://... or sqlite:///<dir>"
            )
        return url


def _has_password(url: str) -> bool:
    parts = urlsplit(url)
    query = {key.lower() for key, _ in parse_qsl(parts.query, keep_blank_values=True)}
    return parts.password is not None or "password" in query
