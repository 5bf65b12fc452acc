from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from typing import Any

import pytest

from service import events
from service.errors import MalformedEvent
from tests.factories import load_payload


def body(payload: Any, **envelope: Any) -> bytes:
    document = {
        "noticeId": "n-1",
        "productId": 17,
        "eventType": 101,
        "notifyMs": 1751400000123,
        "payload": payload,
    }
    document.update(envelope)
    return json.dumps(document).encode()


def test_agent_joined_from_the_documented_example() -> None:
    note = events.parse(body(load_payload("101_agent_joined.json")))
    assert note.ignored is None
    assert note.event == events.AgentJoined(
        agent_id="A42AB7C9E0FQ3LZK8TNYXW12RD",
        name="support-7f3c",
        channel="sess-8841",
        labels={"tenant": "acme", "session_ref": "S-2026-0412"},
        started_at=datetime(2025, 7, 1, 20, 0, tzinfo=UTC),
    )
    assert note.occurred_at == datetime(2025, 7, 1, 20, 0, tzinfo=UTC)  # start_ts, not notifyMs


def test_agent_left_keeps_status_message_and_stop_time() -> None:
    note = events.parse(body(load_payload("102_agent_left.json"), eventType=102))
    assert isinstance(note.event, events.AgentLeft)
    assert (note.event.status, note.event.message) == ("STOPPED", "Idle for too long")
    assert note.event.stopped_at == datetime.fromtimestamp(1751400612, tz=UTC)
    assert note.occurred_at == note.event.stopped_at


def test_agent_history_carries_the_transcript() -> None:
    note = events.parse(body(load_payload("103_agent_history.json"), eventType=103))
    assert isinstance(note.event, events.AgentHistory)
    assert [m.role for m in note.event.contents] == ["assistant", "user", "assistant"]
    assert note.event.contents[1].content == "My router keeps dropping Wi-Fi."


def test_agent_error_accepts_integer_and_string_turn_ids() -> None:
    raw = load_payload("110_agent_error.json")
    raw["errors"].append({"module": "llm", "turn_id": "", "code": 500, "message": "upstream"})
    note = events.parse(body(raw, eventType=110))
    assert isinstance(note.event, events.AgentError)
    assert [(e.module, e.code, e.turn_id) for e in note.event.errors] == [
        ("tts", 429, "3"),
        ("llm", 500, None),
    ]
    assert note.occurred_at == datetime.fromtimestamp(
        1751400000.123, tz=UTC
    )  # no own time: notifyMs


def test_metrics_tolerate_missing_figures() -> None:
    note = events.parse(body(load_payload("111_agent_metrics.json"), eventType=111))
    assert isinstance(note.event, events.AgentMetrics)
    assert [m.turn_id for m in note.event.metrics] == ["1", "2"]
    assert "llm_ttfs" not in note.event.metrics[1].figures


def test_turns_finished_parses_millisecond_turn_times() -> None:
    note = events.parse(body(load_payload("112_turns_finished.json"), eventType=112))
    assert isinstance(note.event, events.TurnsFinished)
    first = note.event.turns[0]
    assert (first.turn_id, first.start_type, first.end_type) == (1, "greeting", "ok")
    assert first.start_at == datetime.fromtimestamp(1751400001.2, tz=UTC)


def test_call_state_uses_report_ms() -> None:
    note = events.parse(body(load_payload("202_outbound_call_state.json"), eventType=202))
    assert isinstance(note.event, events.CallState)
    assert (note.event.direction, note.event.state) == ("outbound", "RINGING")
    assert note.occurred_at == datetime.fromtimestamp(1751400003.25, tz=UTC)


def test_older_payloads_without_name_or_labels_parse() -> None:
    note = events.parse(body({"agent_id": "a", "start_ts": 1751400000, "channel": "c"}))
    assert note.event is not None
    assert (note.event.name, note.event.labels) == (None, None)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (1751400000, datetime.fromtimestamp(1751400000, tz=UTC)),  # seconds, as documented
        (1751400000123, datetime.fromtimestamp(1751400000.123, tz=UTC)),  # milliseconds (112)
        (1751400000.5, datetime.fromtimestamp(1751400000.5, tz=UTC)),  # fractional seconds
        (1000, None),  # 111's placeholder start_ts
        (0, None),
        (-5, None),
        (99999999999999999, None),  # beyond 2200
        ("1751400000", None),  # not a number
        (True, None),
    ],
)
def test_timestamps_are_normalised(value: Any, expected: datetime | None) -> None:
    assert events.timestamp(value) == expected


@pytest.mark.parametrize(
    ("product_id", "event_type", "payload", "reason"),
    [
        (1, 101, {"agent_id": "a"}, "not_convoai"),  # RTC notification on the same URL
        (17, 999, {"agent_id": "a"}, "unknown_event_type"),
        (17, 101, {"channelName": "test_webhook", "uid": 12121212}, "test_callback"),
        (17, 102, {"agent_id": "x", "channel": "test_webhook"}, "test_callback"),
        (17, 110, {"uid": "12121212"}, "test_callback"),
    ],
)
def test_ignored_notifications_are_recognised(
    product_id: int, event_type: int, payload: Any, reason: str
) -> None:
    note = events.parse(body(payload, productId=product_id, eventType=event_type))
    assert (note.ignored, note.event) == (reason, None)


