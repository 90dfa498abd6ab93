"""Tenants: who a caller is (API keys, stored hashed), what they may use, where their
provider keys live, and their limits. Declared in the deploy config; changed live through
the gateway's `user_config`."""

from __future__ import annotations

import hashlib
import hmac
import secrets
from typing import Self

from pydantic import BaseModel, ConfigDict, Field, model_validator

from actors.credentials import CredentialRef
from actors.limiter import TenantLimits
from agents.errors import Unauthorized

_ID = r"^[a-z][a-z0-9_-]{0,62}$"

PUBLISHED_EXAMPLE_KEYS = ("rf-example-replace-me",)
"""Keys printed in rayfleet's docs and examples: anyone can read them, so a deployment that
accepts one is open. A config holding the digest of one is refused at load."""


class _Config(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class TenantConfig(_Config):
    """One tenant."""

    id: str = Field(pattern=_ID, description="Tenant id.")
    api_key_sha256: tuple[str, ...] = Field(
        (), description="SHA-256 hex digests of the tenant's API keys (`rayfleet keys new`)."
    )
    agents: tuple[str, ...] | None = Field(
        None, description="Agents the tenant may run; absent means all."
    )
    limits: TenantLimits = Field(default_factory=TenantLimits, description="Rate and spend limits.")
    credentials: dict[str, CredentialRef] = Field(
        default_factory=dict, description="Provider name -> the tenant's own key (BYOK)."
    )
    use_default_credentials: bool = Field(
        True, description="May use the deployment's provider keys where it has none of its own."
    )
    memory_namespace: str | None = Field(
        None, pattern=_ID, description="Memory namespace; default: the tenant id."
    )

    @model_validator(mode="after")
    def _digests(self) -> Self:
        for digest in self.api_key_sha256:
            if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
                raise ValueError(f"tenant {self.id!r}: api_key_sha256 entries are hex SHA-256")
        return self

    @property
    def namespace(self) -> str:
        return self.memory_namespace or self.id

    def may_run(self, agent: str) -> bool:
        return self.agents is None or agent in self.agents


class TenancyConfig(_Config):
    """The gateway's user_config: tenants, the anonymous tenant, the admin keys."""

    tenants: tuple[TenantConfig, ...] = Field(
        (TenantConfig(id="default"),), description="Every tenant."
    )
    anonymous_tenant: str | None = Field(
        "default",
        description="Serve requests without a key as this tenant (local use); null: 401.",
    )
    admin_key_sha256: tuple[str, ...] = Field((), description="Digests of admin API keys.")

    @model_validator(mode="after")
    def _references(self) -> Self:
        ids = [t.id for t in self.tenants]
        if len(set(ids)) != len(ids):
            raise ValueError(f"tenant ids must be unique: {ids}")
        if self.anonymous_tenant is not None and self.anonymous_tenant not in ids:
            raise ValueError(f"anonymous_tenant {self.anonymous_tenant!r} is not a tenant ({ids})")
        holders = [(f"tenant {t.id!r}", d) for t in self.tenants for d in t.api_key_sha256]
        holders += [("admin_key_sha256", d) for d in self.admin_key_sha256]
        published = {digest(key): key for key in PUBLISHED_EXAMPLE_KEYS}
        for where, key_digest in holders:
            if key_digest in published:
                raise ValueError(
                    f"{where} holds the digest of the published example key "
                    f"{published[key_digest]!r}: anyone who read the docs has that key. "
                    'Generate your own with `rayfleet keys new` (or: python -c "import '
                    "secrets, hashlib; k = 'rf-' + secrets.token_urlsafe(32); "
                    'print(k, hashlib.sha256(k.encode()).hexdigest())") and put its digest here'
                )
        return self


def digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def new_api_key() -> tuple[str, str]:
    """A new random key and the digest to put in the config."""
    key = "rf-" + secrets.token_urlsafe(32)
    return key, digest(key)


class Authenticator:
    """Maps an `Authorization` header to a tenant. Keys are compared as digests, each
    comparison in constant time."""

    def __init__(self, config: TenancyConfig) -> None:
        self.config = config
        self._tenants = {t.id: t for t in config.tenants}
        self._by_digest = [(d, t) for t in config.tenants for d in t.api_key_sha256]

    def tenant(self, tenant_id: str) -> TenantConfig | None:
        return self._tenants.get(tenant_id)

    def authenticate(self, authorization: str | None) -> TenantConfig:
        key = _bearer(authorization)
        if key is None:
            anonymous = self.config.anonymous_tenant
            if anonymous is None:
                raise Unauthorized("an API key is required: send `Authorization: Bearer <key>`")
            return self._tenants[anonymous]
        presented = digest(key)
        found = None
        for stored, tenant in self._by_digest:
            if hmac.compare_digest(stored, presented):
                found = tenant
        if found is None:
            raise Unauthorized("unknown API key")
        return found

    def is_admin(self, authorization: str | None) -> bool:
        key = _bearer(authorization)
        if key is None:
            return False
        presented = digest(key)
        return any(hmac.compare_digest(d, presented) for d in self.config.admin_key_sha256)


def _bearer(authorization: str | None) -> str | None:
    if not authorization:
        return None
    scheme, _, value = authorization.partition(" ")
    if scheme.lower() != "bearer" or not value.strip():
        raise Unauthorized("the Authorization header must be `Bearer <key>`")
    return value.strip()
