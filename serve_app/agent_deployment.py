"""One Serve deployment per agent version: it owns the spec and starts runs on the run hosts."""

from __future__ import annotations

from ray import serve

from actors.credentials import TenantContext
from actors.runs_client import Runs
from actors.runtime import ensure_runtime
from actors.services import check_agents_package
from actors.settings import RuntimeSettings
from agents.spec import AgentSpec
from serve_app.handle_api import HandleSurface


def deployment_name(spec: AgentSpec) -> str:
    """'support@v1' is the agent version's deployment."""
    return spec.key


@serve.deployment(
    # I/O-bound: a run start is two small actor calls, so many fit in one replica and it
    # needs only a sliver of CPU (DESIGN.md: Serve's defaults are 5 requests and 1 CPU).
    max_ongoing_requests=1000,
    ray_actor_options={"num_cpus": 0.05},
    # A replica that died is noticed at its next health check: keep the outage short.
    health_check_period_s=2,
)
class AgentDeployment(HandleSurface):
    """Starts runs of one agent version. Runs live on run hosts, not in this replica, so a
    redeploy that drains this replica does not end them. Called by the gateway, which has
    already checked the caller (see README: whoever reaches the Ray cluster is trusted)."""

    handle_methods = frozenset({"start", "spec"})

    def __init__(self, spec: AgentSpec, settings: RuntimeSettings) -> None:
        check_agents_package()
        self._spec = spec
        self._settings = settings
        self._runs: Runs | None = None

    async def _client(self) -> Runs:
        if self._runs is None:
            pool = await ensure_runtime(self._settings)
            self._runs = Runs(self._settings, pool, recreate=True)
        return self._runs

    async def start(
        self,
        input: str,
        thread_id: str | None = None,
        context: TenantContext | None = None,
        namespace: str | None = None,
        assignment: str = "stable",
    ) -> str:
        """Start a run of this version for a tenant; returns its run id."""
        runs = await self._client()
        return await runs.start(self._spec, input, thread_id, context, namespace, assignment)

    def spec(self) -> AgentSpec:
        return self._spec
