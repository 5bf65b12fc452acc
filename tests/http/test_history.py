from __future__ import annotations

from starlette.testclient import TestClient

from tests.factories import Sql, deliver, load_payload, payload, post, reader_headers


def test_a_history_is_pending_until_its_transcript_arrives(client: TestClient, sql: Sql) -> None:
    post(client, deliver(101, payload("a1", start_ts=1751400000)))
    post(client, deliver(102, payload("a1", start_ts=1751400000, stop_ts=1751400612)))
    response = client.get("/v1/agents/a1/history", headers=reader_headers())
    assert response.status_code == 200
    assert response.json() == {
        "agent_id": "a1",
        "status": "pending",
        "source": None,
        "contents": [],
        "turns": [],
        "reason": None,
    }
    assert sql.value("SELECT status FROM history_job WHERE agent_id = 'a1'") == "queued"


def test_a_webhook_transcript_and_turns_are_answered_in_the_contract_shape(
    client: TestClient,
) -> None:
    history = load_payload("103_agent_history.json")
    turns = load_payload("112_turns_finished.json")
    post(client, deliver(103, history))
    post(client, deliver(112, turns))
    agent_id = history["agent_id"]
    body = client.get(f"/v1/agents/{agent_id}/history", headers=reader_headers()).json()
    assert (body["status"], body["source"], body["reason"]) == ("complete", "webhook", None)
    assert body["contents"] == [
        {"role": m["role"], "content": m["content"]} for m in history["contents"]
    ]
    assert [t["turn_id"] for t in body["turns"]] == [t["turn_id"] for t in turns["turns"]]
    first = body["turns"][0]
    assert first.keys() == {
        "turn_id",
        "start_at",
        "end_at",
        "start_type",
        "end_type",
        "e2e_latency_ms",
        "source",
        "data",
    }
    assert first["start_at"].endswith("Z") and first["source"] == "webhook"
    assert first["data"] == turns["turns"][0]


def test_the_history_of_an_unknown_agent_is_404(client: TestClient) -> None:
    response = client.get("/v1/agents/nobody/history", headers=reader_headers())
    assert (response.status_code, response.json()) == (404, {"error": "not_found"})


def test_the_history_needs_a_bearer_token(client: TestClient) -> None:
    post(client, deliver(101, payload("a1")))
    response = client.get("/v1/agents/a1/history")
    assert (response.status_code, response.json()) == (401, {"error": "unauthorized"})
