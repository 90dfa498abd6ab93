"""The OpenAPI document: valid 3.1, every gateway route in it, the models' rules carried over."""

from __future__ import annotations

import json
from typing import Any

import jsonschema
import pytest
from pydantic import ValidationError
from schemathesis.specs.openapi.definitions import OPENAPI_31_VALIDATOR
from starlette.requests import Request
from starlette.routing import Route

from actors.run_host import new_run_id
from agents.events import Event, RunCreated, RunFailed, StepStarted, event_adapter
from agents.messages import Usage
from agents.spec import AgentSpec
from agents.summary import RunSummary
from serve_app.admin_routes import AdminRoutes
from serve_app.approval_routes import ApprovalRoutes
from serve_app.gateway import Gateway
from serve_app.mcp_endpoint import MCP_PATH, McpEndpoint
from serve_app.openapi import AGENT_PATTERN, RUN_ID_PATTERN, openapi_document, openapi_endpoint
from serve_app.schemas import RunRequest
from serve_app.sse import to_sse

METHODS = {"get", "put", "post", "delete", "patch", "options", "head", "trace"}
NOT_MOUNTED_YET = {("GET", "/openapi.json")}
"""Documented before the gateway serves it; once the route exists it is checked like any."""
NOT_REST = {("POST", MCP_PATH)}
"""The MCP endpoint: JSON-RPC as the MCP specification describes it, not this document's REST
API; the document's description points to it instead."""


class _Endpoints(AdminRoutes, ApprovalRoutes, McpEndpoint):
    """Stands in for a Gateway replica: every `self._http_*` handler of the gateway itself is
    a no-op (the admin routes' are never called). Building the Starlette app this way needs
    neither Ray nor a deployment."""

    def __getattr__(self, name: str) -> Any:
        async def endpoint(request: Request) -> None:
            raise AssertionError("never called")

        return endpoint


def gateway_routes() -> set[tuple[str, str]]:
    # @serve.deployment made `Gateway` a Deployment; the class is behind it.
    build = Gateway.func_or_class.__serve_build_asgi_app__  # type: ignore[attr-defined]
    app = build(_Endpoints())
    found = set()
    for route in app.routes:
        assert isinstance(route, Route), route
        for method in route.methods or ():
            if method != "HEAD":  # Starlette adds HEAD to every GET
                found.add((method, route.path))
    return found


def documented(doc: dict[str, Any]) -> set[tuple[str, str]]:
    return {
        (method.upper(), path)
        for path, item in doc["paths"].items()
        for method in item
        if method in METHODS
    }


def schema_of(doc: dict[str, Any], name: str) -> dict[str, Any]:
    """A validator-ready schema for components.schemas[name], its $refs resolvable."""
    return {"$ref": f"#/components/schemas/{name}", "components": doc["components"]}


def refs(node: Any) -> list[str]:
    if isinstance(node, dict):
        found = [node["$ref"]] if isinstance(node.get("$ref"), str) else []
        return found + [ref for value in node.values() for ref in refs(value)]
    if isinstance(node, list):
        return [ref for value in node for ref in refs(value)]
    return []


def test_the_document_is_valid_openapi_3_1() -> None:
    doc = openapi_document()
    assert doc["openapi"].startswith("3.1.")
    errors = [f"{e.instance_path}: {e.message}" for e in OPENAPI_31_VALIDATOR.iter_errors(doc)]
    assert not errors, errors
    for schema in doc["components"]["schemas"].values():
        jsonschema.Draft202012Validator.check_schema(schema)
    assert "$defs" not in json.dumps(doc), "every $defs is lifted into components"
    for ref in refs(doc):
        assert ref.startswith("#/components/schemas/"), ref
        assert ref.rpartition("/")[2] in doc["components"]["schemas"], ref


def test_the_validator_is_not_a_rubber_stamp() -> None:
    doc = openapi_document()
    del doc["paths"]["/healthz"]["get"]["responses"]["200"]["description"]
    assert list(OPENAPI_31_VALIDATOR.iter_errors(doc))


def test_every_gateway_route_is_documented_and_nothing_else() -> None:
    routes = gateway_routes()
    assert ("GET", "/healthz") in routes and ("POST", "/v1/agents/{agent}/runs") in routes
    doc = documented(openapi_document())
    assert NOT_REST <= routes and not NOT_REST & doc
    assert routes - doc - NOT_REST == set(), "routes the document lacks"
    assert doc - routes - NOT_MOUNTED_YET == set(), "documented operations with no route"


def test_the_document_points_mcp_clients_to_the_mcp_endpoint() -> None:
    assert f"`POST {MCP_PATH}`" in openapi_document()["info"]["description"]


def test_every_operation_documents_its_errors_as_problem_json() -> None:
    doc = openapi_document()
    for path, item in doc["paths"].items():
        for method, op in item.items():
            for status, response in op["responses"].items():
                if int(status) >= 400:
                    assert list(response["content"]) == ["application/problem+json"], (
                        method,
                        path,
                        status,
                    )
                if status in ("429", "503"):
                    assert response["headers"]["Retry-After"]["required"] is True
            if path.startswith("/v1/admin/"):
                assert op["security"] == [{"bearer": []}], "admin routes need a key"
            elif path.startswith("/v1/"):
                assert "401" in op["responses"], (method, path)
                assert "security" not in op, "the document-wide bearer (optional) applies"
            else:
                assert op["security"] == [], "health and the document need no key"
            declared = {p["name"] for p in op.get("parameters", []) if p["in"] == "path"}
            assert declared == {part[1:-1] for part in path.split("/") if part.startswith("{")}


