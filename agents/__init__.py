"""What an agent is, independent of Ray.

The spec, the step loop over ports, the typed events, the error tree, budgets and the
message/usage types shared with provider clients. Nothing in this package imports `ray`.
"""

from __future__ import annotations

# Marker checked by Ray workers at start-up: openai-agents also installs a package named
# `agents`, and importing theirs by accident must fail loudly, not subtly.
RAYFLEET_AGENTS = True
