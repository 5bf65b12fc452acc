from __future__ import annotations

import pytest
from starlette.routing import Route
from starlette.testclient import TestClient

from service import config
from service.app import create_app
from tests.factories import APP_ID, deliver, environment, payload, post, reader_headers

WRONG = (
    {},
    {"Authorization": "Bearer wrong"},
    {"Authorization": "bearer"},
    {"Authorization": "Basic cmVhZGVyOnJlYWRlcg=="},
    {"Authorization": f"Bearer {'reader-token-one'[:-1]}"},  # a prefix of a real token
)


def read_paths() -> list[str]:
    """Every GET route under /v1 the app serves, with its path parameters filled in."""
    app = create_app(config.load(environment(None)))
    paths = []
    for route in app.routes:
        if (
            isinstance(route, Route)
            and route.path.startswith("/v1/")
            and "GET" in (route.methods or ())
        ):
            paths.append(route.path.replace("{agent_id}", "a1").replace("{app_id}", APP_ID))
    return sorted(paths)


def test_the_read_api_has_the_contract_routes() -> None:
    assert {
        "/v1/agents",
        "/v1/agents/a1",
        "/v1/agents/a1/events",
        f"/v1/apps/{APP_ID}/pcu",
        f"/v1/apps/{APP_ID}/pcu/series",
    } <= set(read_paths())


@pytest.mark.parametrize("path", read_paths())
def test_every_read_route_needs_a_valid_bearer_token(client: TestClient, path: str) -> None:
    post(client, deliver(101, payload("a1")))
    for headers in WRONG:
        response = client.get(path, headers=headers)
        assert (response.status_code, response.json()) == (401, {"error": "unauthorized"}), headers
    if path == "/v1/stream":
        return  # never ends: a valid token's stream is read over HTTP in tests/integration/test_stream.py
    assert client.get(path, headers=reader_headers()).status_code == 200


@pytest.mark.parametrize("path", read_paths())
def test_the_token_is_checked_before_the_parameters(client: TestClient, path: str) -> None:
    response = client.get(f"{path}?limit=nonsense")
    assert response.status_code == 401


def test_any_configured_token_is_accepted(make_settings) -> None:  # type: ignore[no-untyped-def]
    with TestClient(create_app(make_settings(READ_API_TOKENS="first, second"))) as client:
        for token in ("first", "second"):
            assert client.get("/v1/agents", headers=reader_headers(token)).status_code == 200


def test_no_configured_token_refuses_everyone(make_settings) -> None:  # type: ignore[no-untyped-def]
    with TestClient(create_app(make_settings(READ_API_TOKENS=""))) as client:
        assert client.get("/v1/agents", headers=reader_headers("")).status_code == 401
        assert client.get("/v1/agents", headers=reader_headers()).status_code == 401
