"""Join the Ray cluster that serves rayfleet from another Python process (a Ray driver).

    from serve_app.join import join
    join()          # the head of this machine (`make serve`), or $RAY_ADDRESS

Two things `ray.init(address="auto")` alone gets wrong for a local head:

- Ray rewrites a loopback address (127.0.0.1, localhost) to this machine's outward IP
  unless its cluster mode is off, and a head started by `make serve` or
  cluster/start-local-head.sh listens on 127.0.0.1 only: the join then waits on an address
  nobody listens on. `join` keeps a loopback address as it is.
- An address nobody answers on (the head is not running, or stopped) makes Ray retry for
  minutes. `join` first checks that the head's GCS port answers, within `timeout_s`, and
  otherwise raises `JoinFailed` saying what to do.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import socket
from pathlib import Path
from typing import Any

# Ray's switch for its loopback rewrite; read when `ray` is first imported.
_CLUSTER_MODE_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"
_HOW_TO_START = (
    "Start rayfleet with `make serve` (or cluster/start-local-head.sh), or set RAY_ADDRESS "
    "to the head's GCS address (host:port, as `ray start --head` prints it)."
)


class JoinFailed(ConnectionError):
    """No Ray head answers at the address a driver would join."""


def join(address: str | None = None, timeout_s: float = 5.0, **init_kwargs: Any) -> None:
    """`ray.init(address=...)` for a driver of the rayfleet cluster: `address` as Ray takes
    it (default: $RAY_ADDRESS, else the head last started on this machine); fails within
    about `timeout_s` if nothing answers there. `init_kwargs` go to `ray.init`."""
    import ray
    from ray._private import ray_constants, services

    # $RAY_ADDRESS, else the head last started here; not Ray's fallback of "auto" to any
    # Ray it finds running on the machine (another user's, or a test's).
    # (Its `addr` is typed str but documented "may be None": None is what skips the fallback.)
    found: str | None = services.get_ray_address_from_environment(address, None)  # type: ignore[arg-type]
    if found is None:
        raise JoinFailed(f"no Ray head was started on this machine. {_HOW_TO_START}")
    host, _, port = found.rpartition(":")
    host = host.strip("[]")
    if _is_loopback(host):
        # Keep 127.0.0.1 as it is: the head listens there only (see the module docstring).
        os.environ[_CLUSTER_MODE_ENV] = "0"
        ray_constants.ENABLE_RAY_CLUSTER = False
    try:
        with socket.create_connection((host, int(port)), timeout=timeout_s):
            pass
    except (OSError, ValueError) as exc:
        raise JoinFailed(f"no Ray head answers at {found} ({exc}). {_HOW_TO_START}") from None
    # "auto" when no address was given: Ray then also picks up the local head's token.
    ray.init(address=address or "auto", **init_kwargs)


def record_head(gcs_address: str) -> None:
    """Record a head started with `ray.init()` as this machine's latest, as `ray start`
    does (ray.init alone does not): `join()` and `ray.init(address="auto")` look it up."""
    from ray._private import utils

    utils.write_ray_address(gcs_address)


def forget_head(gcs_address: str) -> None:
    """Undo `record_head` once that head has stopped, unless a newer head replaced it."""
    from ray._common.utils import get_ray_address_file

    path = Path(get_ray_address_file(None))
    with contextlib.suppress(OSError):
        if path.read_text().strip() == gcs_address:
            path.unlink()


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
