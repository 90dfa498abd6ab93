"""`rayfleet serve --state URL` (or $RAYFLEET_STATE_URL): a state it cannot use is refused
before Ray starts, and a password in the URL is never shown."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

from actors.state import STATE_URL_ENV


def serve(
    tmp_path: Path, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    environ = {**os.environ, "RAYFLEET_DATA_DIR": str(tmp_path / "data"), "COLUMNS": "200"}
    environ.pop(STATE_URL_ENV, None)
    return subprocess.run(
        [sys.executable, "-m", "serve_app.cli", "serve", "--port", "1", *args],
        env={**environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def closed_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_a_malformed_state_url_is_refused(tmp_path: Path) -> None:
    done = serve(tmp_path, "--state", "mysql://db/rayfleet")
    assert done.returncode == 2, done.stderr
    assert "expected postgresql://... or sqlite:///<dir>" in done.stderr


def test_a_database_that_does_not_answer_is_refused_without_showing_the_password(
    tmp_path: Path,
) -> None:
    url = f"postgresql://rayfleet:hunter2-secret@127.0.0.1:{closed_port()}/rayfleet"
    done = serve(tmp_path, env={STATE_URL_ENV: url})
    assert done.returncode == 2, done.stderr
    assert "cannot use the state at postgresql://rayfleet:***@127.0.0.1" in done.stderr
    assert "hunter2-secret" not in done.stderr + done.stdout


def test_the_flag_and_the_deploy_config_must_agree(tmp_path: Path) -> None:
    config = tmp_path / "serve.yaml"
    config.write_text(f"runtime:\n  state_url: sqlite://{tmp_path / 'one'}\n")
    done = serve(tmp_path, "--config", str(config), "--state", f"sqlite://{tmp_path / 'two'}")
    assert done.returncode == 2, done.stderr
    assert "differ" in done.stderr
