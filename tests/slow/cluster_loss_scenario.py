"""Lose a whole Ray + Serve cluster at once, with runs in flight, and start a new one on the
same PostgreSQL database (issue 10, "Whole-cluster loss on PostgreSQL").

This process plays what outlives the cluster: a private PostgreSQL server and the provider
simulator. Each cluster is a child process (`... cluster <dir> <sim url> <spec>`) that starts
Ray and the rayfleet app with a marker in its environment; every process Ray starts for it
(GCS, raylet, workers, Serve's controller and proxy, the replicas) inherits the marker, so
"the whole cluster" is every process whose environment holds it, found in /proc.

Cluster 1: run A completes; an admin kill switch (tenant `other`) and a rollback (support's
canary) are set; run P calls a side-effecting tool (`pay`) while runs B1..B3 are in flight.
The loss hits P at the worst moment: the tool has paid and the effect ledger holds its
outcome, P has even ended on its host, but its `tool.result` (hence all that followed) is not
stored (a trigger refuses it). Then every process of the cluster gets SIGKILL.

Cluster 2 (a new Ray, a new data directory, the same database): every run ends in exactly
one terminal event with contiguous seqs, A reads as it did, P paid once, each run has one
outcome and the outcomes cost what the runs did, the kill switch and the rollback hold,
today's spend is not less. Run by tests/slow/test_cluster_loss.py; exits non-zero if a
check fails.
"""

from __future__ import annotations

import json
import math
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import IO, Any, TypeVar

import httpx2
import psycopg

T = TypeVar("T")
ROOT = Path(__file__).parents[2]
MARK_ENV = "RAYFLEET_LOSS_MARK"
NAMESPACE = "rayfleet-loss"
KEY = "rf-loss-5c2a71"
OTHER_KEY = "rf-loss-other-0d93be"
ADMIN_KEY = "rf-loss-admin-e41f08"
AUTH = {"authorization": f"Bearer {KEY}"}
ADMIN = {"authorization": f"Bearer {ADMIN_KEY}"}
RUNS_URL = "/v1/agents/support/runs"
PAY_MODEL = "sim-pay"
"""Only the `pay` version of support uses it, so the replies scripted for it are P's."""
KILL_REASON = "tenant switched off before the loss"
START_S = 240.0
"""Bound on a cluster's start (Ray, Serve, the app): slow on a loaded 2-core machine."""
START_ATTEMPTS = 3
RUN_S = 180.0
"""Bound on one run's end, resumed runs included."""
PAY_SPEC = """\
name: support
version: pay
description: Pays what it is asked to.
system_prompt: Pay what you are asked to pay, once.
tiers:
  strong:
    chain:
      - {provider: sim-openai, model: sim-pay}
loop_tier: strong
tools:
  - name: pay
    description: Pay an amount.
    function: tests.tools_for_tests:pay
    side_effects: true
    parameters:
      type: object
      properties:
        counter: {type: string}
        amount: {type: integer}
      required: [counter, amount]
"""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until(condition: Callable[[], T], timeout_s: float, what: str) -> T:
    deadline = time.monotonic() + timeout_s
    while not (value := condition()):
        assert time.monotonic() < deadline, f"not within {timeout_s:g}s: {what}"
        time.sleep(0.2)  # poll interval
    return value


# -- a cluster: its driver process, and every process that carries its marker --------------


