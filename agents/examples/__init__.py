"""The example agents shipped with rayfleet: one YAML spec per agent, tools beside it.

`example_specs()` loads every `*.yaml` in this folder (package data). The tools are plain
async functions, deterministic and in-process, so tests and the simulator can run them.
"""

from __future__ import annotations

from pathlib import Path

from agents.spec import AgentSpec

EXAMPLES_DIR = Path(__file__).parent


def example_specs() -> list[AgentSpec]:
    """Every example agent spec, sorted by file name."""
    return [AgentSpec.from_yaml(path) for path in sorted(EXAMPLES_DIR.glob("*.yaml"))]
