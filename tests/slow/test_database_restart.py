"""kill -9 PostgreSQL under a steady load of streamed runs and start it again: the service
refuses new runs with 503 while it is down, serves again after its restart, and every
accepted run ends once (issue 10). The scenario runs in its own process (it starts its own
Ray, PostgreSQL and simulator): tests/slow/database_restart_scenario.py."""

from __future__ import annotations

import pytest

from tests.slow.scenario_runner import run_scenario

pytestmark = pytest.mark.slow

TIMEOUT_S = 900


def test_postgres_killed_under_load_refuses_with_503_comes_back_and_every_run_ends_once() -> None:
    out = run_scenario("tests.slow.database_restart_scenario", TIMEOUT_S)
    assert "database restart: " in out and "each ended once" in out, out[-4000:]
    print(out[-2000:])  # the summary, for `pytest -rP`
