"""Hardening of the webhook (CONTRACT §3): verified notifications are kept whatever their
content, whatever their size, and apps are isolated, even when they use the same agent_id."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from starlette.testclient import TestClient

from service import config, events, signatures
from service.app import create_app
from tests.factories import (
    APP_ID,
    SECOND_APP,
    SECOND_SECRET,
    SECRET,
    Sql,
    apps_file,
    deliver,
    payload,
    post,
    reader_headers,
)

START, STOP = 1751400000, 1751400612


@pytest.fixture
def client(make_settings: Callable[..., config.Settings], tmp_path: Path) -> Iterator[TestClient]:
    """Two apps: the environment's and a second one with its own secret."""
    settings = make_settings(LEDGER_APPS_FILE=apps_file(tmp_path, (SECOND_APP, SECOND_SECRET)))
    with TestClient(create_app(settings)) as test_client:
        yield test_client


def agent(sql: Sql, agent_id: str, app_id: str = APP_ID) -> dict[str, Any]:
    rows = sql.rows(
        "SELECT state, name, channel, labels, started_at, stop_status, stop_message,"
        " extract(epoch FROM stopped_at)::bigint AS stop, active_from, active_until"
        " FROM agent WHERE app_id = %(app)s AND agent_id = %(id)s",
        app=app_id,
        id=agent_id,
    )
    assert len(rows) == 1, rows
    return rows[0]


@pytest.mark.parametrize(
    ("event_type", "fields", "column", "expected"),
    [
        (102, {"status": 6, "stop_ts": STOP}, "state", "FAILED"),
        (102, {"status": 4, "stop_ts": STOP}, "state", "STOPPED"),
        (102, {"status": "6", "stop_ts": STOP}, "state", "FAILED"),
        (102, {"message": 500, "stop_ts": STOP}, "stop_message", "500"),
        (102, {"stop_ts": STOP + 0.75}, "stop", STOP),
        (101, {"name": 7}, "name", "7"),
        (101, {"channel": 12345}, "channel", "12345"),
        (101, {"labels": []}, "labels", {}),
        (101, {"start_ts": 10**400}, "started_at", None),
        (102, {"stop_ts": 10**400, "status": "FAILED"}, "state", "FAILED"),
    ],
)
def test_odd_but_meaningful_payload_types_are_applied_not_refused(
    client: TestClient,
    sql: Sql,
    event_type: int,
    fields: dict[str, Any],
    column: str,
    expected: Any,
) -> None:
    body: dict[str, Any] = {"agent_id": "a1", "start_ts": START, **fields}
    if "name" not in fields:
        body["name"] = "n"
    if "channel" not in fields:
        body["channel"] = "c"
    response = post(client, deliver(event_type, body))
    assert (response.status_code, response.json()) == (200, {"status": "accepted"})
    assert agent(sql, "a1")[column] == expected


def test_numeric_strings_in_arrays_are_numbers(client: TestClient, sql: Sql) -> None:
    errors = [{"module": "tts", "code": "429", "message": 500, "turn_id": "7"}]
    assert post(client, deliver(110, payload("a1", errors=errors))).json() == {"status": "accepted"}
    turns = [{"turn_id": "7", "metrics": {"e2e_latency_ms": "1390"}}]
    assert post(client, deliver(112, payload("a1", turns=turns))).json() == {"status": "accepted"}
    assert sql.rows("SELECT module, code, message, turn_id FROM agent_error") == [
        {"module": "tts", "code": 429, "message": "500", "turn_id": "7"}
    ]
    assert sql.rows("SELECT turn_id, e2e_latency_ms FROM agent_turn") == [
        {"turn_id": 7, "e2e_latency_ms": 1390}
    ]


def test_a_stop_keeps_its_slot_closed_whatever_its_odd_fields(client: TestClient, sql: Sql) -> None:
    """The probe's case: a 102 answered 400 left the agent RUNNING, holding a PCU slot."""
    post(client, deliver(101, payload("a1", start_ts=START)))
    odd = payload("a1", start_ts=START, stop_ts=STOP + 0.5, status=6, message=500, labels=[])
    assert post(client, deliver(102, odd)).json() == {"status": "accepted"}
    found = agent(sql, "a1")
    assert (found["state"], found["stop_message"]) == ("FAILED", "500")
    assert found["active_until"] is not None
    pcu = client.get(f"/v1/apps/{APP_ID}/pcu", headers=reader_headers()).json()
    assert pcu["current"] == 0


