"""The multi-node fault test: a local three-node Ray cluster in its own process."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).parents[2]


def test_runs_on_a_lost_node_resume_on_another_and_the_rest_are_unaffected() -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
    done = subprocess.run(
        [sys.executable, "-m", "tests.slow.node_loss_scenario"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, (done.stdout[-3000:], done.stderr[-5000:])
    assert "runs completed" in done.stdout
