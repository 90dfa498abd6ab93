"""Stream an agent run from another Ray job on the same cluster, through a Serve handle.

    python examples/stream_from_ray_job.py support "Where is order 1234?"
    python examples/stream_from_ray_job.py --run-id RUN_ID --after 5     # resume after seq 5

Connects with ray.init(address="auto") (or $RAY_ADDRESS) to the cluster that runs the
`rayfleet` Serve app and prints each event as one JSON line. The handle calls are async:
with RAY_SERVE_THROUGHPUT_OPTIMIZED=1 (rayfleet's default) a blocking `.result()` from a
driver is not supported, so use `await` / `async for` as below.
"""

from __future__ import annotations

import argparse
import asyncio
import os

# A local head (`make serve`, cluster/start-local-head.sh) listens on 127.0.0.1 only, and
# Ray would resolve a loopback address to this machine's outward IP unless its cluster mode
# is off. Joining a head on another machine (RAY_ADDRESS=<its ip>:6379) is unaffected.
if os.environ.get("RAY_ADDRESS", "auto").split(":")[0] in ("auto", "127.0.0.1", "localhost"):
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")

import ray  # imported after the environment above, which Ray reads at import
from ray import serve

from agents.events import is_terminal


async def stream(agent: str, text: str, run_id: str | None, after: int) -> int:
    handle = serve.get_app_handle("rayfleet")
    if run_id is None:
        events = handle.options(stream=True, method_name="stream_run").remote(
            agent=agent, input=text
        )
    else:
        events = handle.options(stream=True, method_name="stream_events").remote(
            run_id=run_id, after=after
        )
    terminal = 0
    async for event in events:  # typed events: pydantic models with kind, run_id, seq
        print(event.model_dump_json(), flush=True)
        terminal += is_terminal(event)
    return 0 if terminal == 1 else 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("agent", nargs="?", default="support")
    parser.add_argument("input", nargs="?", default="Where is order 1234?")
    parser.add_argument("--run-id", help="resume this run instead of starting one")
    parser.add_argument("--after", type=int, default=0, help="resume after this seq")
    args = parser.parse_args()
    ray.init(address="auto", logging_level="ERROR", log_to_driver=False)
    try:
        return asyncio.run(stream(args.agent, args.input, args.run_id, args.after))
    finally:
        ray.shutdown()


if __name__ == "__main__":
    raise SystemExit(main())
