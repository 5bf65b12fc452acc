"""Every row of the CONTRACT §3 answer table, over the ASGI app, against a real database."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from types import MappingProxyType

import pytest
from starlette.testclient import TestClient
from structlog.testing import capture_logs

from service import config
from service.app import create_app
from tests.factories import APP_ID, SECRET, Sql, deliver, payload, post, reader_headers

TABLES = ("notification", "agent", "agent_transition", "agent_error", "history", "history_job")


def stored(sql: Sql) -> dict[str, int]:
    return {table: sql.count(table) for table in TABLES}


NOTHING = dict.fromkeys(TABLES, 0)


def test_a_new_notification_is_accepted_and_applied(client: TestClient, sql: Sql) -> None:
    response = post(client, deliver(101, payload("a1", start_ts=1751400000)))
    assert (response.status_code, response.json()) == (200, {"status": "accepted"})
    assert sql.rows("SELECT agent_id, app_id, state FROM agent") == [
        {"agent_id": "a1", "app_id": APP_ID, "state": "RUNNING"}
    ]
    assert sql.value("SELECT body->'payload'->>'agent_id' FROM notification") == "a1"


def test_a_repeated_notice_id_is_a_duplicate_and_changes_nothing(
    client: TestClient, sql: Sql
) -> None:
    first = deliver(101, payload("a1", start_ts=1751400000), notice_id="n-1")
    assert post(client, first).json() == {"status": "accepted"}
    before = stored(sql)
    # An NCS retry: same noticeId, new notifyMs, hence different bytes and signature.
    retry = deliver(
        102,
        payload("a1", start_ts=1751400000, stop_ts=1751400100, status="STOPPED"),
        notice_id="n-1",
    )
    response = post(client, retry)
    assert (response.status_code, response.json()) == (200, {"status": "duplicate"})
    assert stored(sql) == before
    assert sql.value("SELECT state FROM agent") == "RUNNING"


def test_a_repeated_notice_id_naming_another_agent_creates_no_agent(
    client: TestClient, sql: Sql
) -> None:
    first = deliver(101, payload("a1", start_ts=1751400000), notice_id="n-1")
    assert post(client, first).json() == {"status": "accepted"}
    before = stored(sql)
    # The same noticeId over another agent: still the notification already stored, so nothing of
    # it is applied, and no row of an agent nothing was recorded for appears.
    for agent_id in ("a2", 9007199254740993):
        again = deliver(
            101, payload("a1", start_ts=1751400000) | {"agent_id": agent_id}, notice_id="n-1"
        )
        response = post(client, again)
        assert (response.status_code, response.json()) == (200, {"status": "duplicate"})
        assert stored(sql) == before
    assert sql.rows("SELECT agent_id FROM agent") == [{"agent_id": "a1"}]
    assert client.get("/v1/agents/a2", headers=reader_headers()).status_code == 404


@pytest.mark.parametrize(
    ("product_id", "event_type", "body_payload"),
    [
        (1, 101, payload("a1")),  # another Agora product on the same URL
        (17, 150, payload("a1")),  # an event type we do not know
        (17, 101, {"channelName": "test_webhook", "uid": 12121212}),  # Console "Check"
    ],
)
def test_verified_but_irrelevant_notifications_are_ignored(
    client: TestClient, sql: Sql, product_id: int, event_type: int, body_payload: dict[str, object]
) -> None:
    response = post(client, deliver(event_type, body_payload, product_id=product_id))
    assert (response.status_code, response.json()) == (200, {"status": "ignored"})
    assert sql.rows("SELECT outcome FROM notification") == [{"outcome": "ignored"}]
    assert sql.count("agent") == 0


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Agora-Signature-V2": "0" * 64},
        {"Agora-Signature": "0" * 40},
        {"Agora-Signature-V2": "not-hex"},
    ],
)
def test_missing_or_wrong_signatures_are_401_and_store_nothing(
    client: TestClient, sql: Sql, headers: dict[str, str]
) -> None:
    delivery = deliver(101, payload("a1"))
    response = client.post(f"/v1/webhooks/agora/{APP_ID}", content=delivery.body, headers=headers)
    assert (response.status_code, response.json()) == (401, {"error": "invalid_signature"})
    assert stored(sql) == NOTHING


def test_a_body_signed_with_another_secret_is_refused(client: TestClient, sql: Sql) -> None:
    response = post(client, deliver(101, payload("a1"), secret="someone-else"))
    assert (response.status_code, response.json()) == (401, {"error": "invalid_signature"})
    assert stored(sql) == NOTHING


def test_an_unknown_app_is_404(client: TestClient, sql: Sql) -> None:
    response = post(client, deliver(101, payload("a1")), app_id="nope")
    assert (response.status_code, response.json()) == (404, {"error": "unknown_app"})
    assert stored(sql) == NOTHING


def test_a_body_over_one_mib_is_413_and_exactly_one_mib_is_read(
    client: TestClient, sql: Sql
) -> None:
    limit = 1024 * 1024
    filler = "x" * limit
    over = deliver(101, payload("a1", pad=filler))
    response = post(client, over)
    assert (response.status_code, response.json()) == (413, {"error": "payload_too_large"})
    # A body of exactly 1 MiB is within the limit (and here, valid).
    base = deliver(101, payload("a2", pad=""), notice_id="n-exact")
    exact_pad = "x" * (limit - len(base.body))
    exact = deliver(
        101,
        payload("a2", pad=exact_pad),
        notice_id="n-exact",
        notify_ms=json.loads(base.body)["notifyMs"],
    )
    assert len(exact.body) == limit
    assert post(client, exact).json() == {"status": "accepted"}
    assert sql.value("SELECT count(*) FROM agent WHERE agent_id = 'a1'") == 0


def test_one_mib_plus_one_byte_streamed_without_length_is_413(client: TestClient, sql: Sql) -> None:
    body = b" " * (1024 * 1024 + 1)
    response = client.post(f"/v1/webhooks/agora/{APP_ID}", content=iter([body[:1000], body[1000:]]))
    assert (response.status_code, response.json()) == (413, {"error": "payload_too_large"})
    assert stored(sql) == NOTHING


@pytest.mark.parametrize(
    ("raw", "detail"),
    [
        (b"not json at all", "body is not valid JSON"),
        (b"[1, 2, 3]", "body must be a JSON object"),
        (
            b'{"productId": 17, "eventType": 101, "notifyMs": 1, "payload": {"agent_id": "a"}}',
            "noticeId is required",
        ),
        (
            b'{"noticeId": "n", "productId": "17", "eventType": 101, "payload": {"agent_id": "a"}}',
            "productId must be an integer",
        ),
        (
            b'{"noticeId": "n", "productId": 17, "eventType": 101, "payload": "text"}',
            "payload must be an object",
        ),
    ],
)
def test_invalid_notifications_are_400_with_a_detail_and_store_nothing(
    client: TestClient, sql: Sql, raw: bytes, detail: str
) -> None:
    from service import signatures

    response = client.post(
        f"/v1/webhooks/agora/{APP_ID}", content=raw, headers=signatures.sign(raw, SECRET)
    )
    assert response.status_code == 400
    answer = response.json()
    assert (sorted(answer), answer["error"]) == (["detail", "error"], "invalid_notification")
    assert answer["detail"].startswith(detail)
    assert stored(sql) == NOTHING


def test_precedence_unknown_app_before_size_before_signature_before_validity(
    client: TestClient,
) -> None:
    huge_unsigned_garbage = b"x" * (1024 * 1024 + 1)
    assert client.post("/v1/webhooks/agora/nope", content=huge_unsigned_garbage).json() == {
        "error": "unknown_app"
    }
    assert client.post(f"/v1/webhooks/agora/{APP_ID}", content=huge_unsigned_garbage).json() == {
        "error": "payload_too_large"
    }
    assert client.post(f"/v1/webhooks/agora/{APP_ID}", content=b"garbage").json() == {
        "error": "invalid_signature"
    }


def test_an_app_without_secrets_refuses_everything(
    make_settings: Callable[..., config.Settings], sql: Sql
) -> None:
    # Configuration refuses such an app (tests/unit/test_config.py); built by hand, it fails closed.
    unsecured = config.AppSettings(app_id=APP_ID)
    settings = dataclasses.replace(make_settings(), apps=MappingProxyType({APP_ID: unsecured}))
    with TestClient(create_app(settings)) as client:
        response = post(client, deliver(101, payload("a1")))
    assert (response.status_code, response.json()) == (401, {"error": "invalid_signature"})
    assert stored(sql) == NOTHING


def test_either_of_two_rotated_secrets_verifies(
    make_settings: Callable[..., config.Settings], sql: Sql
) -> None:
    settings = make_settings(AGORA_WEBHOOK_SECRETS="old-secret,new-secret")
    with TestClient(create_app(settings)) as client:
        assert post(client, deliver(101, payload("a1"), secret="old-secret")).json() == {
            "status": "accepted"
        }
        assert post(client, deliver(101, payload("a2"), secret="new-secret")).json() == {
            "status": "accepted"
        }
    assert sql.count("agent") == 2


def test_the_short_path_serves_the_single_configured_app(client: TestClient, sql: Sql) -> None:
    delivery = deliver(101, payload("a1"))
    response = client.post("/v1/webhooks/agora", content=delivery.body, headers=delivery.headers)
    assert (response.status_code, response.json()) == (200, {"status": "accepted"})
    assert sql.value("SELECT app_id FROM agent") == APP_ID


def test_the_short_path_is_unknown_when_several_apps_are_configured(
    make_settings: Callable[..., config.Settings], tmp_path: object, sql: Sql
) -> None:
    from pathlib import Path

    apps = Path(str(tmp_path)) / "apps.toml"
    apps.write_text("[[apps]]\napp_id = 'second'\nwebhook_secrets = ['s2']\n")
    with TestClient(create_app(make_settings(LEDGER_APPS_FILE=str(apps)))) as client:
        delivery = deliver(101, payload("a1"))
        response = client.post(
            "/v1/webhooks/agora", content=delivery.body, headers=delivery.headers
        )
        assert (response.status_code, response.json()) == (404, {"error": "unknown_app"})
        # The second app verifies with its own secret only.
        assert post(client, deliver(101, payload("a2"), secret="s2"), app_id="second").json() == {
            "status": "accepted"
        }
        assert post(client, deliver(101, payload("a3"), secret="s2")).status_code == 401
    assert sql.rows("SELECT agent_id, app_id FROM agent") == [
        {"agent_id": "a2", "app_id": "second"}
    ]


def test_one_log_line_per_webhook_with_ids_and_no_secret(client: TestClient) -> None:
    delivery = deliver(101, payload("a-log"), notice_id="n-log")
    with capture_logs() as logs:
        post(client, delivery)
        client.post(
            f"/v1/webhooks/agora/{APP_ID}", content=b"{}", headers={"Agora-Signature-V2": "0" * 64}
        )
    lines = [entry for entry in logs if entry["event"] == "webhook_handled"]
    assert [(e["outcome"], e["status"]) for e in lines] == [("accepted", 200), ("rejected", 401)]
    assert lines[0]["reason"] is None and lines[1]["reason"] == "invalid_signature"
    assert isinstance(lines[0]["duration_ms"], float)
    ids = ("app_id", "agent_id", "notice_id")
    assert [lines[0].get(k) for k in ids] == [APP_ID, "a-log", "n-log"]
    assert lines[1].get("app_id") == APP_ID and "notice_id" not in lines[1]  # never verified
    # The transition is logged by the group-commit writer, outside the request: ids passed too.
    [applied] = [entry for entry in logs if entry["event"] == "transition_applied"]
    assert [applied.get(k) for k in ids] == [APP_ID, "a-log", "n-log"]
    assert SECRET not in repr(logs)
    assert delivery.body.decode() not in repr(logs)


def test_wrong_methods_and_paths_answer_json(client: TestClient) -> None:
    assert client.get(f"/v1/webhooks/agora/{APP_ID}").json() == {"error": "method_not_allowed"}
    assert client.get("/nowhere").json() == {"error": "not_found"}
    # A POST goes straight to the webhook handler only on the webhook paths themselves.
    body = deliver(101, payload("a-path")).body
    for path in (f"/v1/webhooks/agora/{APP_ID}/", f"/v1/webhooks/agora/{APP_ID}/x", "/v1/webhooks"):
        response = client.post(path, content=body)
        assert (response.status_code, response.json()) == (404, {"error": "not_found"}), path
    response = client.post("/v1/webhooks/agora/unknown%2Fapp", content=body)
    assert (response.status_code, response.json()) == (404, {"error": "not_found"})
