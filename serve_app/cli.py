"""The `rayfleet` command line: start the service, run an agent once, inspect runs, run the
provider simulator alone."""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import httpx2
import typer
import yaml
from rich.console import Console

from agents.events import (
    ModelCompleted,
    ModelDelta,
    RunCancelled,
    RunCompleted,
    RunCreated,
    RunFailed,
    ToolCalled,
    ToolResulted,
)
from agents.logs import configure_logging
from serve_app.sse import SSEDecoder

if TYPE_CHECKING:
    from serve_app.simulator.server import SimulatorThread

app = typer.Typer(help="rayfleet: serve AI agents in production on Ray.", no_args_is_help=True)
runs_app = typer.Typer(help="Inspect runs.", no_args_is_help=True)
app.add_typer(runs_app, name="runs")
keys_app = typer.Typer(help="API keys of tenants.", no_args_is_help=True)
app.add_typer(keys_app, name="keys")
console = Console(highlight=False)
err = Console(stderr=True, highlight=False)

DEFAULT_URL = "http://127.0.0.1:8000"
# The caller's key for the service (a tenant's); read once, never printed.
API_KEY = os.environ.get("RAYFLEET_API_KEY")
# Serve settings from DESIGN.md's measurements; the user's environment wins if it sets them.
SERVE_ENV = {
    "RAY_SERVE_THROUGHPUT_OPTIMIZED": "1",
    # A local head on one machine: keep Ray's own traffic on 127.0.0.1 (Ray otherwise
    # resolves loopback addresses to the machine's outward IP).
    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
}


@app.command()
def serve(
    port: Annotated[int, typer.Option(help="HTTP port of the Serve proxy.")] = 8000,
    config: Annotated[
        Path | None, typer.Option(help="YAML with the rayfleet app args (see cluster/serve.yaml).")
    ] = None,
    num_cpus: Annotated[int, typer.Option(help="CPUs the local Ray head offers.")] = 2,
    metrics_port: Annotated[
        int,
        typer.Option(
            help="Port of Ray's Prometheus endpoint (/metrics, rayfleet's metrics included) "
            "on 127.0.0.1; 0: a free one."
        ),
    ] = 8080,
    sim_port: Annotated[
        int, typer.Option(help="Port of the provider simulator on 127.0.0.1; 0: a free one.")
    ] = 0,
    state: Annotated[
        str | None,
        typer.Option(
            help="Where the state lives: postgresql://user:password@host/db or sqlite:///dir "
            "(default: SQLite in the data directory).",
            envvar="RAYFLEET_STATE_URL",
            show_envvar=True,
        ),
    ] = None,
) -> None:
    """Start a local Ray head with the rayfleet Serve app and its simulator; Ctrl-C stops all."""
    configure_logging("cli")
    for name, value in SERVE_ENV.items():
        os.environ.setdefault(name, value)  # before Ray starts: its processes inherit it
    args: dict[str, Any] = yaml.safe_load(config.read_text()) if config else {}
    _check_data_dir()
    state_url = _check_state(state, args.get("runtime", {}).get("state_url"))
    _check_metrics_port(metrics_port)
    sim = _start_simulator(sim_port)
    import ray

    # A head started by this process: other jobs join it with serve_app.join.join() (Ray's
    # address="auto" would rewrite 127.0.0.1), and it stops with this process. "local": always
    # a new head; without it Ray joins whatever $RAY_ADDRESS or /tmp/ray/ray_current_cluster
    # names (another `ray start` on this machine, or one long dead).
    ray.init(
        address="local",
        num_cpus=num_cpus,
        include_dashboard=False,
        _node_ip_address="127.0.0.1",
        # Ray's metrics agent serves it on the node's IP: here 127.0.0.1. A fixed port, as
        # on `ray start` clusters (KubeRay's 8080), so a Prometheus config can name it.
        _metrics_export_port=metrics_port or None,
        logging_level=logging.WARNING,
        # Other libraries' logs in Ray's processes as JSON lines too (rayfleet's own are
        # agents.logs' JSON, whatever this says); WARNING: as quiet as Ray's own.
        logging_config=ray.LoggingConfig(encoding="JSON", log_level="WARNING"),
        log_to_driver=False,
    )
    from serve_app.join import forget_head, record_head

    gcs_address = ray.get_runtime_context().gcs_address
    record_head(gcs_address)
    _stop_on_signals()
    try:
        _deploy(port, args, sim.base_url)
        console.print(f"rayfleet is serving at [bold]http://127.0.0.1:{port}[/] (Ctrl-C stops it)")
        console.print(f"  provider simulator: {sim.base_url} (its /_sim control API off)")
        console.print(f"  state: {state_url}", soft_wrap=True)  # a long URL on one line
        nodes = ray.nodes()  # type: ignore[no-untyped-call]
        exported = [n["MetricsExportPort"] for n in nodes if n.get("Alive")]
        console.print(f"  metrics (Prometheus): http://127.0.0.1:{exported[0]}/metrics")
        example = '{"input": "Where is order 1234?"}'
        console.print(
            f"  try: curl -N -H 'Accept: text/event-stream' -d '{example}' "
            f"http://127.0.0.1:{port}/v1/agents/support/runs"
        )
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        console.print("stopping rayfleet and its local Ray ...")
        ray.shutdown()
        forget_head(gcs_address)
        sim.stop()


