"""The app builders `serve run` / `serve deploy` import.

serve run serve_app.app:build                   the rayfleet app on the embedded defaults
serve deploy cluster/serve.yaml                 the same, plus the provider simulator app
"""

from __future__ import annotations

from typing import Any

from ray.serve import Application
from ray.serve.schema import LoggingConfig

from serve_app.agent_deployment import AgentDeployment, deployment_name
from serve_app.config import AppConfig
from serve_app.gateway import Gateway

APP_NAME = "rayfleet"
SERVE_LOGS = LoggingConfig(encoding="JSON")
"""Serve's own logs of rayfleet's replicas (requests, replica life; logs/serve/ in Ray's
session directory) as JSON lines; rayfleet's own go to the worker's stderr (agents.logs)."""


def build_app(config: AppConfig) -> Application:
    specs = config.load_specs()
    agents = {
        spec.key: AgentDeployment.options(  # type: ignore[attr-defined]
            name=deployment_name(spec),
            num_replicas=config.agent_replicas,
            logging_config=SERVE_LOGS,
        ).bind(spec, config.runtime)
        for spec in specs
    }
    return Gateway.options(  # type: ignore[attr-defined,no-any-return]
        num_replicas=config.gateway_replicas,
        logging_config=SERVE_LOGS,
        user_config={
            **config.tenancy.model_dump(mode="json"),
            "traffic": config.traffic.model_dump(mode="json"),
        },
    ).bind(agents, specs, config)


def build(args: dict[str, Any]) -> Application:
    """Serve's app builder: `args` is the `args:` mapping of the deploy config."""
    return build_app(AppConfig.from_args(args))
