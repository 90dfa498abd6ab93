"""`rayfleet serve` on the embedded SQLite state, killed hard and started again on the same data
directory: what the first life made durable is all there in the second.

First life: run A completes (with an outcome) on `support`; an admin switches `support` off
and rolls back `held`'s canary; runs B1..B3 of `held` wait in a tool (their hold files
exist) with their first events stored.
Then every process of that life is SIGKILLed (its process group, and every process that
carries this life's marker in its environment: Ray's daemons and workers), the hold files go,
and a second `rayfleet serve` starts on new ports. In it: A's body, events and costs are as
they were, the tenant's spend today is intact, `support` is still switched off and `held`
still rolled back, and each B resumes from its last stored event and ends in exactly one
`run.completed`. Run P of `guarded-support` waited for a person's approval across the kill:
approved in the second life, it refunds once and completes.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx2
import pytest
import yaml

from agents.examples import EXAMPLES_DIR
from serve_app.join import forget_head
from serve_app.tenancy import new_api_key
from tests.helpers import wait_for
from tests.slow.test_make_serve import ROOT, answers, free_ports

pytestmark = pytest.mark.slow

MARKER = "RAYFLEET_TEST_SERVE_LIFE"
"""Set in each life's environment: Ray's daemons and workers inherit it, so the test finds
(and kills) every process of a life, even one that left the process group."""

Event = dict[str, Any]
TERMINAL = {"run.completed", "run.failed", "run.cancelled"}


@dataclass
class Life:
    """One `rayfleet serve` process tree."""

    proc: subprocess.Popen[bytes]
    marker: str
    base: str
    log: Path
    head: str | None = None
    """Its Ray head's GCS address, which it records in /tmp/ray/ray_current_cluster."""

    def tail(self) -> str:
        return self.log.read_text(errors="replace")[-5000:]


def head_address(marker: str) -> str | None:
    """The GCS address of the life's Ray head, from the command line of its raylet."""
    for pid in marked_pids(marker):
        with suppress(OSError):
            args = Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")
            found = [a.partition("=")[2] for a in args if a.startswith("--gcs-address=")]
            if found:
                return found[0]
    return None


def marked_pids(marker: str) -> list[int]:
    """Live processes whose environment holds `MARKER=marker` (zombies have none)."""
    wanted = f"{MARKER}={marker}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            environ = (entry / "environ").read_bytes()
        except OSError:  # gone meanwhile, or a kernel thread
            continue
        if wanted in environ.split(b"\0"):
            found.append(int(entry.name))
    return found


def kill_hard(life: Life) -> None:
    """SIGKILL the life's process group and every marked process, until none is left."""
    with suppress(ProcessLookupError):
        os.killpg(life.proc.pid, signal.SIGKILL)

    def none_left() -> bool:
        pids = marked_pids(life.marker)
        for pid in pids:
            with suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        return not pids

    wait_for(none_left, 30, 0.1)
    life.proc.wait(timeout=10)


def stop(life: Life) -> None:
    """What Ctrl-C does, then whatever is left is killed."""
    if life.proc.poll() is None:
        life.proc.send_signal(signal.SIGINT)
        with suppress(subprocess.TimeoutExpired):
            life.proc.wait(timeout=60)
    kill_hard(life)


@contextmanager
def serving(tmp: Path, name: str, config: Path, heads: list[str]) -> Iterator[Life]:
    """A `rayfleet serve` on the data directory in `tmp`, on new ports; stopped at the end.
    Its head's address goes to `heads`."""
    port, sim_port = free_ports(2)
    marker = uuid.uuid4().hex
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "RAYFLEET_DATA_DIR": str(tmp / "data"),
        MARKER: marker,
    }
    command = [sys.executable, "-m", "serve_app.cli", "serve", "--port", str(port)]
    command += ["--sim-port", str(sim_port), "--num-cpus", "2", "--metrics-port", "0"]
    command += ["--config", str(config)]
    log = tmp / f"{name}.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            command, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    life = Life(proc, marker, f"http://127.0.0.1:{port}", log)
    try:
        wait_for(lambda: answers(f"{life.base}/v1/agents") or proc.poll() is not None, 240, 0.5)
        life.head = head_address(marker)
        assert proc.poll() is None, life.tail()
        yield life
    finally:
        head = life.head or head_address(marker)  # a life that failed to start has none yet
        if head is not None:
            heads.append(head)
        stop(life)