def _stop_on_signals() -> None:
    """Ctrl-C (SIGINT) and SIGTERM (what a service manager sends) both stop `serve` cleanly,
    its Ray included: SIGINT even when it was started with SIGINT ignored (a background job
    of a script, nohup), which would otherwise leave it and its Ray running."""

    def stop(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, stop)


def _check_metrics_port(port: int) -> None:
    """Ray does not start at all when its metrics port is taken (its node times out after
    a minute): say so at once, and what to do."""
    if not port:
        return
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            err.print(
                f"[red]the metrics port 127.0.0.1:{port} is in use[/]: pass --metrics-port "
                "with a free port, or --metrics-port 0 to let Ray pick one"
            )
            raise typer.Exit(2) from None


def _check_data_dir() -> None:
    """Refuse a shared data directory now, not as failing actors after Ray started."""
    from actors.datadir import default_data_dir, private_dir
    from agents.errors import ConfigError

    try:
        private_dir(default_data_dir())
    except ConfigError as exc:
        err.print(f"[red]{exc}[/]")
        raise typer.Exit(2) from None


def _check_state(url: str | None, configured: str | None) -> str:
    """Refuse a state URL that is malformed or whose database does not answer, then put it
    in this process's environment: every Ray process started from here inherits it (the
    deploy config would show a password to whoever can read it). `configured`: the deploy
    config's `runtime.state_url`, which wins in every process. Returns the URL to show:
    without its password."""
    import asyncio
    import sqlite3

    from actors.state import STATE_URL_ENV, describe, open_state
    from agents.errors import ConfigError, ServiceUnavailable

    if url and configured and url != configured:
        err.print(
            f"[red]--state {describe(url)} and the config's runtime.state_url "
            f"{describe(configured)} differ[/]: give one"
        )
        raise typer.Exit(2)
    try:
        opened = open_state(url or configured)
    except ConfigError as exc:
        err.print(f"[red]{exc}[/]")
        raise typer.Exit(2) from None

    async def check() -> None:
        try:
            await opened.database("runs").fetchone("SELECT 1")
        finally:
            await opened.close()

    try:
        asyncio.run(check())
    except (ConfigError, ServiceUnavailable, sqlite3.Error) as exc:
        err.print(f"[red]cannot use the state at {describe(opened.url)}[/]: {exc}")
        raise typer.Exit(2) from None
    os.environ[STATE_URL_ENV] = opened.url
    return describe(opened.url)


