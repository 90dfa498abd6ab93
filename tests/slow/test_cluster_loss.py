"""Whole-cluster loss on PostgreSQL: kill -9 every process of a Ray + Serve cluster with runs
in flight, start a new one on the same database (issue 10). The scenario runs in its own
process (it starts and kills two Ray clusters): tests/slow/cluster_loss_scenario.py."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).parents[2]
TIMEOUT_S = 600


def test_a_new_cluster_on_the_same_database_ends_every_run_once_and_pays_once() -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
    scenario = subprocess.Popen(
        [sys.executable, "-m", "tests.slow.cluster_loss_scenario"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        out, err = scenario.communicate(timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        # SIGTERM: the scenario still kills its clusters and stops PostgreSQL and the simulator.
        scenario.terminate()
        try:
            out, err = scenario.communicate(timeout=120)
        except subprocess.TimeoutExpired:
            scenario.kill()
            out, err = scenario.communicate()
        pytest.fail(f"the scenario took over {TIMEOUT_S}s:\n{out[-4000:]}\n{err[-8000:]}")
    assert scenario.returncode == 0, (out[-4000:], err[-8000:])
    assert "after the loss of the whole cluster" in out
