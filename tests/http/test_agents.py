from __future__ import annotations

from starlette.testclient import TestClient

from tests.factories import APP_ID, deliver, payload, post, reader_headers


def test_an_agent_reads_back_with_transitions_and_errors(client: TestClient) -> None:
    labels = {"tenant": "acme"}
    post(client, deliver(101, payload("a1", start_ts=1751400000, labels=labels), notice_id="n101"))
    post(
        client,
        deliver(
            110,
            payload("a1", errors=[{"module": "tts", "code": 429, "message": "slow", "turn_id": 3}]),
            notice_id="n110",
            notify_ms=1751400100000,
        ),
    )
    post(
        client,
        deliver(
            102,
            payload(
                "a1",
                start_ts=1751400000,
                stop_ts=1751400612,
                status="STOPPED",
                message="Idle for too long",
            ),
            notice_id="n102",
        ),
    )
    response = client.get("/v1/agents/a1", headers=reader_headers())
    assert response.status_code == 200
    assert response.json() == {
        "agent_id": "a1",
        "app_id": APP_ID,
        "name": "name-a1",
        "channel": "chan-a1",
        "labels": labels,
        "state": "STOPPED",
        "started_at": "2025-07-01T20:00:00Z",
        "stopped_at": "2025-07-01T20:10:12Z",
        "stop_message": "Idle for too long",
        "last_event_at": "2025-07-01T20:10:12Z",
        "warning": None,
        "transitions": [
            {
                "from": "IDLE",
                "to": "RUNNING",
                "cause": "agent_joined",
                "source": "webhook",
                "inferred": False,
                "notice_id": "n101",
                "event_at": "2025-07-01T20:00:00Z",
                "received_at": response.json()["transitions"][0]["received_at"],
            },
            {
                "from": "RUNNING",
                "to": "STOPPED",
                "cause": "agent_left",
                "source": "webhook",
                "inferred": False,
                "notice_id": "n102",
                "event_at": "2025-07-01T20:10:12Z",
                "received_at": response.json()["transitions"][1]["received_at"],
            },
        ],
        "errors": [
            {
                "module": "tts",
                "code": 429,
                "message": "slow",
                "turn_id": "3",
                "notice_id": "n110",
                "at": "2025-07-01T20:01:40Z",
            }
        ],
    }
    assert response.json()["transitions"][0]["received_at"].endswith("Z")


def test_an_expiry_warning_is_shown_on_the_agent(client: TestClient) -> None:
    post(client, deliver(101, payload("a1", start_ts=1751400000)))
    post(
        client,
        deliver(
            104,
            payload("a1", start_ts=1751400000, message="Task exceeded maximum lifetime"),
            notify_ms=1751500000000,
        ),
    )
    body = client.get("/v1/agents/a1", headers=reader_headers()).json()
    assert body["state"] == "RUNNING"
    assert body["warning"] == {
        "message": "Task exceeded maximum lifetime",
        "at": "2025-07-02T23:46:40Z",
    }


def test_unknown_agents_are_404(client: TestClient) -> None:
    response = client.get("/v1/agents/nobody", headers=reader_headers())
    assert (response.status_code, response.json()) == (404, {"error": "not_found"})


def test_the_read_api_needs_a_valid_bearer_token(client: TestClient) -> None:
    post(client, deliver(101, payload("a1")))
    for headers in (
        {},
        {"Authorization": "Bearer wrong"},
        {"Authorization": "Basic cmVhZGVy"},
        {"Authorization": "Bearer "},
    ):
        response = client.get("/v1/agents/a1", headers=headers)
        assert (response.status_code, response.json()) == (401, {"error": "unauthorized"})
    assert client.get("/v1/agents/a1", headers=reader_headers()).status_code == 200