def _start_simulator(port: int) -> SimulatorThread:
    """The provider simulator in a thread of this process, on its own loopback port: never
    behind the serving proxy, and with its request log and script API off."""
    from serve_app.simulator import SimSettings
    from serve_app.simulator.server import SimulatorThread

    sim = SimulatorThread(SimSettings(), port)
    sim.start()
    return sim


def _deploy(port: int, args: dict[str, Any], sim_url: str) -> None:
    from ray import serve as ray_serve

    from serve_app.app import APP_NAME, build

    ray_serve.start(http_options={"host": "127.0.0.1", "port": port})
    args.setdefault("runtime", {}).setdefault(
        "providers",
        {
            "sim-openai": {"kind": "openai", "base_url": f"{sim_url}/v1"},
            "sim-anthropic": {"kind": "anthropic", "base_url": sim_url},
        },
    )
    ray_serve.run(build(args), name=APP_NAME, route_prefix="/")


@app.command()
def sim(
    port: Annotated[int, typer.Option(help="Port on 127.0.0.1.")] = 8100,
    ttft_ms: Annotated[float, typer.Option(help="Time to first token.")] = 20.0,
    tokens_per_s: Annotated[float, typer.Option(help="Streaming pace; 0 = unpaced.")] = 0.0,
    control_api: Annotated[
        bool, typer.Option(help="Serve /_sim/* (scripted replies, the request log, faults).")
    ] = False,
) -> None:
    """Run the provider simulator alone (OpenAI and Anthropic wire formats on one port)."""
    from serve_app.simulator import SimSettings, run_simulator

    console.print(
        f"provider simulator on http://127.0.0.1:{port} "
        f"(OpenAI base_url .../v1, Anthropic base_url ...)"
    )
    settings = SimSettings(ttft_ms=ttft_ms, tokens_per_s=tokens_per_s, control_api=control_api)
    run_simulator("127.0.0.1", port, settings)


@app.command()
def run(
    agent: Annotated[str, typer.Argument(help="Agent name, e.g. support.")],
    input: Annotated[str, typer.Argument(help="What to ask.")],
    url: Annotated[str, typer.Option(help="The rayfleet service.")] = DEFAULT_URL,
    thread_id: Annotated[str | None, typer.Option(help="Continue a conversation.")] = None,
    version: Annotated[str | None, typer.Option(help="Pin an agent version.")] = None,
    timeout_s: Annotated[float, typer.Option(help="Give up after this long.")] = 600.0,
) -> None:
    """Run an agent once with live output: tokens, tool calls, the answer and its cost."""
    body: dict[str, Any] = {"input": input}
    body |= {k: v for k, v in {"thread_id": thread_id, "version": version}.items() if v}
    ok = _stream(f"{url}/v1/agents/{agent}/runs", "POST", body, timeout_s)
    raise typer.Exit(0 if ok else 1)


@runs_app.command("show")
def runs_show(
    run_id: str, url: Annotated[str, typer.Option(help="The rayfleet service.")] = DEFAULT_URL
) -> None:
    """Print a run's status, output, usage and cost as JSON."""
    response = _request("GET", f"{url}/v1/runs/{run_id}")
    console.print_json(response.text)
    raise typer.Exit(0 if response.status_code == 200 else 1)


@runs_app.command("events")
def runs_events(
    run_id: str,
    after: Annotated[int, typer.Option(help="Replay events after this seq.")] = 0,
    url: Annotated[str, typer.Option(help="The rayfleet service.")] = DEFAULT_URL,
) -> None:
    """Replay a run's events (and follow it live until it ends)."""
    ok = _stream(f"{url}/v1/runs/{run_id}/events?after={after}", "GET", None, 600.0)
    raise typer.Exit(0 if ok else 1)


