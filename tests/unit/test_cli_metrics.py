"""`rayfleet serve --metrics-port N`: a taken metrics port is refused before Ray starts (Ray
itself would time out starting its node, after a minute, without saying why)."""

from __future__ import annotations

import socket
from pathlib import Path

from tests.unit.test_cli_state import serve


def test_a_metrics_port_in_use_is_refused_before_ray_starts(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = serve(
            tmp_path, "--state", f"sqlite://{tmp_path / 'state'}", "--metrics-port", str(port)
        )
    assert done.returncode == 2, done.stderr
    assert f"the metrics port 127.0.0.1:{port} is in use" in done.stderr
    assert "--metrics-port 0" in done.stderr
