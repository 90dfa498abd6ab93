"""Delivery of agent versions to new runs: the traffic config, automatic canary rollbacks
and kill switches, shared by every gateway replica through the run store.

What a replica holds is derived: the deployed traffic config plus the store's settings
    kill/config         the config's kill switches (read by run hosts too)
    kill/admin          switches set by admin calls (they survive restarts)
    rollback/<agent>    weights forced by a canary breach or an admin rollback; they apply
                        while the agent's configured traffic is unchanged, so promoting or
                        re-weighting is one config change
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from actors.outcomes import VersionStats as OutcomeStats
from actors.switches import KILL_PREFIX, ROLLBACK_PREFIX, KillSwitches
from serve_app.traffic import (
    Choice,
    TrafficConfig,
    TrafficRouter,
    VersionStats,
    judge_canary,
)

logger = logging.getLogger("rayfleet")

KILL_CONFIG = KILL_PREFIX + "config"
KILL_ADMIN = KILL_PREFIX + "admin"
ROLLBACK = ROLLBACK_PREFIX


def _fingerprint(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()[:16]


class Delivery:
    """Chooses versions for new runs. No Ray in here: stores are passed in."""

    def __init__(
        self,
        config: TrafficConfig,
        versions: Mapping[str, Sequence[str]],
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._versions = {agent: list(v) for agent, v in versions.items()}
        self._clock = clock
        self._admin_kill = KillSwitches()
        self._rollbacks: dict[str, dict[str, Any]] = {}
        self.configure(config)

    def configure(self, config: TrafficConfig) -> None:
        config.check_against(self._versions)
        self._config = config
        self._rebuild()

    def _rebuild(self) -> None:
        config = self._config
        for agent, rollback in self._rollbacks.items():
            if agent in config.agents and rollback["config"] == self._agent_fingerprint(agent):
                config = TrafficRouter(config, self._versions).with_weights(
                    agent, rollback["weights"]
                )
        self._router = TrafficRouter(config, self._versions)

    def _agent_fingerprint(self, agent: str) -> str:
        return _fingerprint(self._config.agents[agent].model_dump(mode="json"))

    # -- per run ------------------------------------------------------------------------------

    def choose(self, agent: str, tenant: str, thread_id: str | None, run_key: str) -> Choice:
        return self._router.choose(agent, tenant, thread_id, run_key)

    def killed(self, agent: str, version: str, tenant: str) -> str | None:
        return self._config.kill.merged(self._admin_kill).run_killed(agent, version, tenant)

    # -- shared state -------------------------------------------------------------------------

    async def publish(self, put: Callable[[str, str | None], Any]) -> None:
        """Write the config's kill switches where run hosts read them."""
        await put(KILL_CONFIG, self._config.kill.model_dump_json())

    def refresh(self, settings: Mapping[str, str]) -> None:
        """Adopt the store's admin switches and rollbacks (every replica, every second)."""
        admin = settings.get(KILL_ADMIN)
        self._admin_kill = KillSwitches.model_validate_json(admin) if admin else KillSwitches()
        self._rollbacks = {
            key.removeprefix(ROLLBACK): json.loads(value)
            for key, value in settings.items()
            if key.startswith(ROLLBACK)
        }
        self._rebuild()

    def admin_kill(self) -> KillSwitches:
        return self._admin_kill

    def rollback_record(self, agent: str, reason: str) -> tuple[str, str]:
        """The store entry that sends the agent's canary weight to 0, with why."""
        traffic = self._config.agents.get(agent)
        if traffic is None or traffic.canary is None:
            raise ValueError(f"agent {agent!r} has no canary to roll back")
        weights = {**traffic.weights, traffic.canary: 0.0}
        record = {
            "weights": weights,
            "reason": reason,
            "at": self._clock(),
            "config": self._agent_fingerprint(agent),
        }
        return ROLLBACK + agent, json.dumps(record)

    def canaries(self) -> list[tuple[str, str, str, float]]:
        """(agent, stable version, canary version, window start) of canaries still live."""
        live = []
        for agent, traffic in self._config.agents.items():
            rolled = self._rollbacks.get(agent)
            if traffic.canary is None or (
                rolled is not None and rolled["config"] == self._agent_fingerprint(agent)
            ):
                continue
            since = self._clock() - traffic.gate.window_s
            live.append((agent, traffic.stable_version, traffic.canary, since))
        return live

    def judge(self, agent: str, stable: OutcomeStats, canary: OutcomeStats) -> list[str]:
        gate = self._config.agents[agent].gate
        return judge_canary(gate, _gate_stats(stable), _gate_stats(canary))

    def describe(self, agent: str) -> dict[str, Any]:
        """The live traffic state of one agent, for GET /v1/agents."""
        config = self._router.config
        traffic = config.agents.get(agent)
        rolled = self._rollbacks.get(agent)
        live_rollback = (
            rolled is not None
            and agent in self._config.agents
            and rolled["config"] == self._agent_fingerprint(agent)
        )
        kill = self._config.kill.merged(self._admin_kill)
        versions = self._versions.get(agent, [])
        return {
            "weights": dict(traffic.weights) if traffic else {versions[-1]: 1.0},
            "stable": traffic.stable_version if traffic else versions[-1],
            "canary": traffic.canary if traffic else None,
            "shadows": [r.model_dump(mode="json") for r in traffic.shadows] if traffic else [],
            "rolled_back": {"reason": rolled["reason"], "at": rolled["at"]}
            if live_rollback and rolled
            else None,
            "killed": {
                v: kill.run_killed(agent, v, "") for v in versions if kill.run_killed(agent, v, "")
            },
        }


def _gate_stats(stats: OutcomeStats) -> VersionStats:
    return VersionStats(
        runs=stats.runs,
        failures=stats.failures + stats.cancelled,
        successes=stats.successes,
        cost_usd=stats.cost_usd,
        p95_run_s=stats.p95_run_s,
    )
