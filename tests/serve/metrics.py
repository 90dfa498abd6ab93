"""Ray's Prometheus endpoint on the session's node, read as a Prometheus server would."""

from __future__ import annotations

import re
from collections.abc import Callable

import httpx2

from tests.helpers import wait_for

_SAMPLE = re.compile(r"^(?P<name>[a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(?P<labels>.*)\})? (?P<value>\S+)")
_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def metrics_url() -> str:
    """This node's metrics endpoint (Ray's metrics agent, in the dashboard agent)."""
    import ray

    ports = [n["MetricsExportPort"] for n in ray.nodes() if n.get("Alive")]
    assert ports and ports[0], f"no metrics export port in {ray.nodes()}"
    return f"http://127.0.0.1:{ports[0]}/metrics"


def samples(page: str, name: str) -> list[tuple[dict[str, str], float]]:
    """Every sample of metric `name` on an exposition page: (labels, value)."""
    found = []
    for line in page.splitlines():
        match = _SAMPLE.match(line)
        if match and match["name"] == name:
            labels = dict(_LABEL.findall(match["labels"] or ""))
            found.append((labels, float(match["value"])))
    return found


def scrape_until(holds: Callable[[str], bool], timeout_s: float = 90.0) -> tuple[str, str]:
    """(url, page) once the endpoint answers 200 with a page for which `holds` is true.
    Fails if it never does: Ray exports every ~10 s, the outcome actor publishes every 5 s."""
    url = metrics_url()

    def page() -> str | None:
        try:
            response = httpx2.get(url, timeout=10)
        except httpx2.TransportError:
            return None
        return response.text if response.status_code == 200 and holds(response.text) else None

    return url, wait_for(page, timeout_s, 0.5)
