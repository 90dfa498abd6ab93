"""The data directory: private, outside /tmp, refused when another user could plant files."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from actors.caches import CacheSettings, CacheStore
from actors.datadir import DATA_DIR_ENV, data_dir_from, default_data_dir, private_dir
from actors.settings import RuntimeSettings
from actors.state import STATE_URL_ENV, State, resolve_state_url
from agents.errors import ConfigError

HOME = Path("/home/someone")


def test_the_data_dir_is_outside_tmp_by_xdg_unless_overridden() -> None:
    assert data_dir_from({}, HOME) == HOME / ".local/share/rayfleet"
    assert data_dir_from({"XDG_DATA_HOME": "/data/xdg"}, HOME) == Path("/data/xdg/rayfleet")
    # A relative XDG_DATA_HOME is invalid by the XDG spec: ignored.
    assert data_dir_from({"XDG_DATA_HOME": "rel/xdg"}, HOME) == HOME / ".local/share/rayfleet"
    env = {DATA_DIR_ENV: "/srv/rayfleet", "XDG_DATA_HOME": "/data/xdg"}
    assert data_dir_from(env, HOME) == Path("/srv/rayfleet")


def test_every_default_path_is_in_the_data_dir() -> None:
    settings = RuntimeSettings()
    base = default_data_dir()  # the tests' own (tests/conftest.py sets RAYFLEET_DATA_DIR)
    assert settings.state_url is None
    assert resolve_state_url(settings.state_url, environ={}) == f"sqlite://{base}"
    env = {STATE_URL_ENV: "postgresql://rayfleet@db.internal/rayfleet"}
    assert resolve_state_url(None, environ=env) == env[STATE_URL_ENV]
    assert resolve_state_url("sqlite:///srv/state", environ=env) == "sqlite:///srv/state"
    assert Path(settings.cache.directory) == Path(CacheSettings().directory) == base / "cache"


def test_a_new_data_dir_is_created_private(tmp_path: Path) -> None:
    made = private_dir(tmp_path / "deep" / "rayfleet")
    assert made.is_dir()
    assert stat.S_IMODE(made.stat().st_mode) == 0o700
    assert private_dir(made) == made  # an existing private one is used as it is


@pytest.mark.parametrize("mode", [0o770, 0o707, 0o777, 0o1777])
def test_a_group_or_world_writable_data_dir_is_refused(tmp_path: Path, mode: int) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(mode)
    with pytest.raises(ConfigError, match=f"writable by its group or by everyone.*{DATA_DIR_ENV}"):
        private_dir(shared)
    # Every concern's SQLite database refuses it too, before it opens a file there.
    state = State(f"sqlite://{shared}")
    for concern in ("runs", "outcomes", "memory", "ledger", "limiter"):
        with pytest.raises(ConfigError, match="writable"):
            state.database(concern)
    assert list(shared.iterdir()) == []


def test_a_data_dir_owned_by_another_user_is_refused(tmp_path: Path) -> None:
    # Another user's directory: as root, one given to `nobody`; otherwise /, which is root's.
    theirs = Path("/")
    if os.geteuid() == 0:
        theirs = tmp_path / "theirs"
        theirs.mkdir(mode=0o755)
        os.chown(theirs, 65534, 65534)
    with pytest.raises(ConfigError, match=r"owned by uid \d+, not by this user"):
        private_dir(theirs)


def test_the_cache_never_opens_a_shared_directory(tmp_path: Path) -> None:
    shared = tmp_path / "cache"
    shared.mkdir()
    shared.chmod(0o777)
    planted = shared / "cache.db"
    store = CacheStore(str(shared), clock=lambda: 0.0)
    store.set("key", "value", ttl_s=60)  # a miss, logged: never an error
    assert store.get("key") is None
    assert not planted.exists()  # diskcache never opened the directory


def test_rayfleet_serve_refuses_a_shared_data_dir_before_starting_anything(
    tmp_path: Path,
) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    env = {**os.environ, DATA_DIR_ENV: str(shared), "COLUMNS": "200"}
    done = subprocess.run(
        [sys.executable, "-m", "serve_app.cli", "serve", "--port", "1"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 2, done.stderr
    assert f"data directory {shared} is writable by its group or by everyone" in done.stderr
    assert list(shared.iterdir()) == []  # nothing was written there
