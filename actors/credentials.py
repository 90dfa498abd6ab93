"""Where a tenant's provider keys live, and reading them inside the actor that calls the
provider. A key is never passed through Ray, written to a config, an event or a log."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Self

from pydantic import BaseModel, ConfigDict, Field, model_validator

from agents.errors import ConfigError


class CredentialRef(BaseModel):
    """An environment variable or a file holding one provider key."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    env: str | None = Field(None, pattern=r"^[A-Z_][A-Z0-9_]*$", description="Env var name.")
    file: str | None = Field(None, description="Path of a file holding only the key.")

    @model_validator(mode="after")
    def _exactly_one(self) -> Self:
        if (self.env is None) == (self.file is None):
            raise ValueError("a credential names exactly one of `env` or `file`")
        return self

    def resolve(self) -> str:
        """The key, read now. The error names where it looked, never what it found."""
        if self.env is not None:
            value = os.environ.get(self.env)
            if not value:
                raise ConfigError(f"provider key variable {self.env} is not set on this node")
            return value
        assert self.file is not None
        try:
            value = Path(self.file).read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise ConfigError(
                f"cannot read provider key file {self.file}: {exc.strerror}"
            ) from None
        if not value:
            raise ConfigError(f"provider key file {self.file} is empty")
        return value


class TenantContext(BaseModel):
    """Who a run belongs to and how it reaches providers; stored with the run (names only)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    tenant: str = "default"
    credentials: dict[str, CredentialRef] = Field(default_factory=dict)
    use_default_credentials: bool = True
    metered: bool = False
    """Reserve and settle tokens and dollars with the tenant limiter around model calls."""
    shadow_of: str | None = None
    """Set for a shadow run: the primary run whose recorded side effects it replays."""
    lease: str | None = None
    """The run slot the tenant limiter admitted this run with (none: a shadow, or no
    limiter): renewed while the run lives, on whichever host, and released once it ends."""
