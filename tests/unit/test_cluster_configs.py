"""Every YAML under cluster/ is valid: Ray's own schemas, and each app's `args` with ours."""

from __future__ import annotations

import copy
import importlib
import json
import re
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import ray
import yaml
from pydantic import BaseModel, ValidationError
from ray.serve.schema import HTTPOptionsSchema, ServeApplicationSchema, ServeDeploySchema

from actors.state import STATE_URL_ENV
from agents.errors import ConfigError
from serve_app.config import AppConfig
from serve_app.simulator import SimSettings
from serve_app.tenancy import PUBLISHED_EXAMPLE_KEYS, TenancyConfig, digest
from serve_app.traffic import TrafficConfig

ROOT = Path(__file__).resolve().parents[2]
CLUSTER = ROOT / "cluster"
THROUGHPUT_ENV = "RAY_SERVE_THROUGHPUT_OPTIMIZED"


def load(name: str) -> Any:
    return yaml.safe_load((CLUSTER / name).read_text())


def validate_app_config(args: dict[str, Any]) -> object:
    config = AppConfig.from_args(args)
    config.load_specs()  # every agent's providers must be configured
    return config


# import_path -> how its `args` are validated (what the builder itself does first).
ARG_VALIDATORS: dict[str, Callable[[dict[str, Any]], object]] = {
    "serve_app.app:build": validate_app_config,
    "serve_app.simulator.deployment:build": SimSettings.model_validate,
}


def assert_known_keys(data: dict[str, Any], model: type[BaseModel], where: str) -> None:
    # Ray's Serve schemas ignore unknown keys: a misspelt `route_prefx` would be dropped
    # silently, so check the names ourselves.
    unknown = set(data) - set(model.model_fields)
    assert not unknown, f"{where}: unknown keys {sorted(unknown)} for {model.__name__}"


def validate_serve_config(config: dict[str, Any], where: str) -> ServeDeploySchema:
    """Ray's schema, no key Ray would ignore, and every app's args by rayfleet's models."""
    schema = ServeDeploySchema.model_validate(config)
    assert_known_keys(config, ServeDeploySchema, where)
    assert_known_keys(config.get("http_options", {}), HTTPOptionsSchema, f"{where} http_options")
    for app in config["applications"]:
        assert_known_keys(app, ServeApplicationSchema, f"{where} app {app['name']}")
        validator = ARG_VALIDATORS[app["import_path"]]
        validator(app.get("args") or {})
        module, _, attr = app["import_path"].partition(":")
        assert callable(getattr(importlib.import_module(module), attr))
    return schema


def test_every_yaml_in_cluster_is_checked_here() -> None:
    found = {p.name for p in CLUSTER.iterdir() if p.suffix in (".yaml", ".yml")}
    expected = {
        "serve.yaml",
        "canary.yaml",
        "ray-cluster.yaml",
        "kuberay-rayservice.yaml",
        "secrets.example.yaml",
    }
    assert found == expected, "a new YAML under cluster/ needs a validating test in this file"
    for name in found:
        assert isinstance(load(name), dict)


def test_serve_yaml_is_valid_for_serve_and_for_rayfleet() -> None:
    config = load("serve.yaml")
    schema = validate_serve_config(config, "serve.yaml")
    assert schema.http_options.host == "127.0.0.1"
    assert schema.http_options.port == 8000
    apps = {app.name: app for app in schema.applications}
    assert set(apps) == {"rayfleet", "rayfleet-sim"}
    assert apps["rayfleet"].import_path == "serve_app.app:build"
    assert apps["rayfleet"].route_prefix == "/"
    assert apps["rayfleet-sim"].import_path == "serve_app.simulator.deployment:build"
    assert apps["rayfleet-sim"].route_prefix == "/sim"


def test_serve_yaml_tenants_are_valid_gateway_user_config() -> None:
    config = load("serve.yaml")
    app = next(a for a in config["applications"] if a["name"] == "rayfleet")
    gateway = next(d for d in app["deployments"] if d["name"] == "gateway")
    tenancy = TenancyConfig.model_validate(gateway["user_config"])
    assert tenancy.anonymous_tenant is None
    assert {t.id for t in tenancy.tenants} == {"acme"}
    broken = copy.deepcopy(gateway["user_config"])
    broken["tenants"][0]["limits"]["requests_per_minute"] = 5
    with pytest.raises(ValidationError, match="requests_per_minute"):
        TenancyConfig.model_validate(broken)