def write_config(tmp: Path, admin_key_digest: str) -> Path:
    """The app config: `support`, plus `held` (v1, and v2 as a canary) whose one tool waits
    on a hold file; the default tenant with a daily budget (so its spend is kept); an admin
    key."""
    held = yaml.safe_load((EXAMPLES_DIR / "support.yaml").read_text())
    held |= {
        "name": "held",
        "description": "Waits in its tool while a hold file exists.",
        "tools": [
            {
                "name": "wait_while_held",
                "description": "Wait while the hold file exists.",
                "function": "tests.tools_for_tests:wait_while_held",
                "parameters": {
                    "type": "object",
                    "properties": {"hold": {"type": "string", "description": "A file path."}},
                    "required": ["hold"],
                },
            }
        ],
        "timeouts": {"model_call_timeout_s": 60, "tool_call_timeout_s": 150},
    }
    (tmp / "held.yaml").write_text(yaml.safe_dump(held))
    (tmp / "held-v2.yaml").write_text(yaml.safe_dump(held | {"version": "v2"}))
    config = {
        "agents": [
            "example:support.yaml",
            "example:guarded-support.yaml",
            str(tmp / "held.yaml"),
            str(tmp / "held-v2.yaml"),
        ],
        "traffic": {"agents": {"held": {"weights": {"v1": 1, "v2": 1}, "canary": "v2"}}},
        "tenancy": {
            "tenants": [{"id": "default", "limits": {"daily_budget_usd": 100.0}}],
            "anonymous_tenant": "default",
            "admin_key_sha256": [admin_key_digest],
        },
    }
    path = tmp / "serve.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def sse_events(lines: Iterator[str]) -> Iterator[Event]:
    """The events of an SSE stream, as the JSON objects the service sent."""
    data: list[str] = []
    for line in lines:
        if line.startswith("data:"):
            data.append(line[5:].removeprefix(" "))
        elif line == "" and data:
            yield json.loads("\n".join(data))
            data = []


def read_events(base: str, run_id: str, until: set[str], timeout_s: float) -> list[Event]:
    """A run's events from the first, read until one of kind `until` arrives (bounded)."""
    events: list[Event] = []
    deadline = time.monotonic() + timeout_s
    url = f"{base}/v1/runs/{run_id}/events?after=0"
    with httpx2.stream("GET", url, timeout=httpx2.Timeout(10.0, read=timeout_s)) as response:
        assert response.status_code == 200, response.read()
        for event in sse_events(response.iter_lines()):
            events.append(event)
            if event["kind"] in until:
                return events
            assert time.monotonic() < deadline, (run_id, [e["kind"] for e in events])
    raise AssertionError(f"stream of {run_id} ended before {until}: {events}")


def get_json(url: str, key: str | None = None) -> Any:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    response = httpx2.get(url, headers=headers, timeout=30)
    assert response.status_code == 200, (url, response.status_code, response.text)
    return response.json()


def support_costs(base: str, admin: str) -> list[Any]:
    report = get_json(f"{base}/v1/admin/costs", admin)
    return [c for c in report["versions"] + report["agents"] if c["agent"] == "support"]


def traffic(base: str) -> dict[str, Any]:
    """Each agent's live traffic state: weights, rollback, kill switches."""
    return {a["name"]: a["traffic"] for a in get_json(f"{base}/v1/agents")["agents"]}


def spent_today(base: str, admin: str) -> float:
    tenants = get_json(f"{base}/v1/admin/tenants", admin)["tenants"]
    return float(next(t for t in tenants if t["id"] == "default")["usage"]["spent_usd"])


@pytest.fixture
def heads() -> Iterator[list[str]]:
    """Heads started by the test; a killed one leaves its record in
    /tmp/ray/ray_current_cluster, removed at the end (not before the second life: a
    restart after a crash meets it too)."""
    started: list[str] = []
    yield started
    for address in started:
        forget_head(address)


