"""The handle API from a separate driver process: another Ray job on the same cluster."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from agents.events import Event, parse_event
from tests.fixtures_sim import Sim
from tests.serve.conftest import Service

pytestmark = pytest.mark.serve

EXAMPLE = Path(__file__).parents[2] / "examples" / "stream_from_ray_job.py"


def run_driver(service: Service, *args: str) -> list[Event]:
    env = {**os.environ, "RAY_ADDRESS": service.gcs_address}
    done = subprocess.run(
        [sys.executable, str(EXAMPLE), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return [parse_event(line) for line in done.stdout.splitlines() if line.startswith("{")]


def test_a_separate_driver_streams_typed_events_and_resumes(service: Service, sim: Sim) -> None:
    events = run_driver(service, "support", "Where is order 1234?")
    assert [e.seq for e in events] == list(range(1, len(events) + 1))
    kinds = [e.kind for e in events]
    assert kinds[0] == "run.created" and kinds[-1] == "run.completed"
    assert "tool.call" in kinds and "model.delta" in kinds

    run_id = events[0].run_id
    resumed = run_driver(service, "--run-id", run_id, "--after", "3")
    assert resumed == events[3:]

    # The same run over HTTP: the handle and SSE streams are views of one log.
    http_events = service.http.get(f"/v1/runs/{run_id}").json()
    assert http_events["last_seq"] == events[-1].seq
