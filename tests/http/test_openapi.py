from __future__ import annotations

import re

import pytest
from openapi_spec_validator import validate
from starlette.routing import Route
from starlette.testclient import TestClient

# Described before it is served: GET /v1/agents/{agent_id}/history comes with the history worker.
DESCRIBED_AHEAD = {("/v1/agents/{agent_id}/history", "get")}


def served(client: TestClient) -> set[tuple[str, str]]:
    # The console's pages (include_in_schema=False) are HTML for people, not the API.
    routes = [
        route
        for route in client.app.routes  # type: ignore[attr-defined]
        if isinstance(route, Route) and route.include_in_schema
    ]
    return {
        (route.path, method.lower())
        for route in routes
        for method in route.methods or ()
        if method != "HEAD"
    }


def described(document: dict) -> set[tuple[str, str]]:
    return {(path, method) for path, item in document["paths"].items() for method in item}


def test_the_document_is_valid_openapi_3_1(client: TestClient) -> None:
    response = client.get("/openapi.json")
    assert response.status_code == 200
    document = response.json()
    assert document["openapi"].startswith("3.1")
    validate(document)


def test_every_served_route_is_described(client: TestClient) -> None:
    document = client.get("/openapi.json").json()
    assert served(client) - described(document) == set()
    assert described(document) - served(client) <= DESCRIBED_AHEAD


def test_every_path_parameter_is_declared(client: TestClient) -> None:
    document = client.get("/openapi.json").json()
    for path, item in document["paths"].items():
        for method, operation in item.items():
            declared = {p["name"] for p in operation.get("parameters", []) if p["in"] == "path"}
            assert declared == set(re.findall(r"{(\w+)}", path)), (path, method)


@pytest.mark.parametrize("path", ["/v1/agents", "/v1/agents/{agent_id}/events"])
def test_lists_document_limit_and_cursor(client: TestClient, path: str) -> None:
    operation = client.get("/openapi.json").json()["paths"][path]["get"]
    names = {p["name"] for p in operation["parameters"]}
    assert {"limit", "cursor"} <= names
