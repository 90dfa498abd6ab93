"""kill -9 PostgreSQL under a steady load of streamed runs and start it again: the service
refuses new runs with 503 while it is down, serves again after its restart, and every
accepted run ends once (issue 10). The scenario runs in its own process (it starts its own
Ray, PostgreSQL and simulator): tests/slow/database_restart_scenario.py."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).parents[2]
TIMEOUT_S = 900


def test_postgres_killed_under_load_refuses_with_503_comes_back_and_every_run_ends_once() -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
    scenario = subprocess.Popen(
        [sys.executable, "-m", "tests.slow.database_restart_scenario"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        out, err = scenario.communicate(timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        # SIGTERM: the scenario still shuts Ray down and stops PostgreSQL and the simulator.
        scenario.terminate()
        try:
            out, err = scenario.communicate(timeout=120)
        except subprocess.TimeoutExpired:
            scenario.kill()
            out, err = scenario.communicate()
        pytest.fail(f"the scenario took over {TIMEOUT_S}s:\n{out[-4000:]}\n{err[-8000:]}")
    assert scenario.returncode == 0, (out[-4000:], err[-8000:])
    assert "database restart: " in out and "each ended once" in out, out[-4000:]
    print(out[-2000:])  # the summary, for `pytest -rP`
