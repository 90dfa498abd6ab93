"""The README's handle and MCP snippets, run verbatim from separate processes against
`rayfleet serve` (what `make serve` runs), as a new user would."""

from __future__ import annotations

import contextlib
import functools
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import httpx2
import pytest
import yaml

from tests.helpers import wait_for

pytestmark = pytest.mark.slow

ROOT = Path(__file__).parents[2]
SECTION = "### From another Ray job (Python handle)"
MCP_SECTION = "## rayfleet agents as MCP tools"
# What a fresh shell has not: the test session's own Ray settings (tests/conftest.py sets
# the first, a local ray.init the others), and any address of another cluster.
NOT_IN_A_FRESH_SHELL = (
    "RAY_ADDRESS",
    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER",
    "RAY_AUTH_MODE",
    "RAY_SERVE_THROUGHPUT_OPTIMIZED",
    "RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S",  # tests/conftest.py's, not a user's
)


def readme_snippet(heading: str = SECTION) -> str:
    """The first python block of a README section (default: the handle's)."""
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index(heading) :]
    found = re.search(r"```python\n(.*?)```", section, re.DOTALL)
    assert found is not None, "no python block in the README's handle section"
    return found.group(1)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def ray_tmp() -> Iterator[Path]:
    """Ray's temp dir for this test's head (RAY_TMPDIR): its own "latest cluster" file, so
    `address="auto"` finds this head and no other Ray on the machine. Short: Ray puts unix
    sockets under it."""
    path = Path(tempfile.mkdtemp(prefix="rf-", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def _env(ray_tmp: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in NOT_IN_A_FRESH_SHELL}
    return {**env, "RAY_TMPDIR": str(ray_tmp)}


def _stop(head: subprocess.Popen[bytes], ray_tmp: Path) -> None:
    """Stop `rayfleet serve` as Ctrl-C does (it shuts its Ray down), then end whatever of
    this head's Ray is left: only processes that name its temp dir, never `ray stop`, which
    would end every Ray on the machine (the test session's too)."""
    if head.poll() is None:
        head.send_signal(signal.SIGINT)
        try:
            head.wait(timeout=60)
        except subprocess.TimeoutExpired:
            head.kill()
            head.wait(timeout=30)
    for pid in _pids_naming(str(ray_tmp)):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def _pids_naming(text: str) -> list[int]:
    """Processes whose command line contains `text` (Linux /proc)."""
    pids = []
    for entry in Path("/proc").iterdir():
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except (OSError, ValueError):
            continue
        if entry.name.isdigit() and text in cmdline:
            pids.append(int(entry.name))
    return pids


def _serve(ray_tmp: Path) -> tuple[subprocess.Popen[bytes], Path, int]:
    """`rayfleet serve` on a free port, with its state under `ray_tmp`, once it serves."""
    port = _free_port()
    config = ray_tmp / "app.yaml"
    data = ray_tmp / "data"
    runtime = {"state_url": f"sqlite://{data}", "cache": {"directory": str(data / "cache")}}
    config.write_text(yaml.safe_dump({"runtime": runtime}))
    rayfleet = Path(sys.executable).parent / "rayfleet"
    log = ray_tmp / "serve.log"
    # Ray gives its raylet a fixed 30 s to start; on a machine this loaded that can pass, and
    # then `rayfleet serve` exits saying so. Only that failure is worth a second try.
    for attempt in range(2):
        with log.open("w") as out:
            head = subprocess.Popen(
                [str(rayfleet), "serve", "--port", str(port), "--config", str(config)],
                env=_env(ray_tmp),
                cwd=ray_tmp,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        try:
            wait_for(functools.partial(_serving_or_exited, head, port), 300, interval_s=1.0)
        except BaseException:
            _stop(head, ray_tmp)
            raise
        if head.poll() is None:
            return head, log, port
        _stop(head, ray_tmp)
        assert attempt == 0 and "timed out during startup" in log.read_text(), log.read_text()
    raise AssertionError("unreachable")


def _serving_or_exited(head: subprocess.Popen[bytes], port: int) -> bool:
    if head.poll() is not None:
        return True
    try:
        return httpx2.get(f"http://127.0.0.1:{port}/healthz", timeout=5).status_code == 200
    except httpx2.TransportError:
        return False


def test_the_readme_handle_and_mcp_snippets_run_against_rayfleet_serve(ray_tmp: Path) -> None:
    """Both snippets, as written (the MCP one on this test's port), against one `rayfleet
    serve`: a handle call from a driver of its own, and an MCP client at /mcp."""
    head, log, port = _serve(ray_tmp)
    try:
        _check_handle_snippet(ray_tmp)
        _check_mcp_snippet(ray_tmp, port)
    finally:
        _stop(head, ray_tmp)
    assert head.returncode == 0, log.read_text()[-5000:]  # Ctrl-C stopped it cleanly
    assert not (ray_tmp / "ray" / "ray_current_cluster").exists()  # it forgot its head
    assert not _pids_naming(str(ray_tmp))


def _run_snippet(ray_tmp: Path, code: str) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        [sys.executable, "-c", code],
        env=_env(ray_tmp),
        cwd=ray_tmp,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-5000:]
    return done


def _check_handle_snippet(ray_tmp: Path) -> None:
    done = _run_snippet(ray_tmp, readme_snippet())
    # "kind seq" lines (Ray may print its own warnings among them)
    printed = [line.split() for line in done.stdout.splitlines()]
    kinds = [words[0] for words in printed if len(words) == 2 and words[1].isdigit()]
    assert kinds[0] == "run.created" and kinds[-1] == "run.completed", done.stdout
    assert kinds.count("run.completed") == 1 and "tool.call" in kinds


def _check_mcp_snippet(ray_tmp: Path, port: int) -> None:
    snippet = readme_snippet(MCP_SECTION)
    assert "http://127.0.0.1:8000/mcp" in snippet
    done = _run_snippet(ray_tmp, snippet.replace(":8000/", f":{port}/"))
    lines = done.stdout.splitlines()
    assert any(line.startswith("support - ") for line in lines), done.stdout
    assert any(line.startswith("... run run-") for line in lines), done.stdout
    assert "... calling tool lookup_order" in lines, done.stdout
    assert lines[-1].startswith("run-"), done.stdout  # the run id, after the output


def test_a_join_with_no_head_fails_in_seconds_saying_what_to_do(ray_tmp: Path) -> None:
    no_head = f"127.0.0.1:{_free_port()}"  # nothing listens there
    done = subprocess.run(
        [sys.executable, "-c", "from serve_app.join import join; join()"],
        env={**_env(ray_tmp), "RAY_ADDRESS": no_head},
        capture_output=True,
        text=True,
        timeout=60,  # Ray alone retries for minutes
        check=False,
    )
    assert done.returncode != 0
    assert "JoinFailed" in done.stderr and no_head in done.stderr, done.stderr[-3000:]
    assert "make serve" in done.stderr
    # No head on this machine at all (an empty Ray temp dir): the same advice.
    empty = subprocess.run(
        [sys.executable, "-c", "from serve_app.join import join; join()"],
        env=_env(ray_tmp),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert "JoinFailed" in empty.stderr and "make serve" in empty.stderr, empty.stderr[-3000:]
