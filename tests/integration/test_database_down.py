"""Database down: the webhook answers 503 (Agora retries), and the retry is accepted later."""

from __future__ import annotations

from starlette.testclient import TestClient

from service import config
from service.app import create_app
from tests.factories import Sql, deliver, environment, payload, post
from tests.proxy import TcpProxy


def test_503_while_the_database_is_down_then_the_same_delivery_is_accepted(
    database_url: str, sql: Sql
) -> None:
    proxy, proxied_url = TcpProxy.for_url(database_url)
    try:
        with TestClient(create_app(config.load(environment(proxied_url)))) as client:
            assert post(client, deliver(101, payload("before", start_ts=1751400000))).json() == {
                "status": "accepted"
            }

            proxy.down()
            delivery = deliver(101, payload("during", start_ts=1751400000))
            for _ in range(3):  # stale pooled connections and new ones alike fail fast
                response = post(client, delivery)
                assert (response.status_code, response.json()) == (503, {"error": "unavailable"})
            assert client.get("/readyz").status_code == 503
            assert client.get("/healthz").status_code == 200

            proxy.up()
            response = post(client, delivery)
            assert (response.status_code, response.json()) == (200, {"status": "accepted"})
            assert post(client, delivery).json() == {"status": "duplicate"}
            assert client.get("/readyz").status_code == 200
    finally:
        proxy.down()
    assert sql.rows("SELECT agent_id, state FROM agent ORDER BY agent_id") == [
        {"agent_id": "before", "state": "RUNNING"},
        {"agent_id": "during", "state": "RUNNING"},
    ]
    assert sql.count("notification") == 2
