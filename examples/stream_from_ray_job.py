"""Stream an agent run from another Ray job on the same cluster, through a Serve handle.

    python examples/stream_from_ray_job.py support "Where is order 1234?"
    python examples/stream_from_ray_job.py --run-id RUN_ID --after 5     # resume after seq 5

Joins the cluster that runs the `rayfleet` Serve app with serve_app.join.join() (the head
last started on this machine, or $RAY_ADDRESS) and prints each event as one JSON line. The
handle calls are async: with RAY_SERVE_THROUGHPUT_OPTIMIZED=1 (rayfleet's default) a
blocking `.result()` from a driver is not supported, so use `await` / `async for` as below.
"""

from __future__ import annotations

import argparse
import asyncio

import ray
from ray import serve

from agents.events import is_terminal
from serve_app.join import join


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
    join(logging_level="ERROR", log_to_driver=False)  # fails in seconds if no head answers
    try:
        return asyncio.run(stream(args.agent, args.input, args.run_id, args.after))
    finally:
        ray.shutdown()


if __name__ == "__main__":
    raise SystemExit(main())
