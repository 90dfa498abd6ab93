"""What tracing costs per agent step: rayfleet with traces on (OTLP/HTTP, sampled 100%)
against the same rayfleet with traces off, side by side in one run.

Each mode gets its own fresh local Ray + Serve (the standard OTEL_* variables are read when a
process starts), in alternating rounds (off, on, off, on ...) so drift on a shared machine
hits both. Traces go to an OTLP/HTTP sink on 127.0.0.1 in this process, which counts the
spans it decodes. Same `support` agent and five-step input as benchmarks/step_overhead.py.

    latency: 8 runs in flight (--concurrency): added latency per step, on - off (p50, p99)
    CPU: 32 runs in flight (--cpu-concurrency): server CPU per step, on - off
        target: <= 0.3 ms CPU per step with tracing on
    in-process: the floor loop (execute_run + router + tool pool, no Ray) at 32 in flight
        with tracing off vs on (the SDK, batch processor and OTLP exporter in this process):
        the same cost without the whole service's noise (which is about +-1 ms/step)

Off must cost nothing measurable: with no exporter configured the tracer is OpenTelemetry's
no-op one, so the price is that of the no-op span calls a step makes; it is measured here
directly (per call, times the spans per step the sink saw), because it is far below the
noise of a whole-service measurement.

Usage: .venv/bin/python benchmarks/tracing.py [--quick] [--rounds N] [--runs N]
       [--concurrency C] [--cpu-runs N] [--cpu-concurrency C]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import threading
import time
import timeit
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as c
from step_overhead import http_phase

CPU_TARGET_MS = 0.3
OTEL_VARIABLES = ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_TRACES_SAMPLER")


class SpanSink:
    """An OTLP/HTTP trace endpoint that decodes each export and counts its spans."""

    def __init__(self) -> None:
        from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
            ExportTraceServiceRequest,
        )

        self.spans = 0
        self.exports = 0
        self.decode = True
        """False: only answer (the in-process phase counts this process's CPU)."""
        lock = threading.Lock()
        sink = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                if not sink.decode:
                    self.send_response(200)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                request = ExportTraceServiceRequest.FromString(body)
                count = sum(
                    len(scope.spans) for rs in request.resource_spans for scope in rs.scope_spans
                )
                with lock:
                    sink.spans += count
                    sink.exports += 1
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}/v1/traces"

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


async def one_mode(
    sim: c.Simulator, sink: SpanSink, on: bool, args: argparse.Namespace
) -> dict[str, Any]:
    for name in OTEL_VARIABLES:
        os.environ.pop(name, None)
    if on:
        os.environ["OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"] = sink.endpoint
        os.environ["OTEL_TRACES_SAMPLER"] = "always_on"
    try:
        async with c.rayfleet(c.app_config(sim), sim) as fleet:
            latency = await http_phase(fleet, args.runs, args.concurrency)
            spans0 = sink.spans
            cpu = await http_phase(fleet, args.cpu_runs, args.cpu_concurrency)
            # Spans end with their runs; the batch processor exports within its delay (5 s).
            await asyncio.sleep(6 if on else 0)
            spans = sink.spans - spans0
    finally:
        for name in OTEL_VARIABLES:
            os.environ.pop(name, None)
    return {"latency": latency, "cpu": cpu, "spans_per_step": spans / cpu["steps"]}


async def in_process(sim: c.Simulator, sink: SpanSink, on: bool, runs: int, n: int) -> float:
    """CPU ms per step of the floor loop in this process, traced or not."""
    from opentelemetry import trace
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    from agents.tracing import PinnedIds, use_provider

    provider = TracerProvider(id_generator=PinnedIds())
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=sink.endpoint)))
    if on:
        use_provider(provider)
    sink.decode = False
    floor = c.Floor(sim)
    try:
        await c.bounded(n, n, lambda i: floor.run(c.FIVE_STEP_INPUT))
        cpu0 = c.own_cpu_s()
        results = await c.bounded(runs, n, lambda i: floor.run(c.FIVE_STEP_INPUT))
        provider.force_flush()  # the export of these runs' spans is part of their cost
        cpu = c.own_cpu_s() - cpu0
    finally:
        await floor.aclose()
        use_provider(trace.NoOpTracerProvider())
        provider.shutdown()
        sink.decode = True
    return cpu * 1000 / (sum(r[1] for r in results) or 1)


def noop_span_cost_us() -> float:
    """CPU of one span through OpenTelemetry's no-op tracer (what off costs per span)."""
    from agents.tracing import tracer

    def span() -> None:
        with tracer().start_as_current_span("step", attributes={"rayfleet.step": 1}):
            pass

    number = 200_000
    cpu0 = time.process_time()
    timeit.timeit(span, number=number)
    return (time.process_time() - cpu0) / number * 1e6


