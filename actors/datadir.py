"""Where rayfleet keeps its state on disk, and the check before it trusts a directory.

The data directory is `$RAYFLEET_DATA_DIR`, else `$XDG_DATA_HOME/rayfleet`, else
`~/.local/share/rayfleet`: never under /tmp, which is wiped on reboot and where another local
user can create the directory first and plant files (stores and caches read what they find).
Every store opens its directory through `private_dir`, so a directory another user owns or
can write to is refused, wherever it is configured.
"""

from __future__ import annotations

import functools
import os
import stat
from collections.abc import Mapping
from pathlib import Path

from agents.errors import ConfigError

DATA_DIR_ENV = "RAYFLEET_DATA_DIR"


def data_dir_from(environ: Mapping[str, str], home: Path) -> Path:
    """The data directory for this environment (pure: the process's is `default_data_dir`)."""
    explicit = environ.get(DATA_DIR_ENV)
    if explicit:
        return Path(explicit).expanduser().absolute()
    xdg = environ.get("XDG_DATA_HOME")
    # The XDG spec: a relative XDG_DATA_HOME is invalid and ignored.
    if xdg and Path(xdg).is_absolute():
        return Path(xdg) / "rayfleet"
    return home / ".local" / "share" / "rayfleet"


@functools.cache
def default_data_dir() -> Path:
    """This process's data directory; the environment is read once, here."""
    return data_dir_from(os.environ, Path.home())


def private_dir(path: str | Path) -> Path:
    """`path` as a directory only this user can write: created with mode 0700 if missing,
    refused (ConfigError) if it is owned by another user or group/world-writable."""
    directory = Path(path)
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    info = directory.stat()
    if not stat.S_ISDIR(info.st_mode):
        raise ConfigError(f"data directory {directory} is not a directory")
    if info.st_uid != os.geteuid():
        raise ConfigError(
            f"data directory {directory} is owned by uid {info.st_uid}, not by this user "
            f"(uid {os.geteuid()}): refusing to use it, since its owner could plant files "
            f"rayfleet reads. Use a directory of your own (set {DATA_DIR_ENV}, or the "
            "store's path in the config), or remove this one."
        )
    if info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise ConfigError(
            f"data directory {directory} is writable by its group or by everyone (mode "
            f"{stat.S_IMODE(info.st_mode):o}): refusing to use it, since others could plant "
            f"files rayfleet reads. Make it private (`chmod 700 {directory}`) or set "
            f"{DATA_DIR_ENV} to another directory."
        )
    return directory
