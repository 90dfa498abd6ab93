"""Remove the node hosting runs from a local three-node Ray cluster on PostgreSQL: those runs
resume on the other node, the others are unaffected. Every node opens the same database
(the URL reaches every Ray process through $RAYFLEET_STATE_URL, as on a real cluster).
Run by tests/slow/test_node_loss.py in its own process (a process can join only one Ray
cluster); exits non-zero if a check fails."""

from __future__ import annotations

import asyncio
import os
import sys
import tempfile
from collections import defaultdict
from pathlib import Path

import ray
from ray.cluster_utils import Cluster

from actors.caches import CacheSettings
from actors.run_host import host_of
from actors.runs_client import Runs
from actors.runtime import ensure_runtime
from actors.services import HOST_PREFIX
from actors.settings import RuntimeSettings, simulator_providers
from actors.state import STATE_URL_ENV, process_state
from agents.events import Event, is_terminal
from agents.examples import example_specs
from serve_app.simulator import SimSettings
from tests.fixtures_sim import SimServer
from tests.postgres import PostgresServer

RUNS = 8
NODE = {"num_cpus": 1, "node_ip_address": "127.0.0.1", "resources": {"runs": 100}}


async def collect(runs: Runs, run_id: str) -> list[Event]:
    events: list[Event] = []
    async with asyncio.timeout(120):
        async for event in runs.events(run_id):
            events.append(event)
    return events


async def scenario(cluster: Cluster, sim: SimServer, data: Path) -> None:
    settings = RuntimeSettings(
        providers=simulator_providers(sim.base_url),
        namespace="node-loss",
        cache=CacheSettings(directory=str(data / "cache")),
        runs_per_actor=2,
        warm_run_hosts=1,
        run_host_resources={"runs": 1},
    )
    runs = Runs(settings, await ensure_runtime(settings))
    spec = next(s for s in example_specs() if s.name == "support")
    run_ids = [await runs.start(spec, f"Where is order {1001 + i}?") for i in range(RUNS)]
    readers = {run_id: asyncio.create_task(collect(runs, run_id)) for run_id in run_ids}

    by_node: dict[str, list[str]] = defaultdict(list)
    for run_id in run_ids:
        host = ray.get_actor(HOST_PREFIX + host_of(run_id), namespace=settings.namespace)
        node_id = await host.__ray_call__.remote(lambda _: ray.get_runtime_context().get_node_id())
        by_node[node_id].append(run_id)
    workers = {node.node_id: node for node in cluster.worker_nodes}
    assert set(by_node) <= set(workers), "run hosts must sit on worker nodes"
    assert len(by_node) == 2, f"hosts should spread over both workers: {dict(by_node)}"
    doomed_node, survivors_node = sorted(by_node, key=lambda n: -len(by_node[n]))
    doomed, survivors = by_node[doomed_node], by_node[survivors_node]
    print(f"removing a node hosting {len(doomed)} runs; {len(survivors)} runs elsewhere")
    cluster.remove_node(workers[doomed_node], allow_graceful=False)

    results = {run_id: await reader for run_id, reader in readers.items()}
    for run_id, events in results.items():
        assert [e.seq for e in events] == list(range(1, len(events) + 1)), run_id
        assert [is_terminal(e) for e in events].count(True) == 1, run_id
        assert events[-1].kind == "run.completed", (run_id, events[-1])
    for run_id in survivors:
        kinds = [e.kind for e in results[run_id]]
        assert "model.discarded" not in kinds, run_id  # untouched by the loss
    state = process_state(None)  # this driver's: the same database, through the environment
    assert state.backend == "postgresql", state
    moved = []
    for run_id, events in results.items():
        record = await state.runs.load_run(run_id)
        assert record is not None and record.events == events, run_id
        if record.host_id != host_of(run_id):
            assert run_id in doomed, (run_id, record.host_id)
            moved.append(run_id)
    # A doomed run may have ended before its node went; the others moved.
    assert moved, f"no run of the lost node was resumed elsewhere: {doomed}"
    print(f"all {RUNS} runs completed; {len(moved)} resumed on the surviving node")


def main() -> int:
    os.environ.setdefault("RAY_ENABLE_AUTO_CONNECT", "0")
    # Keep every process of this local cluster on loopback (see tests/conftest.py); must be
    # set before `ray` is imported, so the test passes it in this process's environment.
    assert os.environ.get("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER") == "0"
    # Slow model calls keep every run in flight while the node goes away.
    sim = SimServer(SimSettings(ttft_ms=4000))
    sim.start()
    database = PostgresServer()
    # Before the cluster starts: every node's processes inherit it.
    os.environ[STATE_URL_ENV] = database.url(database.create_database("rayfleet"))
    cluster = Cluster(
        initialize_head=True,
        head_node_args={"num_cpus": 1, "node_ip_address": "127.0.0.1", "include_dashboard": False},
    )
    try:
        for _ in range(2):
            cluster.add_node(**NODE)
        cluster.wait_for_nodes()
        ray.init(
            address=cluster.address,
            _node_ip_address="127.0.0.1",
            logging_level="ERROR",
            log_to_driver=False,
        )
        with tempfile.TemporaryDirectory() as data:
            asyncio.run(scenario(cluster, sim, Path(data)))
    finally:
        ray.shutdown()
        cluster.shutdown()
        sim.stop()
        database.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
