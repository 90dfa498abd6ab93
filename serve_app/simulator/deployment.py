"""The provider simulator as a Serve application (`rayfleet-sim`, mounted at /sim by the
configs in cluster/; its control API stays off there). `rayfleet serve` does not use it: it
runs the simulator on its own loopback port (serve_app.simulator.server)."""

from __future__ import annotations

from typing import Any

from ray import serve
from ray.serve import Application
from starlette.applications import Starlette

from serve_app.simulator.app import SimSettings, build_simulator_app

SIM_APP_NAME = "rayfleet-sim"
SIM_ROUTE_PREFIX = "/sim"


@serve.deployment(name="simulator", max_ongoing_requests=5000, ray_actor_options={"num_cpus": 0.1})
@serve.ingress()
class SimulatorDeployment:
    def __init__(self, settings: SimSettings) -> None:
        self._settings = settings

    def __serve_build_asgi_app__(self) -> Starlette:
        return build_simulator_app(self._settings)


def build(args: dict[str, Any]) -> Application:
    return SimulatorDeployment.bind(SimSettings.model_validate(args))  # type: ignore[attr-defined,no-any-return]
