"""What rayfleet's metrics cost per step, measured where they are recorded: in a Ray actor
(a real core worker, with Ray's metric recorder on), not in a bare process where Ray's
metric calls record nothing.

A scripted run of the `support` agent (`--steps` steps, each a tool call but the last,
streamed in a few deltas) gives a real event list; the benchmark then times:

- the run host's derivation of the run's metrics from its events (actors.metrics.RunObserver,
  everything from runs started to tokens at its end), per step of the run;
- one model attempt's histogram point (actors.router, once per attempt);
- one group commit's histogram point (actors.run_host, once per commit, shared by the runs
  whose events it carries);
- a bare counter increment with three tags, for scale.

Usage: .venv/bin/python benchmarks/metrics_cost.py [--steps N] [--repeat N]
"""

from __future__ import annotations

import argparse
import asyncio
import time
from typing import Any

import ray


@ray.remote(num_cpus=0)
class _Bench:
    def run(self, steps: int, repeat: int) -> dict[str, Any]:
        from actors.metrics import RunObserver, attempt_ended, rayfleet_metrics
        from actors.tool_pool import ToolPool
        from agents.eventlog import EventLog
        from agents.examples import example_specs
        from agents.loop import Ports, RunInput, execute_run
        from agents.messages import ToolCall
        from tests.scripted import Reply, ScriptedModel

        spec = next(s for s in example_specs() if s.name == "support")
        call = ToolCall(id="c", name="lookup_order", arguments={"order_id": 1002})
        script = [
            Reply("Let me look at that order for you now.", (call,), chunks=4)
            for _ in range(steps - 1)
        ]
        script.append(Reply("It ships today; anything else I can do for you?", chunks=4))
        log = EventLog("run-1")
        request = RunInput(run_id="run-1", input="Where is order 1002?", tenant="acme")
        ports = Ports(model=ScriptedModel(script), tools=ToolPool())
        asyncio.run(execute_run(spec, request, ports, log))
        events = log.events()
        metrics = rayfleet_metrics()

        def cpu_us(work: Any, times: int) -> float:
            started = time.process_time()
            for _ in range(times):
                work()
            return (time.process_time() - started) / times * 1e6

        run_us = cpu_us(lambda: RunObserver(metrics, spec, "acme", []).observe(events), repeat)
        tags = {"agent": "support", "version": "v1", "tenant": "acme"}
        return {
            "events per run": len(events),
            "observer, per step (us)": run_us / steps,
            "model attempt (us)": cpu_us(lambda: attempt_ended("p", "ok", 0.5), repeat * 10),
            "group commit (us)": cpu_us(
                lambda: metrics.store_commit_seconds.observe(0.002, tags={"status": "ok"}),
                repeat * 10,
            ),
            "counter inc (us)": cpu_us(lambda: metrics.runs_started.inc(1.0, tags=tags), repeat),
        }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--repeat", type=int, default=2000)
    args = parser.parse_args()
    # address="local": a Ray of our own, whatever /tmp/ray/ray_current_cluster names.
    ray.init(address="local", num_cpus=1, include_dashboard=False, _node_ip_address="127.0.0.1")
    try:
        figures = ray.get(_Bench.remote().run.remote(args.steps, args.repeat))
    finally:
        ray.shutdown()
    print("one call in flight (sequential, in one actor); baseline: a bare Ray counter increment")
    for name, value in figures.items():
        print(f"{name:>26}: {value:.2f}" if isinstance(value, float) else f"{name:>26}: {value}")
    per_step = figures["observer, per step (us)"] / figures["counter inc (us)"]
    print(f"the run's metrics per step = {per_step:.1f}x a bare counter increment")


if __name__ == "__main__":
    main()