@pytest.mark.parametrize(
    "body_payload",
    [
        {"name": "no agent"},
        {"agent_id": ""},
        {"agent_id": None},
        {"agent_id": {"nested": True}},
        {"agent_id": "a" * 300},
    ],
)
def test_a_notification_without_a_usable_agent_is_kept_unapplied_and_listed(
    client: TestClient, sql: Sql, body_payload: dict[str, Any]
) -> None:
    delivery = deliver(102, body_payload)
    response = post(client, delivery)
    assert (response.status_code, response.json()) == (200, {"status": "unapplied"})
    assert post(client, delivery).json() == {"status": "duplicate"}
    assert sql.count("agent") == 0
    listed = client.get(
        f"/v1/apps/{APP_ID}/notifications?status=unapplied", headers=reader_headers()
    )
    assert listed.status_code == 200
    [item] = listed.json()["items"]
    assert item["notice_id"] == delivery.notice_id
    assert item["event_type"] == 102
    assert "payload.agent_id" in item["problem"]
    assert item["payload"] == body_payload


def test_the_unapplied_list_pages_newest_first_and_is_per_app(client: TestClient, sql: Sql) -> None:
    sent = [deliver(110, {"errors": []}, notice_id=f"n-{i}") for i in range(5)]
    for delivery in sent:
        post(client, delivery)
    post(client, deliver(110, {}, secret=SECOND_SECRET), app_id=SECOND_APP)
    seen: list[str] = []
    url = f"/v1/apps/{APP_ID}/notifications?limit=2"
    while url:
        page = client.get(url, headers=reader_headers()).json()
        seen += [item["notice_id"] for item in page["items"]]
        cursor = page["next_cursor"]
        url = f"/v1/apps/{APP_ID}/notifications?limit=2&cursor={cursor}" if cursor else ""
    assert seen == [d.notice_id for d in reversed(sent)]
    second = client.get(f"/v1/apps/{SECOND_APP}/notifications", headers=reader_headers())
    assert len(second.json()["items"]) == 1
    bad = client.get(f"/v1/apps/{APP_ID}/notifications?status=accepted", headers=reader_headers())
    assert bad.status_code == 400 and bad.json()["detail"].startswith("status")


def test_a_notification_for_another_apps_agent_id_never_touches_that_agent(
    client: TestClient, sql: Sql
) -> None:
    """The probe's case: a 102 signed with app B's secret for an agent_id of app A set A's agent
    FAILED, replaced its labels and queued a history job with A's credentials."""
    post(client, deliver(101, payload("shared", start_ts=START, labels={"tenant": "acme"})))
    hostile = payload(
        "shared", start_ts=START, stop_ts=STOP, status="FAILED", labels={"tenant": "x"}
    )
    response = post(client, deliver(102, hostile, secret=SECOND_SECRET), app_id=SECOND_APP)
    assert response.json() == {"status": "accepted"}

    mine = agent(sql, "shared", APP_ID)
    assert (mine["state"], mine["labels"], mine["active_until"]) == (
        "RUNNING",
        {"tenant": "acme"},
        None,
    )
    theirs = agent(sql, "shared", SECOND_APP)
    assert (theirs["state"], theirs["labels"]) == ("FAILED", {"tenant": "x"})
    assert sql.rows("SELECT app_id, agent_id FROM history_job") == [
        {"app_id": SECOND_APP, "agent_id": "shared"}
    ]
    assert sql.rows(
        "SELECT app_id, count(*)::int AS n FROM agent_transition GROUP BY app_id ORDER BY app_id"
    ) == [{"app_id": APP_ID, "n": 1}, {"app_id": SECOND_APP, "n": 2}]


def test_one_agent_endpoints_say_which_apps_hold_an_ambiguous_agent_id(
    client: TestClient,
) -> None:
    post(client, deliver(101, payload("shared", start_ts=START)))
    post(
        client,
        deliver(101, payload("shared", start_ts=START + 5), secret=SECOND_SECRET),
        app_id=SECOND_APP,
    )
    for path in ("", "/history", "/events"):
        response = client.get(f"/v1/agents/shared{path}", headers=reader_headers())
        assert (response.status_code, response.json()) == (
            409,
            {"error": "ambiguous_agent", "app_ids": sorted([APP_ID, SECOND_APP])},
        )
        for app_id in (APP_ID, SECOND_APP):
            one = client.get(f"/v1/agents/shared{path}?app_id={app_id}", headers=reader_headers())
            assert one.status_code == 200, one.json()
    started = client.get(f"/v1/agents/shared?app_id={SECOND_APP}", headers=reader_headers())
    assert started.json()["app_id"] == SECOND_APP
    assert started.json()["started_at"] == "2025-07-01T20:00:05Z"
    unknown = client.get("/v1/agents/shared?app_id=nobody", headers=reader_headers())
    assert (unknown.status_code, unknown.json()) == (404, {"error": "not_found"})
    assert client.get("/v1/agents?app_id=nobody", headers=reader_headers()).status_code == 404


