"""Provider health: breaker states over hosts, counted, the worst named."""

from __future__ import annotations

from serve_app.health import provider_health


def test_each_breaker_counts_its_hosts_and_names_the_worst_state() -> None:
    report = provider_health(
        {
            "h1": {"sim-openai": "closed", "sim-anthropic": "half_open"},
            "h2": {"sim-openai": "open", "sim-openai#0123456789ab": "closed"},
            "h3": {},
        }
    )
    assert report.hosts == 3
    found = {b.breaker: (b.provider, b.state, b.hosts) for b in report.providers}
    assert found == {
        "sim-anthropic": ("sim-anthropic", "half_open", {"closed": 0, "half_open": 1, "open": 0}),
        "sim-openai": ("sim-openai", "open", {"closed": 1, "half_open": 0, "open": 1}),
        "sim-openai#0123456789ab": (
            "sim-openai",
            "closed",
            {"closed": 1, "half_open": 0, "open": 0},
        ),
    }


def test_no_hosts_no_breakers() -> None:
    assert provider_health({}).model_dump() == {"providers": [], "hosts": 0}
