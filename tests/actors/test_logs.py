"""Logs on Ray: the run host's log lines are JSON in Ray's worker log files, and a run's
internal error is logged once, with its traceback and the run's context."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import ray

from actors.credentials import TenantContext
from actors.runs_client import Runs
from actors.runtime import ensure_runtime
from actors.settings import RuntimeSettings
from tests.actors.test_durability import assert_one_clean_stream, collect
from tests.actors.test_tool_placement import agent, calls, host_pid, tool
from tests.fixtures_sim import Sim
from tests.helpers import wait_for

pytestmark = pytest.mark.ray


def json_lines(pid: int) -> list[dict[str, Any]]:
    """The JSON lines in the stderr log file(s) Ray keeps for the worker process `pid`."""
    logs = Path(ray._private.worker._global_node.get_logs_dir_path())
    found = []
    for path in logs.glob(f"worker-*-{pid}.err"):
        for line in path.read_text(errors="replace").splitlines():
            if line.startswith("{"):
                found.append(json.loads(line))
    return found


async def test_an_internal_error_logs_its_traceback_once_in_the_run_hosts_log(
    settings_for: Callable[..., RuntimeSettings], namespace: str, sim: Sim
) -> None:
    runs = Runs(settings := settings_for(), await ensure_runtime(settings))
    spec = agent(tool("broken", "broken.tool"))  # a host tool: it fails in the run's task
    sim.script(calls("broken"))
    run_id = await runs.start(spec, "Call the broken tool", context=TenantContext(tenant="acme"))
    events = await collect(runs, run_id)
    assert_one_clean_stream(events)
    failed: Any = events[-1]
    assert failed.kind == "run.failed" and failed.message == "internal error: RuntimeError"

    pid = await host_pid(run_id, namespace)

    def errors() -> list[dict[str, Any]]:
        return [x for x in json_lines(pid) if x.get("run_id") == run_id and x["level"] == "ERROR"]

    wait_for(errors, timeout_s=30)  # Ray's worker log is a file written as the process writes
    [line] = errors()
    assert line["logger"] == "rayfleet" and line["process"] == "run-host" and line["pid"] == pid
    assert line["tenant"] == "acme"
    assert line.get("trace_id") == failed.trace_id  # the run's trace (where it has one)
    assert "internal error (RuntimeError)" in line["message"]
    assert line["exc"].count("Traceback (most recent call last)") == 1
    assert "RuntimeError: a bug behind the tool's name" in line["exc"]
    assert "tools_for_tests.py" in line["exc"]  # where it was raised
    # The traceback is logged there only: no other line of the host carries it again.
    again = [x for x in json_lines(pid) if "a bug behind" in json.dumps(x)]
    assert again == [line]