@pytest.mark.parametrize(
    ("event_type", "key", "item"),
    [
        (110, "errors", {"code": 1}),
        (111, "metrics", {"turn_id": 1, "asr_ttlw": 1}),
        (112, "turns", None),  # distinct turn ids
        (103, "contents", {"role": "user", "content": "x"}),
    ],
)
def test_a_body_of_a_mebibyte_of_small_items_is_stored_and_applied_in_seconds(
    client: TestClient, sql: Sql, event_type: int, key: str, item: dict[str, Any] | None
) -> None:
    """Past 65,535 bind parameters the driver failed and the answer was 503 forever."""
    items: list[Any] = []
    budget = 1024 * 1024 - 400
    size = 0
    while True:
        one = item if item is not None else {"turn_id": len(items) + 1}
        step = len(json.dumps(one)) + 2
        if size + step > budget:
            break
        items.append(one)
        size += step
    delivery = deliver(event_type, payload("big", **{key: items}))
    assert len(delivery.body) <= 1024 * 1024
    started = time.monotonic()
    response = post(client, delivery)
    elapsed = time.monotonic() - started
    assert (response.status_code, response.json()) == (200, {"status": "accepted"})
    assert elapsed < 10
    table = {110: "agent_error", 111: "agent_metric", 112: "agent_turn"}.get(event_type)
    if table is not None:
        assert sql.count(table) == len(items)
    else:
        assert sql.value("SELECT jsonb_array_length(contents) FROM history") == len(items)
    assert len(items) > 20_000


def deep(depth: int) -> bytes:
    return b"[" * depth + b"1" + b"]" * depth


@pytest.mark.parametrize("depth", [events.MAX_FREE_DEPTH + 5, 600, 900])
@pytest.mark.parametrize(
    ("event_type", "fields", "where"),
    [
        (112, {"turns": [{"turn_id": 1, "metrics": {"e2e_latency_ms": 5}, "x": "DEEP"}]}, "turns"),
        (103, {"contents": [{"role": "user", "content": "hi", "x": "DEEP"}]}, "contents"),
        (101, {"labels": {"tier": "gold", "deep": "DEEP"}}, "labels"),
    ],
)
def test_a_free_form_value_nested_as_deep_as_a_body_may_be_is_kept_not_a_500(
    client: TestClient,
    sql: Sql,
    depth: int,
    event_type: int,
    fields: dict[str, Any],
    where: str,
) -> None:
    """A turn, a message or a label nested hundreds of levels deep (what the decoder takes):
    the notification is accepted and stored as sent; its rows keep the first
    `MAX_FREE_DEPTH` levels and the problem says what was left out. Walking such a value
    recursively ran out of stack (500) and a writer's encoder could too."""
    delivery = deliver(event_type, payload("deep-1", **fields))
    body = delivery.body.replace(b'"DEEP"', deep(depth))
    headers = {"Content-Type": "application/json", **signatures.sign(body, SECRET)}
    response = client.post(f"/v1/webhooks/agora/{APP_ID}", content=body, headers=headers)
    assert (response.status_code, response.json()) == (200, {"status": "accepted"})
    (row,) = sql.rows("SELECT outcome, problem, body::text AS copy FROM notification")
    assert row["outcome"] == "accepted"
    assert f"nests deeper than {events.MAX_FREE_DEPTH} levels" in row["problem"]
    assert row["copy"].count("[" * depth + "1" + "]" * depth) == 1  # stored as sent
    if event_type == 112:
        data = sql.value("SELECT data::text FROM agent_turn")
        assert data.count("[") == events.MAX_FREE_DEPTH - 1  # the turn is level 1
    elif event_type == 103:
        contents = sql.value("SELECT contents::text FROM history")
        # The message's other field is level 1 of its own: all its levels are arrays.
        assert '"hi"' in contents and contents.count("[") == 1 + events.MAX_FREE_DEPTH
    else:
        assert sql.value("SELECT labels FROM agent") == {"tier": "gold"}
