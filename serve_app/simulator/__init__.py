"""The provider simulator: an HTTP server speaking the OpenAI and Anthropic wire protocols.

It is the embedded default provider when no key is configured and what the tests talk to.
Policy mode (default) answers with a deterministic rule-based model. With
`SimSettings.control_api` on (tests, local experiments; off by default), scripted mode
(`POST /_sim/script`) lets a test queue exact replies, errors, delays and dropped streams,
`GET /_sim/requests` shows the requests it saw, and random fault injection
(`POST /_sim/faults`) fails a share of requests, for load tests.
"""

from __future__ import annotations

from serve_app.simulator.app import SimSettings, build_simulator_app, run_simulator

__all__ = ["SimSettings", "build_simulator_app", "run_simulator"]
