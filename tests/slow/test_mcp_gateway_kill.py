"""kill -9 the gateway replica while an MCP call's run is in flight: the run completes and a
new MCP call is served once the replica is back (issue 15). The scenario runs in its own
process (it starts its own Ray and simulator): tests/slow/mcp_gateway_kill_scenario.py."""

from __future__ import annotations

import pytest

from tests.slow.scenario_runner import run_scenario

pytestmark = pytest.mark.slow

TIMEOUT_S = 600


def test_a_gateway_killed_mid_mcp_call_loses_no_run_and_serves_mcp_again() -> None:
    out = run_scenario("tests.slow.mcp_gateway_kill_scenario", TIMEOUT_S)
    assert "mcp gateway kill: ok" in out, out[-4000:]
    print(out[-2000:])  # what happened, for `pytest -rP`
