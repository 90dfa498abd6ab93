"""RuntimeSettings.state_url: where the state lives, checked at deploy time, never holding a
password (settings are logged, shown and passed to every actor)."""

from __future__ import annotations

import re

import pytest

from actors.settings import RuntimeSettings
from agents.errors import ConfigError
from serve_app.config import AppConfig


@pytest.mark.parametrize(
    "url", [None, "sqlite:///srv/rayfleet", "postgresql://rayfleet@db:5432/rayfleet"]
)
def test_a_url_without_a_password_is_taken(url: str | None) -> None:
    assert RuntimeSettings(state_url=url).state_url == url


@pytest.mark.parametrize(
    "url",
    [
        "postgresql://rayfleet:s3cret-pw@db:5432/rayfleet",
        "postgres://rayfleet:s3cret-pw@db/rayfleet?sslmode=require",
        "postgresql://rayfleet@db/rayfleet?sslmode=require&PASSWORD=s3cret-pw",
    ],
)
def test_a_url_with_a_password_is_refused_without_showing_it(url: str) -> None:
    with pytest.raises(ConfigError, match=r"holds a password.*RAYFLEET_STATE_URL") as refused:
        RuntimeSettings(state_url=url)
    assert "s3cret-pw" not in str(refused.value)
    with pytest.raises(ConfigError) as in_config:  # from a deploy config, the same
        AppConfig.from_args({"runtime": {"state_url": url}})
    assert "s3cret-pw" not in str(in_config.value)


@pytest.mark.parametrize("url", ["sqlite://relative/dir", "mysql://db/rayfleet", "/srv/state"])
def test_a_url_of_no_known_kind_is_refused(url: str) -> None:
    with pytest.raises(
        ConfigError, match=re.escape("expected postgresql://... or sqlite:///<dir>")
    ):
        RuntimeSettings(state_url=url)