async def amain(args: argparse.Namespace) -> None:
    sink = SpanSink()
    results: dict[bool, list[dict[str, Any]]] = {False: [], True: []}
    floor: dict[bool, list[float]] = {False: [], True: []}
    try:
        with c.simulator(args.ttft_ms) as sim:
            for round_ in range(args.rounds * 2):
                for on in (False, True):
                    n = args.cpu_concurrency
                    floor[on].append(await in_process(sim, sink, on, args.cpu_runs, n))
                    print(
                        f"in-process round {round_ + 1}, tracing {'on' if on else 'off'}: "
                        f"{floor[on][-1]:.3f} ms/step at {n} in flight",
                        flush=True,
                    )
            for round_ in range(args.rounds):
                for on in (False, True):
                    result = await one_mode(sim, sink, on, args)
                    results[on].append(result)
                    print(
                        f"round {round_ + 1}, tracing {'on' if on else 'off'}: CPU "
                        f"{result['cpu']['cpu_ms_per_step']:.2f} ms/step at "
                        f"{args.cpu_concurrency} in flight; run p50 "
                        f"{result['latency']['p50_s'] * 1000:.0f} ms at {args.concurrency}",
                        flush=True,
                    )
    finally:
        sink.close()
    report(results, floor, args)


def mean(values: list[float]) -> float:
    return sum(values) / len(values)


def mean_by_kind(rs: list[dict[str, Any]]) -> dict[str, float]:
    """CPU ms/step by process kind at the CPU concurrency, averaged over the rounds."""
    kinds = {k for r in rs for k in r["cpu"]["cpu_by_kind_ms_per_step"]}
    return {k: mean([r["cpu"]["cpu_by_kind_ms_per_step"].get(k, 0.0) for r in rs]) for k in kinds}


def report(
    results: dict[bool, list[dict[str, Any]]],
    floor: dict[bool, list[float]],
    args: argparse.Namespace,
) -> None:
    off, on = results[False], results[True]
    cpu_off = mean([r["cpu"]["cpu_ms_per_step"] for r in off])
    cpu_on = mean([r["cpu"]["cpu_ms_per_step"] for r in on])
    steps_per_run = on[0]["latency"]["steps"] / on[0]["latency"]["runs"]

    def latency(rs: list[dict[str, Any]], key: str) -> float:
        return mean([r["latency"][key] for r in rs]) * 1000 / steps_per_run

    spans = mean([r["spans_per_step"] for r in on])
    noop_us = noop_span_cost_us()
    print(f"\n-- {args.rounds} rounds per mode; means --")
    print(
        f"server CPU per step at {args.cpu_concurrency} in flight: off {cpu_off:.3f} ms, "
        f"on {cpu_on:.3f} ms = {c.ratio(cpu_on, cpu_off):.3f}x; added "
        f"{cpu_on - cpu_off:+.3f} ms/step (target <= {CPU_TARGET_MS} ms)"
    )
    print(
        f"added latency per step at {args.concurrency} in flight (on - off): p50 "
        f"{latency(on, 'p50_s') - latency(off, 'p50_s'):+.2f} ms, p99 "
        f"{latency(on, 'p99_s') - latency(off, 'p99_s'):+.2f} ms"
    )
    print(f"spans exported per step with tracing on: {spans:.2f}")
    floor_off, floor_on = mean(floor[False]), mean(floor[True])
    print(
        f"in-process floor at {args.cpu_concurrency} in flight: off {floor_off:.3f} ms/step, "
        f"on {floor_on:.3f} ms/step = {c.ratio(floor_on, floor_off):.2f}x; tracing adds "
        f"{floor_on - floor_off:+.3f} ms/step (target <= {CPU_TARGET_MS} ms)"
    )
    print(
        f"tracing off: {noop_us:.2f} us of CPU per no-op span x {spans:.2f} spans per step = "
        f"{noop_us * spans / 1000:.4f} ms per step"
    )
    tables = {"off": mean_by_kind(off), "on": mean_by_kind(on)}
    print()
    print(c.by_process_table(tables, "ms/step", top=12))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smoke mode, ~2 min")
    parser.add_argument("--rounds", type=int, default=None, help="rounds per mode (2)")
    parser.add_argument("--runs", type=int, default=None, help="runs per latency phase (64)")
    parser.add_argument("--concurrency", type=int, default=8, help="in flight, latency phases")
    parser.add_argument("--cpu-runs", type=int, default=None, help="runs per CPU phase (160)")
    parser.add_argument("--cpu-concurrency", type=int, default=32, help="in flight, CPU phases")
    parser.add_argument("--ttft-ms", type=float, default=200.0)
    args = parser.parse_args()
    if args.rounds is None:
        args.rounds = 1 if args.quick else 2
    if args.runs is None:
        args.runs = args.concurrency if args.quick else 64
    if args.cpu_runs is None:
        args.cpu_runs = args.cpu_concurrency if args.quick else 160
    c.header("tracing on vs off", args)
    asyncio.run(asyncio.wait_for(amain(args), timeout=1800))


if __name__ == "__main__":
    main()