@pytest.mark.parametrize(
    ("raw", "detail"),
    [
        (b"not json", "not valid JSON"),
        (b"", "not valid JSON"),
        (b"[1, 2]", "must be a JSON object"),
        (b'"text"', "must be a JSON object"),
        (b'{"productId": 17, "eventType": 101, "payload": {}}', "noticeId is required"),
        (body({}, noticeId=5), "noticeId must be a string"),
        (body({}, noticeId="  "), "noticeId must not be empty"),
        (body({}, productId="17"), "productId must be an integer"),
        (body({}, eventType=101.5), "eventType must be an integer"),
        (body({}, eventType=True), "eventType must be an integer"),
        (body({}, notifyMs="soon"), "notifyMs must be an integer"),
        (body([]), "payload must be an object"),
        (
            json.dumps({"noticeId": "n", "productId": 17, "eventType": 101}).encode(),
            "payload is required",
        ),
        (body({"name": "x"}), "payload.agent_id is required"),
        (body({"agent_id": 42}), "payload.agent_id must be a string"),
        (body({"agent_id": "a", "start_ts": "yesterday"}), "payload.start_ts must be an integer"),
        (body({"agent_id": "a", "labels": ["x"]}), "payload.labels must be an object"),
        (
            body({"agent_id": "a", "contents": {}}, eventType=103),
            "payload.contents must be an array",
        ),
        (
            body({"agent_id": "a", "errors": [{"code": "x"}]}, eventType=110),
            "payload.errors[0].code must be an integer",
        ),
        (
            body({"agent_id": "a", "turns": [{"start": {}}]}, eventType=112),
            "payload.turns[0].turn_id is required",
        ),
        (body({"agent_id": "a"}, eventType=201), "payload.state is required"),
        (
            b'{"noticeId": "n", "productId": 17, "eventType": 101, "payload": {"agent_id": NaN}}',
            "not valid JSON",
        ),
        (body({"agent_id": "a\u0000b"}), "NUL character"),
        (
            b'{"noticeId": "n", "productId": 17, "eventType": 101, "payload": {"agent_id": "\\ud800"}}',
            "unpaired surrogate",
        ),
        (b"[" * 100_000, "not valid JSON"),
    ],
)
def test_malformed_notifications_name_the_problem(raw: bytes, detail: str) -> None:
    with pytest.raises(MalformedEvent, match=re.escape(detail)):
        events.parse(raw)


@pytest.mark.parametrize(
    ("raw", "detail"),
    [
        # Each of these was answered 500 (or 503) when the insert failed; now it is a 400.
        (body({"agent_id": "a"}, productId=2**31), "productId is out of range"),
        (body({"agent_id": "a"}, eventType=-(2**31) - 1), "eventType is out of range"),
        (body({"agent_id": "a"}, notifyMs=2**63), "notifyMs is out of range"),
        (
            body({"agent_id": "a", "errors": [{"code": 2**63}]}, eventType=110),
            "payload.errors[0].code is out of range",
        ),
        (
            body({"agent_id": "a", "metrics": [{"turn_id": 1, "asr_ttlw": 1e300}]}, eventType=111),
            "payload.metrics[0].asr_ttlw is out of range",
        ),
        (
            body({"agent_id": "a", "turns": [{"turn_id": 2**31}]}, eventType=112),
            "payload.turns[0].turn_id is out of range",
        ),
        (
            body(
                {"agent_id": "a", "turns": [{"turn_id": 1, "metrics": {"e2e_latency_ms": 2**40}}]},
                eventType=112,
            ),
            "payload.turns[0].metrics.e2e_latency_ms is out of range",
        ),
        (
            b'{"noticeId": "n", "productId": 17, "eventType": 101, "payload": {"agent_id": "a",'
            b' "labels": {"x": 1e400}}}',
            "body.payload.labels.x is a number out of range",
        ),
        (body({"agent_id": "a", "channel": "c" * 257}), "payload.channel must be at most 256"),
    ],
)
def test_values_the_tables_cannot_hold_are_malformed(raw: bytes, detail: str) -> None:
    with pytest.raises(MalformedEvent, match=re.escape(detail)):
        events.parse(raw)


def test_times_out_of_range_are_absent_not_malformed() -> None:
    note = events.parse(body({"agent_id": "a", "start_ts": 2**70}, notifyMs=2**62))
    assert note.event is not None and note.event.started_at is None
    assert note.notify_ms == 2**62


def test_build_is_the_inverse_of_parse() -> None:
    raw = events.build(
        101, {"agent_id": "a", "start_ts": 1751400000}, notice_id="n-9", notify_ms=1751400000999
    )
    note = events.parse(raw)
    assert (note.notice_id, note.event_type, note.notify_ms, note.agent_id) == (
        "n-9",
        101,
        1751400000999,
        "a",
    )
