"""Deterministic flaky tools for the ToolPool and effect-ledger tests.

Resolved by import path like any agent's tools. Each tool counts its calls in `calls` and,
while `script` has entries, raises the next one instead of working: a test scripts the
failures, calls, then asserts on `calls` and `effects`. `reset()` between tests.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections import Counter
from pathlib import Path

from pydantic import JsonValue

HERE = __name__

calls: Counter[str] = Counter()
script: list[BaseException] = []
effects: list[str] = []  # the idempotency keys of the effects that really happened
gate = asyncio.Event()


def reset() -> None:
    global gate
    calls.clear()
    script.clear()
    effects.clear()
    gate = asyncio.Event()


def _next_failure(name: str) -> None:
    calls[name] += 1
    if script:
        raise script.pop(0)


async def flaky() -> str:
    _next_failure("flaky")
    return "ok"


def flaky_sync() -> str:
    _next_failure("flaky_sync")
    return "ok"


async def flaky_effect(item: str, idempotency_key: str) -> dict[str, JsonValue]:
    """Side-effecting: fails as scripted, then performs its effect (every time it is called:
    it trusts the pool's ledger, so a second effect in `effects` is a bug in the pool)."""
    _next_failure("flaky_effect")
    effects.append(idempotency_key)
    return {"done": item, "key": idempotency_key}


async def gated_effect(idempotency_key: str) -> str:
    calls["gated_effect"] += 1
    await gate.wait()
    effects.append(idempotency_key)
    return "done"


async def slow_then_hang(slow_s: float) -> str:
    """First call: works for `slow_s` of real time, then fails transiently. Later calls hang."""
    calls["slow_then_hang"] += 1
    if calls["slow_then_hang"] == 1:
        await asyncio.sleep(slow_s)
        raise ConnectionResetError("peer reset")
    await asyncio.Event().wait()
    return "never"


def pay(counter: str, amount: int, idempotency_key: str) -> dict[str, JsonValue]:
    """Side-effecting, for the crash tests (it runs in the tool-pool actor): appends a line to
    the file `counter` each time it really runs, the count taken at the tool, then waits
    while the file `counter`.hold exists (bounded), so a test can kill a host meanwhile."""
    with open(counter, "a") as out:
        out.write(f"{idempotency_key}\n")
        out.flush()
        os.fsync(out.fileno())
    hold = Path(f"{counter}.hold")
    for _ in range(3000):  # at most 30 s
        if not hold.exists():
            break
        time.sleep(0.01)  # sync tools run in a worker thread of the pool
    return {"paid": amount}


def note(counter: str) -> str:
    """Read-only: appends a line to the file `counter`.notes each time it runs."""
    with open(f"{counter}.notes", "a") as out:
        out.write("noted\n")
    return "noted"


class RecordedSleeps:
    """A `sleep=` for the pool: records each backoff and yields once instead of waiting."""

    def __init__(self) -> None:
        self.delays: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.delays.append(seconds)
        await asyncio.sleep(0)


def wait_while_held(hold: str) -> str:
    """Read-only, for the restart test: waits while the file `hold` exists (at most 120 s),
    so its runs are still in flight when the test kills the whole service."""
    path = Path(hold)
    for _ in range(12_000):
        if not path.exists():
            break
        time.sleep(0.01)  # sync tools run in a worker thread of the tool pool
    return f"released {path.name}"


def pid() -> int:
    """Read-only: the id of the process the tool runs in (which is where its spec says)."""
    return os.getpid()


async def pid_async() -> int:
    """Read-only, async: the id of the process the tool runs in."""
    return os.getpid()


def held(hold: str) -> int:
    """Read-only: appends a line to `hold`.started, waits while the file `hold` exists (at
    most 60 s), then answers the id of its process."""
    with open(f"{hold}.started", "a") as out:
        out.write("started\n")
    path = Path(hold)
    for _ in range(6000):
        if not path.exists():
            break
        time.sleep(0.01)  # sync tools run in a worker thread of their pool
    return os.getpid()


class _Broken:
    """A tool namespace whose lookup fails with an error the tool pool does not translate
    (not an AttributeError): `tests.tools_for_tests:broken.tool` reaches the run loop's
    internal-error path, as a bug in any port would."""

    @property
    def tool(self) -> str:
        raise RuntimeError("a bug behind the tool's name")


broken = _Broken()


def whoami(tenant: str, user: str | None, counter: str | None = None) -> dict[str, JsonValue]:
    """Read-only: the tenant and end user rayfleet passed it (whatever the model said); with
    `counter`, also appends the user to that file, counted at the tool."""
    calls["whoami"] += 1
    if counter is not None:
        with open(counter, "a") as out:
            out.write(f"{user}\n")
    return {"tenant": tenant, "user": user}


def big(size: int) -> str:
    """Read-only: `size` characters of two UTF-8 bytes each."""
    calls["big"] += 1
    return "é" * size
