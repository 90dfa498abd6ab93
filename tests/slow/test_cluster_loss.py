"""Whole-cluster loss on PostgreSQL: kill -9 every process of a Ray + Serve cluster with runs
in flight, start a new one on the same database (issue 10). The scenario runs in its own
process (it starts and kills two Ray clusters): tests/slow/cluster_loss_scenario.py."""

from __future__ import annotations

import pytest

from tests.slow.scenario_runner import run_scenario

pytestmark = pytest.mark.slow

TIMEOUT_S = 600


def test_a_new_cluster_on_the_same_database_ends_every_run_once_and_pays_once() -> None:
    out = run_scenario("tests.slow.cluster_loss_scenario", TIMEOUT_S)
    assert "after the loss of the whole cluster" in out