def test_bearer_auth_is_declared_and_optional() -> None:
    doc = openapi_document()
    assert doc["components"]["securitySchemes"]["bearer"] == {
        "type": "http",
        "scheme": "bearer",
        "description": doc["components"]["securitySchemes"]["bearer"]["description"],
    }
    assert {} in doc["security"] and {"bearer": []} in doc["security"]


def test_path_parameter_formats_match_the_code() -> None:
    doc = openapi_document()
    run_id = doc["paths"]["/v1/runs/{run_id}"]["get"]["parameters"][0]["schema"]
    agent = doc["paths"]["/v1/agents/{agent}/runs"]["post"]["parameters"][0]["schema"]
    assert run_id["pattern"] == RUN_ID_PATTERN
    assert agent["pattern"] == AGENT_PATTERN
    spec_schema = AgentSpec.model_json_schema()  # recursive (sub-agents): under $defs
    assert spec_schema["$defs"]["AgentSpec"]["properties"]["name"]["pattern"] == AGENT_PATTERN
    jsonschema.validate(new_run_id("h0"), run_id)
    jsonschema.validate(new_run_id("abcdefghij012345"), run_id)
    for bad in ("run-h0-xyz", "run-H0-" + "0" * 20, "../healthz", "run-h0-" + "0" * 21):
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(bad, run_id)


def test_resume_point_is_a_non_negative_integer_in_query_or_header() -> None:
    params = openapi_document()["paths"]["/v1/runs/{run_id}/events"]["get"]["parameters"]
    by_name = {p["name"]: p for p in params}
    assert by_name["after"]["in"] == "query"
    assert by_name["Last-Event-ID"]["in"] == "header"
    for name in ("after", "Last-Event-ID"):
        assert by_name[name]["schema"]["type"] == "integer"
        assert by_name[name]["schema"]["minimum"] == 0


def test_run_request_rejects_unknown_fields() -> None:
    doc = openapi_document()
    assert doc["components"]["schemas"]["RunRequest"]["additionalProperties"] is False
    schema = schema_of(doc, "RunRequest")
    jsonschema.validate({"input": "hi", "thread_id": "t-1", "version": None}, schema)
    for bad in (
        {"input": "hi", "tenant": "x"},
        {},
        {"input": ""},
        {"input": "hi", "thread_id": ""},
    ):
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(bad, schema)
        with pytest.raises(ValidationError):
            RunRequest.model_validate(bad)


def test_the_event_schema_accepts_what_the_code_writes() -> None:
    doc = openapi_document()
    usage = Usage(input_tokens=3, output_tokens=2)
    events: list[Event] = [
        RunCreated(run_id="run-h0-" + "0" * 20, seq=1, agent="support", version="v1", input="x"),
        RunFailed(
            run_id="run-h0-" + "0" * 20,
            seq=2,
            code="tool_failed",
            message="boom",
            retryable=False,
            steps=1,
            usage=usage,
            cost_usd=0.0,
        ),
    ]
    event_schema = schema_of(doc, "Event")
    for event in events:
        jsonschema.validate(json.loads(event_adapter.dump_json(event)), event_schema)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({"kind": "run.exploded", "run_id": "r", "seq": 1}, event_schema)
    summary = RunSummary(
        run_id="run-h0-" + "0" * 20, agent="support", version="v1", status="running", input="x"
    )
    jsonschema.validate(summary.model_dump(mode="json"), schema_of(doc, "RunSummary"))
    kinds = set(doc["components"]["schemas"]["Event"]["discriminator"]["mapping"])
    assert {"run.created", "run.completed", "run.failed", "run.cancelled"} <= kinds


def test_the_sse_responses_point_at_the_event_schema() -> None:
    doc = openapi_document()
    for path, method in (("/v1/agents/{agent}/runs", "post"), ("/v1/runs/{run_id}/events", "get")):
        frame = doc["paths"][path][method]["responses"]["200"]["content"]["text/event-stream"]
        frame = frame["schema"]
        assert frame["properties"]["data"]["contentMediaType"] == "application/json"
        assert frame["properties"]["data"]["contentSchema"] == {
            "$ref": "#/components/schemas/Event"
        }
        assert "`id:` is the event's `seq`" in frame["description"]
        assert "`event:` is its `kind`" in frame["description"]
        sent = to_sse(StepStarted(run_id="run-h0-" + "0" * 20, seq=7, step=1))
        jsonschema.validate(sent, frame)
        jsonschema.validate(json.loads(sent["data"]), schema_of(doc, "Event"))


def test_callers_get_a_copy() -> None:
    openapi_document()["paths"].clear()
    assert openapi_document()["paths"]


async def test_the_endpoint_serves_the_document() -> None:
    request = Request({"type": "http", "method": "GET", "path": "/openapi.json", "headers": []})
    response = await openapi_endpoint(request)
    assert response.status_code == 200
    assert response.media_type == "application/json"
    assert json.loads(bytes(response.body)) == openapi_document()
