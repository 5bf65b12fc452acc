from __future__ import annotations

import threading
from collections.abc import Callable

from starlette.testclient import TestClient

from service import config, schema
from service.app import create_app
from tests.factories import Sql, environment


def test_healthz_answers_without_the_database() -> None:
    settings = config.load(environment("postgresql://nobody@127.0.0.1:9/none"))
    with TestClient(create_app(settings)) as client:
        assert client.get("/healthz").json() == {"status": "ok"}
        response = client.get("/readyz")
    assert response.status_code == 503
    assert response.json()["ok"] == []
    assert "database" in response.json()["failing"]


def test_readyz_is_ready_at_head(client: TestClient) -> None:
    response = client.get("/readyz")
    assert (response.status_code, response.json()) == (
        200,
        {"ok": ["database", "schema"], "failing": {}},
    )


def test_readyz_is_not_ready_before_migration(empty_database_url: str) -> None:
    settings = config.load(environment(empty_database_url))
    with TestClient(create_app(settings)) as client:
        response = client.get("/readyz")
    assert response.status_code == 503
    assert response.json() == {
        "ok": ["database"],
        "failing": {"schema": f"at nothing, expected {schema.head()}"},
    }


def test_a_read_request_answers_503_when_the_database_is_down(
    make_settings: Callable[..., config.Settings],
) -> None:
    settings = config.load(environment("postgresql://nobody@127.0.0.1:9/none"))
    with TestClient(create_app(settings)) as client:
        response = client.get("/v1/agents/a1", headers={"Authorization": "Bearer reader-token-one"})
    assert (response.status_code, response.json()) == (503, {"error": "unavailable"})


def test_readyz_stays_ready_when_a_newer_release_has_migrated_the_database(
    client: TestClient, sql: Sql
) -> None:
    sql.execute("UPDATE alembic_version SET version_num = 'f00dfeedbeef'")
    response = client.get("/readyz")
    assert (response.status_code, response.json()) == (
        200,
        {"ok": ["database", "schema"], "failing": {}},
    )


def test_readyz_fails_at_once_while_draining(make_settings: Callable[..., config.Settings]) -> None:
    draining = threading.Event()
    with TestClient(create_app(make_settings(), draining=draining)) as client:
        assert client.get("/readyz").status_code == 200
        draining.set()
        response = client.get("/readyz")
        assert client.get("/healthz").status_code == 200
    assert (response.status_code, response.json()) == (
        503,
        {"ok": ["database", "schema"], "failing": {"shutdown": "draining"}},
    )
