"""Ray actor tests: the session's local Ray (`ray_session`), one fresh namespace per test."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from actors.settings import RuntimeSettings, simulator_providers
from tests.conftest import RaySession
from tests.fixtures_sim import SimServer
from tests.helpers import kill_namespace_actors


@pytest.fixture
def namespace(ray_session: RaySession) -> Iterator[str]:
    """A Ray namespace of this test's own, so its named actors never meet another test's
    (or the Serve tests' `rayfleet` ones); its actors are killed afterwards."""
    name = f"rayfleet-t-{uuid.uuid4().hex[:10]}"
    yield name
    kill_namespace_actors(name)


@pytest.fixture
def settings_for(
    sim_server: SimServer, namespace: str, tmp_path: Path
) -> Callable[..., RuntimeSettings]:
    """RuntimeSettings on the session's simulator, this test's namespace and its own files."""

    def build(**fields: object) -> RuntimeSettings:
        return RuntimeSettings.model_validate(
            {
                "providers": simulator_providers(sim_server.base_url),
                "namespace": namespace,
                "state_url": f"sqlite://{tmp_path}",
                "cache": {"directory": str(tmp_path / "cache")},
                "router": {"breaker_open_s": 1.0},
                **fields,
            }
        )

    return build