def serve_cluster(workdir: Path, sim_url: str, pay_spec: Path) -> int:
    """The driver of one cluster: start Ray and the app, write its port to
    `workdir/cluster.json`, then serve until stdin closes."""
    os.environ.setdefault("RAY_ENABLE_AUTO_CONNECT", "0")
    assert os.environ.get("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER") == "0"  # loopback only
    assert os.environ.get(MARK_ENV) and os.environ.get("RAYFLEET_STATE_URL")
    os.environ["RAY_SERVE_THROUGHPUT_OPTIMIZED"] = "1"
    import ray
    from ray import serve

    from actors.limiter import TenantLimits
    from actors.settings import RuntimeSettings, simulator_providers
    from agents.pricing import DEFAULT_PRICES
    from serve_app.app import APP_NAME, build_app
    from serve_app.config import AppConfig
    from serve_app.tenancy import TenancyConfig, TenantConfig, digest
    from serve_app.traffic import AgentTraffic, TrafficConfig

    runtime = RuntimeSettings(  # state_url unset: $RAYFLEET_STATE_URL, in every process
        providers=simulator_providers(sim_url),
        prices={**DEFAULT_PRICES, PAY_MODEL: DEFAULT_PRICES["sim-strong"]},
        namespace=NAMESPACE,
    )
    tenancy = TenancyConfig(
        tenants=(
            # Metered (a daily budget), so its spend is kept by the limiter.
            TenantConfig(
                id="loss",
                api_key_sha256=(digest(KEY),),
                limits=TenantLimits(daily_budget_usd=100.0),
            ),
            TenantConfig(id="other", api_key_sha256=(digest(OTHER_KEY),)),
        ),
        anonymous_tenant=None,
        admin_key_sha256=(digest(ADMIN_KEY),),
    )
    # `pay` is support's canary, rolled back before any run: unpinned runs all go to v1.
    traffic = TrafficConfig(
        agents={"support": AgentTraffic(weights={"v1": 1.0, "pay": 1.0}, canary="pay")}
    )
    config = AppConfig(
        agents=("example:support.yaml", str(pay_spec)),
        runtime=runtime,
        tenancy=tenancy,
        traffic=traffic,
    )
    ray.init(
        # A new cluster of its own, never one found on this machine (RAY_ADDRESS, or a
        # `ray start` cluster's address file in /tmp/ray).
        address="local",
        num_cpus=2,
        include_dashboard=False,
        _node_ip_address="127.0.0.1",
        namespace=NAMESPACE,
        logging_level="ERROR",
        log_to_driver=False,
    )
    try:
        port = _free_port()
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        serve.run(build_app(config), name=APP_NAME, route_prefix="/")
        written = workdir / "cluster.json.new"
        written.write_text(json.dumps({"port": port}))
        written.rename(workdir / "cluster.json")
        print(f"serving on 127.0.0.1:{port}", flush=True)
        sys.stdin.read()  # until the scenario dies (it kills the cluster itself otherwise)
    finally:
        ray.shutdown()
    return 0


def pids_with(mark: str) -> list[int]:
    """Live processes whose environment holds `mark` (NAME=value); a zombie has none."""
    wanted = mark.encode()
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            environ = Path(f"/proc/{entry}/environ").read_bytes()
        except OSError:  # gone meanwhile
            continue
        if wanted in environ.split(b"\0"):
            found.append(int(entry))
    return found