def test_a_hard_killed_service_restarts_with_its_state(tmp_path: Path, heads: list[str]) -> None:
    started = time.monotonic()
    admin, admin_digest = new_api_key()
    config = write_config(tmp_path, admin_digest)
    holds = [tmp_path / f"hold-{i}" for i in (1, 2, 3)]
    for hold in holds:
        hold.touch()

    # -- first life ----------------------------------------------------------------------
    with serving(tmp_path, "first", config, heads) as first:
        base = first.base
        done = httpx2.post(
            f"{base}/v1/agents/support/runs",
            json={"input": "Where is order 1001?"},
            headers={"Accept": "text/event-stream"},
            timeout=120,
        )
        assert done.status_code == 200 and "event: run.completed" in done.text, done.text[-500:]
        run_a = done.headers["X-Run-Id"]
        a_events = read_events(base, run_a, TERMINAL, 60)
        a_body = get_json(f"{base}/v1/runs/{run_a}")
        assert a_body["status"] == "completed" and a_body["last_seq"] == len(a_events)
        outcome = httpx2.post(
            f"{base}/v1/runs/{run_a}/outcome", json={"success": True, "score": 0.9}, timeout=30
        )
        assert outcome.status_code == 200, outcome.text
        kill = httpx2.post(
            f"{base}/v1/admin/kill",
            json={"scope": "agents", "name": "support", "reason": "restart test"},
            headers={"Authorization": f"Bearer {admin}"},
            timeout=30,
        )
        assert kill.status_code == 200, kill.text
        rollback = httpx2.post(
            f"{base}/v1/admin/agents/held/rollback",
            headers={"Authorization": f"Bearer {admin}"},
            timeout=30,
        )
        assert rollback.status_code == 200, rollback.text
        switched = traffic(base)
        assert switched["support"]["killed"] and switched["held"]["rolled_back"], switched
        costs = support_costs(base, admin)
        assert any(c["stats"]["successes"] == 1 for c in costs), costs
        spent = spent_today(base, admin)
        assert spent > 0

        b_runs: list[str] = []
        for hold in holds:
            created = httpx2.post(
                f"{base}/v1/agents/held/runs", json={"input": str(hold)}, timeout=60
            )
            assert created.status_code == 202, created.text
            b_runs.append(created.json()["run_id"])
        # Readers see only stored events: once a B's tool call shows, it is durable, and the
        # run waits in its tool until the hold file goes.
        b_before = {run: read_events(base, run, {"tool.call"}, 90) for run in b_runs}
        # P waits for a person: its refund is asked for, not made.
        asked = httpx2.post(
            f"{base}/v1/agents/guarded-support/runs",
            json={"input": "Please refund order 1777, it arrived broken."},
            timeout=60,
        )
        assert asked.status_code == 202, asked.text
        run_p = asked.json()["run_id"]
        p_before = read_events(base, run_p, {"approval.requested"}, 90)
        kill_hard(first)
    assert first.proc.returncode == -signal.SIGKILL, first.tail()
    for hold in holds:
        hold.unlink()
    killed_at = time.monotonic()

    # -- second life, same data directory ------------------------------------------------
    with serving(tmp_path, "second", config, heads) as second:
        base = second.base
        assert read_events(base, run_a, TERMINAL, 60) == a_events
        assert get_json(f"{base}/v1/runs/{run_a}") == a_body
        assert support_costs(base, admin) == costs
        assert spent_today(base, admin) >= spent
        assert traffic(base) == switched

        refused = httpx2.post(
            f"{base}/v1/agents/support/runs", json={"input": "Where is order 1002?"}, timeout=60
        )
        assert refused.status_code == 503, refused.text
        assert refused.json()["code"] == "killed", refused.text

        for run, before in b_before.items():
            events = read_events(base, run, TERMINAL, 90)
            kinds = [e["kind"] for e in events]
            assert [e["seq"] for e in events] == list(range(1, len(events) + 1)), kinds
            assert events[: len(before)] == before, (kinds, [e["kind"] for e in before])
            assert kinds.count("run.created") == 1, kinds
            assert [k for k in kinds if k in TERMINAL] == ["run.completed"], kinds
            assert kinds[-1] == "run.completed", kinds
            body = get_json(f"{base}/v1/runs/{run}")
            assert body["status"] == "completed" and body["last_seq"] == len(events), body
            assert body["version"] == "v1", body  # v2, the canary, was rolled back
        assert spent_today(base, admin) > spent  # the resumed runs' model calls, on top

        # P still waits, on whichever host has it now; approved, it refunds once and ends.
        waiting = get_json(f"{base}/v1/runs/{run_p}")
        assert waiting["status"] == "awaiting_approval", waiting
        call_id = waiting["approval"]["call_id"]
        assert call_id == p_before[-1]["call_id"]
        decided = httpx2.post(
            f"{base}/v1/runs/{run_p}/approvals/{call_id}", json={"decision": "approve"}, timeout=60
        )
        assert decided.status_code == 200, decided.text
        events = read_events(base, run_p, TERMINAL, 90)
        kinds = [e["kind"] for e in events]
        assert events[: len(p_before)] == p_before, kinds
        assert kinds.count("approval.requested") == kinds.count("approval.decided") == 1, kinds
        refunds = [e for e in events if e["kind"] == "tool.result" and e["tool"] == "issue_refund"]
        assert len(refunds) == 1 and refunds[0]["ok"], refunds
        assert kinds[-1] == "run.completed", kinds

    print(
        f"restart test: first life {killed_at - started:.0f}s, "
        f"whole test {time.monotonic() - started:.0f}s"
    )