def gateway_user_config(name: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """The rayfleet app's `args` and its gateway's `user_config` in cluster/<name>."""
    app = next(a for a in load(name)["applications"] if a["name"] == "rayfleet")
    gateway = next(d for d in app["deployments"] if d["name"] == "gateway")
    return app["args"], gateway["user_config"]


def split_user_config(user_config: dict[str, Any]) -> tuple[TenancyConfig, TrafficConfig]:
    """What Gateway.reconfigure does with it: `traffic` apart, the rest is tenancy."""
    data = copy.deepcopy(user_config)
    traffic = TrafficConfig.model_validate(data.pop("traffic", {}))
    return TenancyConfig.model_validate(data), traffic


def test_canary_yaml_is_valid_for_serve_and_for_rayfleet() -> None:
    config = load("canary.yaml")
    schema = validate_serve_config(config, "canary.yaml")
    apps = {app.name: app for app in schema.applications}
    assert set(apps) == {"rayfleet", "rayfleet-sim"}
    args, user_config = gateway_user_config("canary.yaml")
    specs = AppConfig.from_args(args).load_specs()
    assert [s.key for s in specs] == ["support@v1", "support@v2", "support@v3"]
    tenancy, traffic = split_user_config(user_config)
    assert {t.id for t in tenancy.tenants} == {"acme"}
    versions: dict[str, list[str]] = {}
    for spec in specs:
        versions.setdefault(spec.name, []).append(spec.version)
    traffic.check_against(versions)  # every version it names is deployed
    support = traffic.agents["support"]
    assert support.weights == {"v1": 90, "v2": 10}
    assert (support.stable_version, support.canary) == ("v1", "v2")
    assert [(r.version, r.sample, r.primary) for r in support.shadows] == [("v3", 0.2, "v1")]
    # The example's v3 must keep a dry-run answer for its side-effecting tool: it is shadowed.
    v3 = next(s for s in specs if s.version == "v3")
    assert all(t.dry_run_result is not None for t in v3.tools if t.side_effects)


def test_canary_yaml_traffic_naming_an_undeployed_version_fails() -> None:
    args, user_config = gateway_user_config("canary.yaml")
    versions = {"support": [s.version for s in AppConfig.from_args(args).load_specs()]}
    broken = copy.deepcopy(user_config)
    broken["traffic"]["agents"]["support"]["shadows"][0]["version"] = "v9"
    _, traffic = split_user_config(broken)
    with pytest.raises(ValueError, match="v9"):
        traffic.check_against(versions)
    broken = copy.deepcopy(user_config)
    broken["traffic"]["agents"]["support"]["gate"]["min_run"] = 5
    with pytest.raises(ValidationError, match="min_run"):
        split_user_config(broken)


def test_serve_yaml_points_the_providers_at_the_simulator_app() -> None:
    config = load("serve.yaml")
    args = next(a["args"] for a in config["applications"] if a["name"] == "rayfleet")
    runtime = AppConfig.from_args(args).runtime
    sim_root = f"http://127.0.0.1:{config['http_options']['port']}/sim"
    assert {name: p.base_url for name, p in runtime.providers.items()} == {
        "sim-openai": f"{sim_root}/v1",
        "sim-anthropic": sim_root,
    }
    assert runtime.runs_per_actor >= 1 and runtime.namespace == "rayfleet"


def test_the_builders_accept_the_serve_yaml_args() -> None:
    # Building an application only binds deployments: no Ray needed.
    for app in load("serve.yaml")["applications"]:
        module, _, attr = app["import_path"].partition(":")
        built = getattr(importlib.import_module(module), attr)(app.get("args") or {})
        assert type(built).__name__ == "Application"


def test_a_typo_in_the_rayfleet_args_fails_naming_the_field() -> None:
    config = copy.deepcopy(load("serve.yaml"))
    args = next(a["args"] for a in config["applications"] if a["name"] == "rayfleet")
    args["runtime"]["runs_per_actr"] = 4
    ServeDeploySchema.model_validate(config)  # Serve cannot see it: `args` is opaque to Ray
    with pytest.raises(ConfigError) as raised:
        validate_serve_config(config, "modified serve.yaml")
    assert "runtime.runs_per_actr" in str(raised.value)

    args["runtime"].pop("runs_per_actr")
    args["runtime"]["providers"]["sim-openai"]["kind"] = "openia"
    with pytest.raises(ConfigError) as raised:
        validate_serve_config(config, "modified serve.yaml")
    assert "runtime.providers.sim-openai.kind" in str(raised.value)


def test_a_typo_in_the_simulator_args_fails_naming_the_field() -> None:
    config = copy.deepcopy(load("serve.yaml"))
    args = next(a["args"] for a in config["applications"] if a["name"] == "rayfleet-sim")
    args["ttft"] = 5
    with pytest.raises(ValidationError) as raised:
        validate_serve_config(config, "modified serve.yaml")
    assert "ttft" in str(raised.value)


def test_a_typo_in_a_serve_key_fails_too() -> None:
    config = copy.deepcopy(load("serve.yaml"))
    config["applications"][0]["route_prefx"] = "/"
    with pytest.raises(AssertionError, match="route_prefx"):
        validate_serve_config(config, "modified serve.yaml")


def containers(pod_template: dict[str, Any]) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = pod_template["spec"]["containers"]
    return found


def serve_configs() -> dict[str, dict[str, Any]]:
    """Every Serve config shipped in cluster/, by file name."""
    kuberay = yaml.safe_load(load("kuberay-rayservice.yaml")["spec"]["serveConfigV2"])
    return {"serve.yaml": load("serve.yaml"), "canary.yaml": load("canary.yaml")} | {
        "kuberay-rayservice.yaml": kuberay
    }


@pytest.mark.parametrize("name", sorted(serve_configs()))
def test_every_cluster_config_requires_keys(name: str) -> None:
    app = next(a for a in serve_configs()[name]["applications"] if a["name"] == "rayfleet")
    gateway = next(d for d in app["deployments"] if d["name"] == "gateway")
    tenancy, _ = split_user_config(gateway["user_config"])
    assert tenancy.anonymous_tenant is None, f"{name}: requests without a key must get 401"
    published = {digest(key) for key in PUBLISHED_EXAMPLE_KEYS}
    held = {d for t in tenancy.tenants for d in t.api_key_sha256} | set(tenancy.admin_key_sha256)
    assert not held & published
    # The simulator app (fake completions) keeps its request log and script API off.
    sim = next(a for a in serve_configs()[name]["applications"] if a["name"] == "rayfleet-sim")
    assert SimSettings.model_validate(sim.get("args") or {}).control_api is False


def published_config(where: str) -> dict[str, Any]:
    """A tenancy config that holds the example key's digest as a tenant's or an admin key."""
    example = digest("rf-example-replace-me")
    if where == "tenant":
        return {"anonymous_tenant": None, "tenants": [{"id": "acme", "api_key_sha256": [example]}]}
    return {"anonymous_tenant": None, "tenants": [{"id": "acme"}], "admin_key_sha256": [example]}


@pytest.mark.parametrize("where", ["tenant", "admin"])
def test_a_config_holding_a_published_example_digest_is_refused(where: str) -> None:
    with pytest.raises(ValidationError) as raised:
        TenancyConfig.model_validate(published_config(where))
    message = str(raised.value)
    assert "'rf-example-replace-me'" in message and "rayfleet keys new" in message
    # The same config is refused when Serve builds the app (deploy-time args) ...
    with pytest.raises(ConfigError, match="rf-example-replace-me"):
        AppConfig.from_args({"tenancy": published_config(where)})
    # ... and when it arrives live as the gateway's user_config (what reconfigure validates).
    with pytest.raises(ValidationError, match="rayfleet keys new"):
        split_user_config({**published_config(where), "traffic": {}})
    # Any other digest is accepted.
    fine = copy.deepcopy(published_config(where))
    held = fine["tenants"][0] if where == "tenant" else fine
    key = "api_key_sha256" if where == "tenant" else "admin_key_sha256"
    held[key] = [digest("rf-" + "x" * 43)]
    TenancyConfig.model_validate(fine)


def test_every_key_printed_in_the_docs_and_examples_is_refused() -> None:
    # A key shown in a README, an example or a shipped config is public: add it to
    # PUBLISHED_EXAMPLE_KEYS so no deployment can accept it.
    places = [ROOT / "README.md", *CLUSTER.iterdir(), *(ROOT / "examples").rglob("*")]
    places += [*(ROOT / "agents" / "examples").rglob("*"), ROOT / "benchmarks" / "README.md"]
    printed: set[str] = set()
    for path in places:
        if path.is_file() and path.suffix in (".md", ".yaml", ".yml", ".py", ".sh"):
            printed |= set(re.findall(r"\brf-[A-Za-z0-9_-]{6,}", path.read_text()))
    assert printed <= set(PUBLISHED_EXAMPLE_KEYS), sorted(printed - set(PUBLISHED_EXAMPLE_KEYS))
    assert "rf-example-replace-me" in PUBLISHED_EXAMPLE_KEYS  # shipped in cluster/ until 0.1


def test_the_rayservice_embeds_the_same_serve_config() -> None:
    manifest = load("kuberay-rayservice.yaml")
    assert manifest["apiVersion"] == "ray.io/v1"
    assert manifest["kind"] == "RayService"
    inner = yaml.safe_load(manifest["spec"]["serveConfigV2"])
    validate_serve_config(inner, "kuberay-rayservice.yaml serveConfigV2")
    assert inner["applications"] == load("serve.yaml")["applications"]
    assert inner["http_options"]["host"] == "0.0.0.0"  # reachable from the pod's Service

    cluster = manifest["spec"]["rayClusterConfig"]
    assert cluster["rayVersion"] == ray.__version__
    # The dashboard listens on all interfaces (KubeRay submits through it): only with Ray's
    # token authentication, which KubeRay sets up for every Ray container.
    assert cluster["headGroupSpec"]["rayStartParams"]["dashboard-host"] == "0.0.0.0"
    assert cluster["authOptions"] == {"mode": "token"}
    templates = [cluster["headGroupSpec"]["template"]] + [
        group["template"] for group in cluster["workerGroupSpecs"]
    ]
    for template in templates:
        for container in containers(template):
            env = {item["name"]: item.get("value") for item in container.get("env", [])}
            assert env.get(THROUGHPUT_ENV) == "1", container["name"]


def pod_templates(manifest: dict[str, Any]) -> list[dict[str, Any]]:
    cluster = manifest["spec"]["rayClusterConfig"]
    groups = [cluster["headGroupSpec"], *cluster["workerGroupSpecs"]]
    return [group["template"] for group in groups]


def example_secret() -> tuple[str, dict[str, str]]:
    """The example Secret's name and its keys -> placeholder values."""
    secret = load("secrets.example.yaml")
    return secret["metadata"]["name"], secret["stringData"]


def test_every_rayservice_pod_takes_the_state_url_from_the_secret() -> None:
    # Run hosts, gateways and services on every pod open the same database: the URL (with
    # its password) comes from a Secret into every Ray container's environment.
    secret_name, keys = example_secret()
    templates = pod_templates(load("kuberay-rayservice.yaml"))
    assert len(templates) >= 2  # the head and at least one worker group
    for template in templates:
        for container in containers(template):
            found = [e for e in container.get("env", []) if e["name"] == STATE_URL_ENV]
            assert len(found) == 1, f"{container['name']}: no {STATE_URL_ENV}"
            assert "value" not in found[0], f"{container['name']}: the URL must come from a Secret"
            ref = found[0]["valueFrom"]["secretKeyRef"]
            assert ref["name"] == secret_name and ref["key"] in keys, container["name"]
            assert urlsplit(keys[ref["key"]]).scheme == "postgresql"


def test_the_rayservice_keeps_the_gcs_in_an_external_redis() -> None:
    cluster = load("kuberay-rayservice.yaml")["spec"]["rayClusterConfig"]
    options = cluster["gcsFaultToleranceOptions"]
    assert set(options) <= {
        "redisAddress",
        "redisPassword",
        "redisUsername",
        "externalStorageNamespace",
    }
    assert urlsplit(options["redisAddress"]).port == 6379
    assert "value" not in options["redisPassword"], "the Redis password must come from a Secret"
    secret_name, keys = example_secret()
    ref = options["redisPassword"]["valueFrom"]["secretKeyRef"]
    assert ref["name"] == secret_name and ref["key"] in keys
    assert cluster["authOptions"] == {"mode": "token"}
    # The legacy annotations (ray.io/ft-enabled) cannot be combined with the options.
    assert not load("kuberay-rayservice.yaml").get("metadata", {}).get("annotations")


def test_the_example_secret_holds_placeholders_only() -> None:
    secret = load("secrets.example.yaml")
    assert (secret["apiVersion"], secret["kind"], secret["type"]) == ("v1", "Secret", "Opaque")
    assert "data" not in secret  # readable placeholders, not base64
    _, keys = example_secret()
    assert set(keys) == {"state-url", "redis-password"}
    for key, value in keys.items():
        assert "REPLACE-ME" in value, key
    url = urlsplit(keys["state-url"])
    assert url.scheme == "postgresql" and url.hostname and url.hostname.endswith(".invalid")


def test_no_password_in_any_other_cluster_file() -> None:
    # A URL with credentials (scheme://user:password@host) belongs in a Secret or in
    # ~/.pgpass / PGPASSWORD, never in a config that is deployed or committed.
    with_password = re.compile(r"\b[a-z]+://[^\s/@:]+:[^\s/@]+@")
    for path in CLUSTER.iterdir():
        if path.name != "secrets.example.yaml" and path.suffix in (".yaml", ".sh", ".md"):
            assert not with_password.search(path.read_text()), path.name


@pytest.mark.parametrize("name", sorted(serve_configs()))
def test_the_serve_configs_leave_the_state_to_the_environment(name: str) -> None:
    args = next(a for a in serve_configs()[name]["applications"] if a["name"] == "rayfleet")
    runtime = args["args"].get("runtime", {})
    assert "state_url" not in runtime, f"{name}: the state URL comes from {STATE_URL_ENV}"
    assert STATE_URL_ENV in (CLUSTER / name).read_text(), f"{name}: say where the state is"


def test_the_ray_cluster_config_is_valid_for_the_cluster_launcher() -> None:
    import jsonschema
    import ray.autoscaler
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = load("ray-cluster.yaml")
    schema_path = Path(ray.autoscaler.__file__).parent / "ray-schema.json"
    jsonschema.validate(config, json.loads(schema_path.read_text()))
    validate_config(prepare_config(copy.deepcopy(config)))  # with the launcher's defaults
    urls: set[str] = set()
    for key in ("head_start_ray_commands", "worker_start_ray_commands"):
        starts = [c for c in config[key] if "ray start" in c]
        assert starts and all(f"{THROUGHPUT_ENV}=1" in c for c in starts), key
        for command in starts:
            urls.update(re.findall(rf"{STATE_URL_ENV}=(\S+)", command))
            assert f"{STATE_URL_ENV}=" in command, key
    # Every node's Ray processes open the same database, and no password is on the line.
    assert len(urls) == 1
    url = urlsplit(urls.pop())
    assert url.scheme == "postgresql" and url.password is None


def test_the_start_script_is_valid_bash_and_sets_the_serve_environment() -> None:
    script = CLUSTER / "start-local-head.sh"
    subprocess.run(["bash", "-n", str(script)], check=True)
    text = script.read_text()
    assert "set -euo pipefail" in text
    assert f"export {THROUGHPUT_ENV}=1" in text
    assert text.index(f"export {THROUGHPUT_ENV}=1") < text.index("ray start --head")
    assert "--node-ip-address=127.0.0.1" in text
    assert "serve deploy" in text and "serve.yaml" in text