@runs_app.command("cancel")
def runs_cancel(
    run_id: str, url: Annotated[str, typer.Option(help="The rayfleet service.")] = DEFAULT_URL
) -> None:
    """Cancel a running run."""
    response = _request("POST", f"{url}/v1/runs/{run_id}/cancel")
    console.print_json(response.text)
    raise typer.Exit(0 if response.status_code == 200 else 1)


@keys_app.command("new")
def keys_new() -> None:
    """Make a new API key: give the key to the tenant, put the digest in the deploy config
    (tenancy.tenants[].api_key_sha256). rayfleet never stores the key itself."""
    from serve_app.tenancy import new_api_key

    key, key_digest = new_api_key()
    console.print(f"key:    {key}")
    console.print(f"digest: {key_digest}")


@keys_app.command("digest")
def keys_digest(key: str) -> None:
    """The digest of an existing key, for the deploy config."""
    from serve_app.tenancy import digest

    console.print(digest(key))


def _request(method: str, url: str) -> httpx2.Response:
    try:
        return httpx2.request(method, url, timeout=30.0, headers=_auth())
    except httpx2.TransportError as exc:
        err.print(f"[red]cannot reach rayfleet at {url}[/]: {exc}. Start it with `make serve`.")
        raise typer.Exit(2) from None


def _stream(url: str, method: str, body: dict[str, Any] | None, timeout_s: float) -> bool:
    """Print a run's events as they arrive; True if it completed."""
    decoder = SSEDecoder()
    deadline = time.monotonic() + timeout_s
    try:
        with httpx2.stream(
            method,
            url,
            json=body,
            headers={"Accept": "text/event-stream", **_auth()},
            timeout=httpx2.Timeout(30.0, read=timeout_s),
        ) as response:
            if response.status_code >= 400:
                response.read()
                err.print(f"[red]{response.status_code}[/] {_detail(response)}")
                return False
            for line in response.iter_lines():
                event = decoder.feed(line)
                ended = _show(event) if event is not None else None
                if ended is not None:
                    return ended
                if time.monotonic() > deadline:
                    err.print("[red]gave up waiting[/]")
                    return False
    except httpx2.TransportError as exc:
        err.print(f"[red]cannot reach rayfleet at {url}[/]: {exc}. Start it with `make serve`.")
        raise typer.Exit(2) from None
    err.print("[red]the stream ended without a terminal event[/]")
    return False


def _auth() -> dict[str, str]:
    return {"Authorization": f"Bearer {API_KEY}"} if API_KEY else {}


def _detail(response: httpx2.Response) -> str:
    try:
        return str(response.json().get("detail", response.text))
    except ValueError:
        return response.text


def _show(event: object) -> bool | None:
    """Render one event; True/False once the run ended (completed or not), else None."""
    match event:
        case RunCreated():
            err.print(f"[dim]run {event.run_id} ({event.agent}@{event.version})[/]")
        case ModelDelta():
            console.print(event.text, end="")
        case ModelCompleted():
            if event.text:
                console.print()
            err.print(
                f"[dim]  {event.provider}/{event.model}: {event.usage.total_tokens} tokens, "
                f"${event.cost_usd:.6f}[/]"
            )
        case ToolCalled():
            console.print(f"[cyan]-> {event.tool}({json.dumps(event.arguments)})[/]")
        case ToolResulted():
            color = "green" if event.ok else "red"
            console.print(
                f"[{color}]<- {event.tool}: {(event.output or event.error or '')[:200]}[/]"
            )
        case RunCompleted():
            console.print(
                f"[bold]done[/] in {event.steps} steps, {event.usage.total_tokens} tokens, "
                f"${event.cost_usd:.6f}"
            )
            return True
        case RunFailed():
            err.print(f"[red]failed[/] ({event.code}): {event.message}")
            return False
        case RunCancelled():
            err.print(f"[yellow]cancelled[/]: {event.reason}")
            return False
    return None


if __name__ == "__main__":
    app()
