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


def test_a_new_cluster_on_the_same_database_ends_every_run_once_and_pays_once() -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
    done = subprocess.run(
        [sys.executable, "-m", "tests.slow.cluster_loss_scenario"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, (done.stdout[-4000:], done.stderr[-8000:])
    assert "after the loss of the whole cluster" in done.stdout
