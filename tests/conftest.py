"""Guard rails for every test: loopback only, a clean environment, shared fixtures."""

from __future__ import annotations

import atexit
import ipaddress
import os
import shutil
import socket
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

# Ray resolves "127.0.0.1"/"localhost" in an address to the machine's outward IP unless
# cluster mode is off; off, every Ray process of the tests (and their subprocesses, which
# inherit this) talks over loopback only. Read when `ray` is first imported: set it first.
os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"

# Serve runs throughput-optimized (RAY_SERVE_THROUGHPUT_OPTIMIZED, as in production), which
# serves HTTP from the ingress replicas themselves: a stopping gateway replica then keeps
# accepting for a minimum draining period (default 30 s) so that an external load balancer
# can deregister it, and only then waits for its requests in flight. The tests have no load
# balancer: every serve.delete and replica-replacing serve.run of a gateway would sit out
# those 30 s. In-flight requests are still drained as in production. Read by every Serve
# process the tests start (they inherit it).
os.environ["RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S"] = "0"

# A tenant's own provider key (tests/serve/tenants.py, tenant `byok`), set before Ray starts
# so every Ray worker inherits it. A canary: tests/serve/test_secrets.py checks it reaches the
# provider and appears nowhere else. Not one of the variables `_no_network` clears.
CANARY_ENV = "RAYFLEET_TEST_CANARY_KEY"
CANARY = "sk-canary-696b10d2be179319be66d960"
os.environ[CANARY_ENV] = CANARY
# The `health` tenant's own key for sim-openai (tests/serve/test_providers.py): a breaker of
# its own, which that test opens without making any other tenant skip the provider.
HEALTH_PROVIDER_ENV = "RAYFLEET_TEST_HEALTH_PROVIDER_KEY"
HEALTH_PROVIDER_KEY = "sk-health-5b0e7c14a9d2"
os.environ[HEALTH_PROVIDER_ENV] = HEALTH_PROVIDER_KEY

# State the tests do not place themselves goes to a private directory of this session, never
# to the developer's own data directory. Set before anything reads it; Ray workers and
# subprocesses inherit it.
_DATA_DIR = tempfile.mkdtemp(prefix="rayfleet-tests-")  # mode 0700, as the stores demand
os.environ["RAYFLEET_DATA_DIR"] = _DATA_DIR
atexit.register(shutil.rmtree, _DATA_DIR, ignore_errors=True)

# Tests pick their state themselves (a data dir per test, or a private PostgreSQL): a
# developer's own state URL must never reach them, nor the Ray workers they start.
os.environ.pop("RAYFLEET_STATE_URL", None)

# Traces go where the tests say (the `otlp` fixture), never where a developer's shell points.
for _name in [name for name in os.environ if name.startswith("OTEL_")]:
    del os.environ[_name]

from tests.otlp import OtlpReceiver  # noqa: E402 - after the variables Ray reads at import

pytest_plugins = ["tests.fixtures_sim", "tests.fixtures_pg"]

_real_connect = socket.socket.connect


def _loopback_only(self: socket.socket, address: Any) -> Any:
    if isinstance(address, tuple) and address:
        host = address[0]
        try:
            ip = ipaddress.ip_address(host)
        except ValueError:
            ip = None
        if host != "localhost" and (ip is None or not ip.is_loopback):
            raise RuntimeError(f"tests may only connect to loopback, not {host!r}")
    return _real_connect(self, address)


@pytest.fixture(autouse=True)
def _no_network(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setattr(socket.socket, "connect", _loopback_only)
    for name in ("OPENAI_API_KEY", "ANTHROPIC_API_KEY", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.lower(), raising=False)
    yield


@pytest.fixture(autouse=True)
def _default_logging() -> Iterator[None]:
    """A test that builds an actor's class in this process configures rayfleet's JSON logs
    (agents.logs): undone after it, so the next test's `caplog` sees rayfleet's records."""
    yield
    from agents.logs import reset_logging

    reset_logging()


@dataclass(frozen=True)
class RaySession:
    """The one local Ray of this pytest process (Ray allows one per process)."""

    gcs_address: str
    namespace: str


@pytest.fixture(scope="session")
def otlp() -> Iterator[OtlpReceiver]:
    """The session's OTLP/HTTP trace receiver (tests/otlp.py)."""
    receiver = OtlpReceiver().start()
    try:
        yield receiver
    finally:
        receiver.close()


@pytest.fixture(scope="session")
def ray_session(otlp: OtlpReceiver) -> Iterator[RaySession]:
    """A local Ray on 127.0.0.1 shared by tests/actors and tests/serve, shut down at the end.
    Its processes export traces to the session's receiver, sampled 100%, in small batches:
    the standard variables, read by every process Ray starts."""
    os.environ["OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"] = otlp.endpoint
    os.environ["OTEL_TRACES_SAMPLER"] = "parentbased_always_on"
    os.environ["OTEL_BSP_SCHEDULE_DELAY"] = "200"
    # Serve's constants are read once per process at import: imported here first, this
    # driver's handles keep their router on Serve's own loop thread, so a handle made in one
    # test's event loop still works in the next test's. Serve's processes, started below,
    # read the variable and run throughput-optimized, as in production.
    import ray.serve

    os.environ["RAY_SERVE_THROUGHPUT_OPTIMIZED"] = "1"
    import ray

    namespace = f"rayfleet-tests-{uuid.uuid4().hex[:8]}"
    ray.init(
        address="local",  # a new Ray, whatever /tmp/ray/ray_current_cluster names
        num_cpus=2,
        include_dashboard=False,
        _node_ip_address="127.0.0.1",
        namespace=namespace,
        logging_level="WARNING",
        log_to_driver=False,
    )
    try:
        yield RaySession(ray.get_runtime_context().gcs_address, namespace)
    finally:
        ray.shutdown()
