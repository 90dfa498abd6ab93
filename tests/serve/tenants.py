"""The tenants of the test session's app: two teams with keys, and the anonymous default."""

from __future__ import annotations

from actors.limiter import TenantLimits
from serve_app.tenancy import TenancyConfig, TenantConfig, digest

ACME_KEY = "rf-test-acme-7d1c5e"
GLOBEX_KEY = "rf-test-globex-0b94aa"
LIMITED_KEY = "rf-test-limited-51f0c2"
THRIFTY_KEY = "rf-test-thrifty-9e3d11"
ADMIN_KEY = "rf-test-admin-c4a2f8"
LIMITED_RPM = 30
THRIFTY_BUDGET_USD = 0.03

TENANCY = TenancyConfig(
    tenants=(
        TenantConfig(id="default"),
        TenantConfig(id="acme", api_key_sha256=(digest(ACME_KEY),)),
        TenantConfig(id="globex", api_key_sha256=(digest(GLOBEX_KEY),), agents=("support",)),
        TenantConfig(
            id="limited",
            api_key_sha256=(digest(LIMITED_KEY),),
            limits=TenantLimits(requests_per_min=LIMITED_RPM),
        ),
        TenantConfig(
            id="thrifty",
            api_key_sha256=(digest(THRIFTY_KEY),),
            limits=TenantLimits(daily_budget_usd=THRIFTY_BUDGET_USD),
        ),
    ),
    anonymous_tenant="default",
    admin_key_sha256=(digest(ADMIN_KEY),),
)


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}