class Cluster:
    """One cluster: a driver process (serve_cluster) and every process it led Ray to start,
    each with the cluster's marker in its environment."""

    def __init__(self, name: str, base: Path, sim_url: str, pay_spec: Path) -> None:
        self.name = name
        self.dir = base / name
        self.dir.mkdir()
        self._command = [
            sys.executable,
            "-m",
            "tests.slow.cluster_loss_scenario",
            "cluster",
            str(self.dir),
            sim_url,
            str(pay_spec),
        ]
        self.mark = ""
        self.port = 0
        self._driver: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    def start(self) -> None:
        """Start it; again if Ray would not start (its raylet must register within 30 s,
        which a loaded machine can miss)."""
        for attempt in range(1, START_ATTEMPTS + 1):
            try:
                self._start(attempt)
                return
            except AssertionError as exc:
                print(f"{self.name}: start {attempt} failed: {exc}\n{self.log_tail()}", flush=True)
                self.kill_9()
                if attempt == START_ATTEMPTS:
                    raise

    def _start(self, attempt: int) -> None:
        self.mark = f"{MARK_ENV}={uuid.uuid4().hex}"
        data = self.dir / f"data-{attempt}"  # a node's disk: nothing on it outlives the node
        env = {**os.environ, MARK_ENV: self.mark.split("=", 1)[1], "RAYFLEET_DATA_DIR": str(data)}
        info = self.dir / "cluster.json"
        info.unlink(missing_ok=True)
        if self._log is not None:
            self._log.close()
        self._log = (self.dir / "driver.log").open("ab")
        self._driver = subprocess.Popen(
            self._command,
            cwd=ROOT,
            env=env,
            stdin=subprocess.PIPE,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        driver = self._driver

        def ready() -> bool:
            assert driver.poll() is None, f"the driver exited ({driver.returncode})"
            return info.exists()

        wait_until(ready, START_S, f"{self.name} serving")
        self.port = int(json.loads(info.read_text())["port"])

    def kill_9(self) -> int:
        """SIGKILL every process of the cluster, again until none is left; how many died."""
        killed: set[int] = set()
        for _ in range(300):  # a process forked meanwhile is caught by the next pass
            pids = pids_with(self.mark) if self.mark else []
            if not pids:
                break
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                killed.add(pid)
            time.sleep(0.05)  # let the kernel take them down before looking again
        left = pids_with(self.mark) if self.mark else []
        assert not left, f"{self.name}: processes outlived SIGKILL: {left}"
        if self._driver is not None:
            self._driver.wait(timeout=30)  # reap our child
        return len(killed)

    def stop(self) -> None:
        """Kill what is left of it (nothing of it is needed once the checks are done)."""
        self.kill_9()
        if self._driver is not None and self._driver.stdin is not None:
            self._driver.stdin.close()
        if self._log is not None:
            self._log.close()

    def log_tail(self, chars: int = 3000) -> str:
        path = self.dir / "driver.log"
        text = path.read_text(errors="replace") if path.exists() else ""
        return f"--- {self.name} driver log ---\n{text[-chars:]}"


# -- the database, seen from outside the cluster --------------------------------------------

_REFUSE_PAY_RESULT = """
CREATE FUNCTION refuse_pay_result() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.event LIKE '%"kind":"tool.result"%' AND NEW.event LIKE '%"tool":"pay"%' THEN
        RAISE EXCEPTION 'the test holds the pay result back';
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER refuse_pay_result BEFORE INSERT ON events
    FOR EACH ROW EXECUTE FUNCTION refuse_pay_result();
"""


def sql(url: str, statement: str, params: tuple[Any, ...] | None = None) -> list[tuple[Any, ...]]:
    with psycopg.connect(url, autocommit=True, connect_timeout=10) as db:
        cursor = db.execute(statement.encode(), params)
        return cursor.fetchall() if cursor.description else []


def run_slot_freed(url: str, run_id: str) -> bool:
    """The run's limiter lease is gone: its host ended the run (in memory, at least)."""
    context = json.loads(sql(url, "SELECT context FROM runs WHERE run_id = %s", (run_id,))[0][0])
    return not sql(url, "SELECT 1 FROM limiter_leases WHERE lease = %s", (context["lease"],))


def sessions(url: str) -> int:
    """Other sessions open on the database (the clusters' connections)."""
    query = (
        "SELECT count(*) FROM pg_stat_activity "
        "WHERE datname = current_database() AND pid <> pg_backend_pid()"
    )
    return int(sql(url, query)[0][0])


def effects_recorded(url: str) -> bool:
    try:
        return bool(sql(url, "SELECT count(*) FROM effects")[0][0])
    except psycopg.errors.UndefinedTable:  # no side effect recorded yet, ever
        return False


# -- the HTTP API ---------------------------------------------------------------------------


def start_run(http: httpx2.Client, text: str, version: str | None = None) -> str:
    body = {"input": text} if version is None else {"input": text, "version": version}
    response = http.post(RUNS_URL, json=body, headers=AUTH)
    assert response.status_code == 202, response.text
    return str(response.json()["run_id"])


def read_events(http: httpx2.Client, run_id: str) -> list[Any]:
    """The run's whole stream, from seq 1, live until its terminal event."""
    from agents.events import is_terminal
    from serve_app.sse import SSEDecoder

    events: list[Any] = []
    decoder = SSEDecoder()
    url = f"/v1/runs/{run_id}/events?after=0"
    with http.stream("GET", url, headers=AUTH, timeout=RUN_S) as response:
        assert response.status_code == 200, (run_id, response.status_code, response.read())
        for line in response.iter_lines():
            event = decoder.feed(line)
            if event is not None:
                events.append(event)
                if is_terminal(event):
                    break
    return events


def check_ended_once(run_id: str, events: list[Any]) -> None:
    from agents.events import is_terminal

    seqs = [e.seq for e in events]
    assert seqs == list(range(1, len(seqs) + 1)), (run_id, seqs)
    assert [is_terminal(e) for e in events].count(True) == 1, (run_id, seqs)
    assert events[-1].kind == "run.completed", (run_id, events[-1])


def spent_usd(http: httpx2.Client) -> float:
    tenants = http.get("/v1/admin/tenants", headers=ADMIN).json()["tenants"]
    return float(next(t for t in tenants if t["id"] == "loss")["usage"]["spent_usd"])


def utc_day() -> int:
    return int(time.time() // 86_400)


def script_pay(sim_url: str, counter: Path) -> None:
    """P's model turns: call `pay`, then answer. Cluster 1's answer costs less than the one
    the resumed run gets (so an outcome recorded from an end that was never stored shows),
    and one answer is to spare: a turn left to the simulator's policy could call `pay` again,
    with other arguments."""
    pay = {"counter": str(counter), "amount": 42}
    call = {"type": "tool_call", "model": PAY_MODEL, "name": "pay", "arguments": pay}

    def answer(output_tokens: int) -> dict[str, Any]:
        usage = {"output_tokens": output_tokens}
        return {"type": "text", "model": PAY_MODEL, "text": "Paid 42.", "usage": usage}

    replies = [call, answer(5), answer(500), answer(500)]
    scripted = httpx2.post(f"{sim_url}/_sim/script", json={"replies": replies}, timeout=10)
    assert scripted.status_code == 200, scripted.text


# -- the scenario ---------------------------------------------------------------------------


def before_the_loss(http: httpx2.Client, url: str, sim_url: str, counter: Path) -> dict[str, Any]:
    """Cluster 1's part: what was true before the loss, and the runs in flight at it."""
    rolled = http.post("/v1/admin/agents/support/rollback", headers=ADMIN)
    assert rolled.status_code == 200, rolled.text
    kill = {"scope": "tenants", "name": "other", "reason": KILL_REASON}
    killed = http.post("/v1/admin/kill", json=kill, headers=ADMIN)
    assert killed.status_code == 200, killed.text

    a = start_run(http, "Where is order 1001?")
    a_events = [e.model_dump(mode="json") for e in read_events(http, a)]
    a_body = http.get(f"/v1/runs/{a}", headers=AUTH).json()
    assert a_body["status"] == "completed" and a_body["version"] == "v1", a_body

    sql(url, _REFUSE_PAY_RESULT)
    script_pay(sim_url, counter)
    # P first: it ends after two model turns (pay, answer), while each B takes four (the
    # simulator's policy calls tools until `steps=4` turns are done).
    p = start_run(http, "Pay 42.", version="pay")
    bs = [start_run(http, f"Where is order {1002 + i}? steps=4") for i in range(3)]
    wait_until(lambda: effects_recorded(url), 60, "pay's outcome in the effect ledger")
    # Worse still: P has ended on its host, but not in the store (its tool.result, hence
    # everything after it, is refused).
    wait_until(lambda: run_slot_freed(url, p), 60, "P ended in cluster 1")
    spent = spent_usd(http)  # read at the last moment: no less may be left after the loss
    return {"a": a, "a_events": a_events, "a_body": a_body, "p": p, "bs": bs, "spent": spent}


def after_the_loss(http: httpx2.Client, before: dict[str, Any], sim_url: str, counter: Path) -> int:
    """Cluster 2's part: check every promise; returns how many runs it checked."""
    # First request of the new cluster: the kill switch holds from the start.
    refused = http.post(
        RUNS_URL, json={"input": "Hello"}, headers={"authorization": f"Bearer {OTHER_KEY}"}
    )
    assert refused.status_code == 503 and KILL_REASON in refused.text, refused.text

    run_ids = [before["a"], before["p"], *before["bs"]]
    with ThreadPoolExecutor(len(run_ids)) as pool:
        ended = dict(zip(run_ids, pool.map(lambda r: read_events(http, r), run_ids), strict=True))
    for run_id, events in ended.items():
        check_ended_once(run_id, events)

    assert [e.model_dump(mode="json") for e in ended[before["a"]]] == before["a_events"]
    assert http.get(f"/v1/runs/{before['a']}", headers=AUTH).json() == before["a_body"]

    paid = counter.read_text().splitlines()
    assert len(paid) == 1, f"paid {len(paid)} times: {paid}"  # counted at the tool
    results = [e for e in ended[before["p"]] if e.kind == "tool.result" and e.tool == "pay"]
    assert len(results) == 1 and results[0].ok, results
    # The resumed P asked the model once (for the answer), not for the call again.
    pending = httpx2.get(f"{sim_url}/_sim/script", timeout=10).json()["pending"]
    assert pending == 1, f"{pending} of P's 3 scripted answers left"

    agents = http.get("/v1/agents", headers=AUTH).json()["agents"]
    support = next(a for a in agents if a["name"] == "support")["traffic"]
    assert support["rolled_back"] is not None, support
    assert support["weights"].get("pay") == 0.0, support

    # One outcome per run, A's among them, its cost what the runs cost.
    def recorded() -> dict[str, Any] | None:
        report = http.get("/v1/admin/costs", headers=ADMIN).json()
        found = next((t["stats"] for t in report["tenants"] if t["tenant"] == "loss"), None)
        return found if found is not None and found["runs"] >= len(run_ids) else None

    stats = wait_until(recorded, 60, "every run's outcome recorded")
    assert stats["runs"] == stats["successes"] == len(run_ids), stats
    costs = [http.get(f"/v1/runs/{r}", headers=AUTH).json()["cost_usd"] for r in run_ids]
    assert math.isclose(stats["cost_usd"], sum(costs), rel_tol=1e-6), (stats, costs)

    if utc_day() == before["day"]:  # a new UTC day starts from nothing
        spent = spent_usd(http)
        assert spent >= before["spent"], (spent, before["spent"])
    return len(ended)


def scenario(base: Path) -> None:
    from serve_app.simulator import SimSettings
    from tests.fixtures_sim import SimServer
    from tests.postgres import PostgresServer

    started = time.monotonic()

    def say(what: str) -> None:
        print(f"[{time.monotonic() - started:5.1f}s] {what}", flush=True)

    pay_spec = base / "support-pay.yaml"
    pay_spec.write_text(PAY_SPEC)
    counter = base / "paid"
    with PostgresServer() as pg:
        url = pg.url(pg.create_database("rayfleet"))
        os.environ["RAYFLEET_STATE_URL"] = url  # every process of both clusters inherits it
        # Slow model turns keep B1..B3 in flight at the loss.
        sim = SimServer(SimSettings(ttft_ms=1500))
        sim.start()
        first = Cluster("cluster-1", base, sim.base_url, pay_spec)
        second = Cluster("cluster-2", base, sim.base_url, pay_spec)
        try:
            first.start()
            say(f"cluster 1 serving on port {first.port}")
            with httpx2.Client(base_url=f"http://127.0.0.1:{first.port}", timeout=60) as http:
                before = before_the_loss(http, url, sim.base_url, counter)
            before["day"] = utc_day()
            killed = first.kill_9()
            # The loss is complete once the database has dropped the dead cluster's sessions
            # (a statement a killed process had sent could still be running).
            wait_until(lambda: not sessions(url), 60, "cluster 1's database sessions gone")
            in_flight = {str(row[0]) for row in sql(url, "SELECT run_id FROM runs WHERE ended = 0")}
            sql(url, "DROP TRIGGER refuse_pay_result ON events")
            assert before["p"] in in_flight and before["a"] not in in_flight, in_flight
            assert in_flight & set(before["bs"]), f"no B run was in flight: {in_flight}"
            say(f"killed {killed} processes of cluster 1; {len(in_flight)} runs in flight")

            second.start()
            say(f"cluster 2 serving on port {second.port}")
            with httpx2.Client(base_url=f"http://127.0.0.1:{second.port}", timeout=60) as http:
                runs = after_the_loss(http, before, sim.base_url, counter)
            say(
                f"{runs} runs each ended once after the loss of the whole cluster "
                f"({len(in_flight)} resumed, paid once; kill switch, rollback and spend held)"
            )
        except BaseException:
            print(first.log_tail(), second.log_tail(), sep="\n", flush=True)
            raise
        finally:
            second.stop()
            first.stop()
            sim.stop()


def main() -> int:
    if sys.argv[1:2] == ["cluster"]:
        workdir, sim_url, pay_spec = sys.argv[2:5]
        return serve_cluster(Path(workdir), sim_url, Path(pay_spec))
    # Stopped from outside (the test's timeout): clean up in the finally blocks all the same.
    signal.signal(signal.SIGTERM, lambda _signum, _frame: sys.exit(143))
    with tempfile.TemporaryDirectory(prefix="rayfleet-loss-") as base:
        scenario(Path(base))
    return 0


if __name__ == "__main__":
    sys.exit(main())
