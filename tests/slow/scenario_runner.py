"""Run a slow-test scenario module in its own process (it starts its own Ray, and may kill
it whole), bounded in time, and hand back what it printed."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[2]


def run_scenario(module: str, timeout_s: float) -> str:
    """`python -m module` from the repository root, loopback-only Ray; fails the test if it
    exits non-zero or outlives `timeout_s` (then SIGTERM: a scenario still cleans up).
    Returns its stdout."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
    scenario = subprocess.Popen(
        [sys.executable, "-m", module],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        out, err = scenario.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        scenario.terminate()
        try:
            out, err = scenario.communicate(timeout=120)
        except subprocess.TimeoutExpired:
            scenario.kill()
            out, err = scenario.communicate()
        pytest.fail(f"the scenario took over {timeout_s}s:\n{out[-4000:]}\n{err[-8000:]}")
    assert scenario.returncode == 0, (out[-4000:], err[-8000:])
    return out
