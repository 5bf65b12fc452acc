"""A frozen PostgreSQL (sockets open, nothing answered): requests are answered 503 within
DATABASE_TIMEOUT_S plus a second, /readyz within its own short bound, and once the database
answers again everything succeeds, with nothing stored twice."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from starlette.testclient import TestClient

from service import config
from service.app import create_app
from service.routes import health
from tests.factories import Sql, deliver, environment, payload, post, reader_headers
from tests.proxy import TcpProxy

TIMEOUT_S = 1.0
UNAVAILABLE = (503, {"error": "unavailable"})


def timed(call: Callable[[], Any]) -> tuple[Any, float]:
    started = time.monotonic()
    response = call()
    return response, time.monotonic() - started


def test_a_frozen_database_is_answered_503_in_time_and_the_retry_is_accepted_once(
    database_url: str, sql: Sql
) -> None:
    proxy, proxied_url = TcpProxy.for_url(database_url)
    settings = config.load(environment(proxied_url, DATABASE_TIMEOUT_S=str(TIMEOUT_S)))
    try:
        with TestClient(create_app(settings)) as client:
            before = deliver(101, payload("before", start_ts=1_751_400_000))
            assert post(client, before).json() == {"status": "accepted"}

            proxy.freeze()
            during = deliver(101, payload("during", start_ts=1_751_400_000))
            for _ in range(3):  # the pooled connection and new ones alike
                response, seconds = timed(lambda: post(client, during))
                assert (response.status_code, response.json()) == UNAVAILABLE
                assert seconds < TIMEOUT_S + 1
            response, seconds = timed(lambda: client.get("/v1/agents", headers=reader_headers()))
            assert (response.status_code, response.json()) == UNAVAILABLE
            assert seconds < TIMEOUT_S + 1
            response, seconds = timed(lambda: client.get("/readyz"))
            assert response.status_code == 503
            assert "database" in response.json()["failing"]
            assert seconds < TIMEOUT_S + 1
            assert client.get("/healthz").status_code == 200

            proxy.thaw()
            answers = [post(client, during) for _ in range(2)]
            assert [(a.status_code, a.json()) for a in answers] == [
                (200, {"status": "accepted"}),
                (200, {"status": "duplicate"}),
            ]
            for _ in range(12):  # more than the pool holds: no connection was left half-used
                assert client.get("/v1/agents", headers=reader_headers()).status_code == 200
                assert client.get("/readyz").status_code == 200
            after = deliver(101, payload("after", start_ts=1_751_400_000))
            assert post(client, after).json() == {"status": "accepted"}
    finally:
        proxy.down()
    assert sql.rows("SELECT agent_id, state FROM agent ORDER BY agent_id") == [
        {"agent_id": "after", "state": "RUNNING"},
        {"agent_id": "before", "state": "RUNNING"},
        {"agent_id": "during", "state": "RUNNING"},
    ]
    assert sql.count("notification") == 3


def test_readyz_gives_the_database_two_seconds_at_most() -> None:
    assert health.READY_TIMEOUT_S == 2.0
    assert config.load({}).database_timeout_s == 5.0
