"""One rayfleet Serve app per session, on the session's Ray (`ray_session`) and simulator."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from dataclasses import dataclass

import httpx2
import pytest

from actors.caches import CacheSettings
from actors.router import RouterSettings
from actors.settings import RuntimeSettings, simulator_providers
from serve_app.config import AppConfig
from tests.conftest import RaySession
from tests.fixtures_sim import SimServer
from tests.serve.tenants import TENANCY


@dataclass
class Service:
    base_url: str
    gcs_address: str
    http: httpx2.Client
    settings: RuntimeSettings
    config: AppConfig


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="session")
def service(
    sim_server: SimServer, ray_session: RaySession, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Service]:
    from ray import serve

    from serve_app.app import APP_NAME, build_app

    port = _free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    data = tmp_path_factory.mktemp("rayfleet-data")
    settings = RuntimeSettings(
        providers=simulator_providers(sim_server.base_url),
        state_url=f"sqlite://{data}",
        cache=CacheSettings(directory=str(data / "cache")),
        # Breakers are per process and this app lives all session: keep an opened one short
        # so one test's scripted failures do not skip a provider in the next test.
        router=RouterSettings(breaker_open_s=1.0),
    )
    config = AppConfig(runtime=settings, tenancy=TENANCY)
    serve.run(build_app(config), name=APP_NAME, route_prefix="/")
    base_url = f"http://127.0.0.1:{port}"
    http = httpx2.Client(base_url=base_url, timeout=30)
    try:
        yield Service(base_url, ray_session.gcs_address, http, settings, config)
    finally:
        http.close()
        # No serve.shutdown(): its controller waits ~30 s to drain; ray_session's
        # ray.shutdown() ends every Serve process with the cluster anyway.
