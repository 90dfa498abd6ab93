"""The tenants of the test session's app: teams with keys, tenants with their own provider
keys (BYOK), and the anonymous default."""

from __future__ import annotations

from actors.credentials import CredentialRef
from actors.limiter import TenantLimits
from serve_app.tenancy import TenancyConfig, TenantConfig, digest
from tests.conftest import CANARY as CANARY  # the `byok` tenant's provider key
from tests.conftest import CANARY_ENV, HEALTH_PROVIDER_ENV

ACME_KEY = "rf-test-acme-7d1c5e"
GLOBEX_KEY = "rf-test-globex-0b94aa"
LIMITED_KEY = "rf-test-limited-51f0c2"
THRIFTY_KEY = "rf-test-thrifty-9e3d11"
ADMIN_KEY = "rf-test-admin-c4a2f8"
BYOK_KEY = "rf-test-byok-3a8e07"
BYOK_MISSING_KEY = "rf-test-byok-missing-62d9b4"
SLOTS_KEY = "rf-test-slots-f3b8a2"
SLOTS_RUNS = 2
OBSERVED_KEY = "rf-test-observed-8c47d0"
"""tests/serve/test_metrics.py's own tenant: the metrics tagged with it are its runs'."""
OBSERVED_RPM_KEY = "rf-test-observed-rpm-27e915"
"""tests/serve/test_metrics.py's tenant with one run per minute: its refusals are counted."""
LISTS_A_KEY = "rf-test-lists-a-5e21c9"
LISTS_B_KEY = "rf-test-lists-b-a7340d"
"""tests/serve/test_run_list.py's tenants: their lists hold that test's runs only."""
CONSOLE_KEY = "rf-test-console-d2a61f"
"""tests/serve/test_console.py's tenant for the runs list: its list holds that module's runs."""
MCP_KEY = "rf-test-mcp-0c7e52"
MCP_SUPPORT_KEY = "rf-test-mcp-support-e81b36"
"""tests/serve/test_mcp_endpoint.py's tenants: one may run every agent, one only `support`."""
HEALTH_KEY = "rf-test-health-19c6e3"
"""tests/serve/test_providers.py's tenant: its own sim-openai key has a breaker of its own."""
LIMITED_RPM = 30
THRIFTY_BUDGET_USD = 0.03
UNSET_ENV = "RAYFLEET_TEST_UNSET_KEY"
"""Set nowhere: the provider key of `byok_missing`."""

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
        TenantConfig(
            id="slots",
            api_key_sha256=(digest(SLOTS_KEY),),
            limits=TenantLimits(concurrent_runs=SLOTS_RUNS),
        ),
        TenantConfig(id="observed", api_key_sha256=(digest(OBSERVED_KEY),)),
        TenantConfig(
            id="observed_rpm",
            api_key_sha256=(digest(OBSERVED_RPM_KEY),),
            limits=TenantLimits(requests_per_min=1),
        ),
        TenantConfig(id="lists_a", api_key_sha256=(digest(LISTS_A_KEY),)),
        TenantConfig(id="lists_b", api_key_sha256=(digest(LISTS_B_KEY),)),
        TenantConfig(id="console", api_key_sha256=(digest(CONSOLE_KEY),)),
        TenantConfig(id="mcp", api_key_sha256=(digest(MCP_KEY),)),
        TenantConfig(
            id="mcp_support", api_key_sha256=(digest(MCP_SUPPORT_KEY),), agents=("support",)
        ),
        TenantConfig(
            id="health",
            api_key_sha256=(digest(HEALTH_KEY),),
            credentials={"sim-openai": CredentialRef(env=HEALTH_PROVIDER_ENV)},
        ),
        TenantConfig(
            id="byok",
            api_key_sha256=(digest(BYOK_KEY),),
            credentials={
                "sim-openai": CredentialRef(env=CANARY_ENV),
                "sim-anthropic": CredentialRef(env=CANARY_ENV),
            },
            use_default_credentials=False,
        ),
        TenantConfig(
            id="byok_missing",
            api_key_sha256=(digest(BYOK_MISSING_KEY),),
            credentials={"sim-openai": CredentialRef(env=UNSET_ENV)},
            use_default_credentials=False,
        ),
    ),
    anonymous_tenant="default",
    admin_key_sha256=(digest(ADMIN_KEY),),
)


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}
