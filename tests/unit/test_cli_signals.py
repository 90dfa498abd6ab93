"""`rayfleet serve` stops cleanly on Ctrl-C and on SIGTERM, even when it was started with
SIGINT ignored (a background job of a script, nohup): otherwise it and its Ray stay up."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).parents[2]

PROGRAM = """
import os, signal, time
signal.signal(signal.SIGINT, signal.SIG_IGN)  # as inherited from `cmd &` in a script
from serve_app.cli import _stop_on_signals
_stop_on_signals()
for sig in (signal.SIGINT, signal.SIGTERM):
    try:
        os.kill(os.getpid(), sig)
        for _ in range(500):  # bounded: 5 s
            time.sleep(0.01)
        print("not stopped by", sig.name)
    except KeyboardInterrupt:
        print("stopped by", sig.name)
"""


def test_sigint_and_sigterm_stop_serve_even_with_sigint_ignored_at_start() -> None:
    done = subprocess.run(
        [sys.executable, "-c", PROGRAM],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.split("\n")[:2] == ["stopped by SIGINT", "stopped by SIGTERM"], done.stdout
