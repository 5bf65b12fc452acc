from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from service import events, fields
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
        (1751400000.5, datetime.fromtimestamp(1751400000, tz=UTC)),  # fractional: truncated
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
        (b"\xff\xfe{}", "not valid JSON"),
        (b"[1, 2]", "must be a JSON object"),
        (b'"text"', "must be a JSON object"),
        (b'{"productId": 17, "eventType": 101, "payload": {}}', "noticeId is required"),
        (body({}, noticeId=["5"]), "noticeId must be a string or an integer"),
        (body({}, noticeId="  "), "noticeId must not be empty"),
        (body({}, noticeId="n" * 257), "noticeId must be at most 256"),
        (body({}, noticeId="a\u0000b"), "noticeId must be at most 256 plain characters"),
        (body({}, productId="17"), "productId must be an integer"),
        (body({}, eventType=101.5), "eventType must be an integer"),
        (body({}, eventType=True), "eventType must be an integer"),
        (body({"agent_id": "a"}, productId=2**31), "productId is out of range"),
        (body({"agent_id": "a"}, eventType=-(2**31) - 1), "eventType is out of range"),
        (body([]), "payload must be an object"),
        (
            json.dumps({"noticeId": "n", "productId": 17, "eventType": 101}).encode(),
            "payload is required",
        ),
        (
            b'{"noticeId": "n", "productId": 17, "eventType": 101, "payload": {"agent_id": NaN}}',
            "not valid JSON",
        ),
        (b"[" * 100_000, "not valid JSON"),
    ],
)
def test_only_a_bad_envelope_is_malformed(raw: bytes, detail: str) -> None:
    with pytest.raises(MalformedEvent, match=re.escape(detail)):
        events.parse(raw)


def test_an_integer_notice_id_is_its_decimal_text() -> None:
    assert events.parse(body({"agent_id": "a"}, noticeId=5)).notice_id == "5"


@pytest.mark.parametrize(
    "payload",
    [
        {"name": "x"},
        {"agent_id": None},
        {"agent_id": ""},
        {"agent_id": "   "},
        {"agent_id": ["a"]},
        {"agent_id": {"id": "a"}},
        {"agent_id": True},
        {"agent_id": "a" * 257},
    ],
)
def test_a_notification_without_a_usable_agent_is_unusable_not_malformed(payload: Any) -> None:
    note = events.parse(body(payload, eventType=102))
    assert note.event is None and note.ignored is None
    assert note.unusable is not None and "payload.agent_id" in note.unusable
    assert note.problem == note.unusable


@pytest.mark.parametrize(
    ("event_type", "payload", "field", "expected"),
    [
        # A number where a string is documented becomes that string.
        (102, {"agent_id": "a", "message": 500}, "message", "500"),
        (101, {"agent_id": "a", "name": 7}, "name", "7"),
        (101, {"agent_id": "a", "channel": 12345}, "channel", "12345"),
        (101, {"agent_id": 42}, "agent_id", "42"),
        # Agora's integer enum for the status of a 102; names in any case.
        (102, {"agent_id": "a", "status": 6}, "status", "FAILED"),
        (102, {"agent_id": "a", "status": 4}, "status", "STOPPED"),
        (102, {"agent_id": "a", "status": "6"}, "status", "FAILED"),
        (102, {"agent_id": "a", "status": "failed"}, "status", "FAILED"),
        (102, {"agent_id": "a", "status": None}, "status", "STOPPED"),
        (102, {"agent_id": "a", "status": [1]}, "status", "STOPPED"),
        # A fractional timestamp is truncated (to the microsecond); numeric strings are numbers.
        (
            102,
            {"agent_id": "a", "stop_ts": 1751400612.9},
            "stopped_at",
            datetime.fromtimestamp(1751400612, tz=UTC),
        ),
        (
            101,
            {"agent_id": "a", "start_ts": "1751400000"},
            "started_at",
            datetime.fromtimestamp(1751400000, tz=UTC),
        ),
        # Absurd timestamps count as absent: not representable, before 2000, too far ahead.
        (101, {"agent_id": "a", "start_ts": 10**400}, "started_at", None),
        (101, {"agent_id": "a", "start_ts": 1000}, "started_at", None),
        (101, {"agent_id": "a", "start_ts": 4102444800}, "started_at", None),
        (101, {"agent_id": "a", "start_ts": "yesterday"}, "started_at", None),
        (101, {"agent_id": "a", "start_ts": -5}, "started_at", None),
        # A labels that is not an object is ignored.
        (101, {"agent_id": "a", "labels": []}, "labels", None),
        (101, {"agent_id": "a", "labels": "tenant=acme"}, "labels", None),
        (101, {"agent_id": "a", "channel": "c" * 257}, "channel", None),
    ],
)
def test_payload_fields_are_read_leniently(
    event_type: int, payload: Any, field: str, expected: Any
) -> None:
    note = events.parse(body(payload, eventType=event_type, notifyMs=1751400000123))
    assert note.event is not None, note.unusable
    assert getattr(note.event, field) == expected


def test_array_items_are_read_leniently_and_junk_items_are_left_out() -> None:
    errors = [
        {"module": "tts", "code": "429", "message": 500, "turn_id": "7"},
        5,
        {},
        {"code": "x", "module": "llm"},
        {"code": 2**63, "message": "huge"},
    ]
    note = events.parse(body({"agent_id": "a", "errors": errors}, eventType=110))
    assert isinstance(note.event, events.AgentError)
    assert note.event.errors == (
        events.ErrorItem(module="tts", code=429, message="500", turn_id="7"),
        events.ErrorItem(module="llm", code=None, message=None, turn_id=None),
        events.ErrorItem(module=None, code=None, message="huge", turn_id=None),
    )
    assert note.unusable is None
    assert note.problems is not None
    for phrase in ("payload.errors[1] is not an object", "payload.errors[3].code is not a number"):
        assert phrase in note.problems


def test_turn_ids_may_be_numeric_strings() -> None:
    turns = [{"turn_id": "7", "end": {"end_at": 1751400004100}}, {"turn_id": "x"}, "t"]
    note = events.parse(body({"agent_id": "a", "turns": turns}, eventType=112))
    assert isinstance(note.event, events.TurnsFinished)
    assert [t.turn_id for t in note.event.turns] == [7]
    assert note.event.turns[0].end_at == datetime.fromtimestamp(1751400004.1, tz=UTC)


def test_a_call_state_without_a_state_still_names_its_agent() -> None:
    note = events.parse(body({"agent_id": "a"}, eventType=201))
    assert isinstance(note.event, events.CallState) and note.event.state is None


def test_problems_are_bounded_for_bodies_of_many_bad_items() -> None:
    note = events.parse(body({"agent_id": "a", "errors": list(range(10_000))}, eventType=110))
    assert note.problems is not None and note.problems.endswith("and more")
    assert len(note.problems) < 2000


def test_the_stored_json_is_the_body_itself() -> None:
    raw = b'{"noticeId":"n","productId":17,"eventType":101,"payload":{"agent_id":"a","x":1.50}}'
    note = events.parse(raw)
    assert (note.json, note.raw) == (raw.decode(), None)


@pytest.mark.parametrize(
    "raw",
    [
        b'{"noticeId":"n","productId":17,"eventType":101,"payload":{"agent_id":"a","x":"a\\u0000b"}}',
        b'{"noticeId":"n","productId":17,"eventType":101,"payload":{"agent_id":"a","x":"\\ud800"}}',
        b'{"noticeId":"n","productId":17,"eventType":101,"payload":{"agent_id":"a\\u0000"}}',
    ],
)
def test_bodies_jsonb_cannot_hold_are_kept_exactly_beside_a_storable_copy(raw: bytes) -> None:
    note = events.parse(raw)
    assert note.raw == raw
    assert "\\u0000" not in note.json and "\\ud800" not in note.json
    assert json.loads(note.json)["noticeId"] == "n"


def test_huge_numbers_anywhere_are_not_a_failure() -> None:
    digits = "9" * 5000
    raw = (
        '{"noticeId":"n","productId":17,"eventType":102,"payload":{"agent_id":"a",'
        f'"stop_ts":{digits},"labels":{{"x":1e400}},"message":{digits}}}}}'
    ).encode()
    note = events.parse(raw)
    assert isinstance(note.event, events.AgentLeft)
    assert note.event.stopped_at is None and note.event.message is None
    assert note.json == raw.decode()


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


def with_number(literal: str) -> bytes:
    return (
        '{"noticeId":"n","productId":17,"eventType":101,"payload":{"agent_id":"a",'
        f'"text":"{"1" * 20_000} 1e99999","x":{literal}}}}}'
    ).encode()


@pytest.mark.parametrize(
    "literal",
    [
        "1" + "0" * 131_071,  # 131,072 digits before the point: numeric's most
        "0." + "1" * 16_383,  # 16,383 after it
        "-1e400",
        "1e1000",
        "1e-1000",
        "0.5E-999",
        "-0",
    ],
)
def test_numbers_numeric_holds_are_stored_as_sent(literal: str) -> None:
    raw = with_number(literal)
    note = events.parse(raw)
    assert (note.json, note.raw) == (raw.decode(), None)


@pytest.mark.parametrize(
    "literal",
    [
        "1" + "0" * 131_072,
        "0." + "1" * 16_384,
        "1e200000",
        "-1e-200000",
        "10e131071",
        "100e-16385",
        "0e-1000000",
        "1e1001",  # numeric refused exponents beyond ±1000 before PostgreSQL 15
        "1e" + "9" * 5000,
    ],
)
def test_numbers_numeric_cannot_hold_are_stored_as_strings_beside_the_exact_bytes(
    literal: str,
) -> None:
    raw = with_number(literal)
    note = events.parse(raw)
    assert note.raw == raw
    stored = json.loads(note.json)
    assert stored["payload"]["x"] == literal
    assert stored["payload"]["text"] == f"{'1' * 20_000} 1e99999"  # strings stay as they were
    assert isinstance(note.event, events.AgentJoined)


def test_numbers_too_large_for_a_float_are_null_in_what_is_kept_as_sent() -> None:
    big = "1" + "0" * 5000
    turn = f'{{"turn_id":1,"metrics":{{"e2e_latency_ms":-1e400,"x":[{big}]}}}}'
    joined = events.parse(with_number(f'1,"labels":{{"a":1e400,"b":[{big}]}}'))
    turns = events.parse(with_number(f'1,"turns":[{turn}]').replace(b":101,", b":112,"))
    history = events.parse(
        with_number('1,"contents":[{"role":"user","content":"hi","ms":1e999}]').replace(
            b":101,", b":103,"
        )
    )
    assert isinstance(joined.event, events.AgentJoined)
    assert joined.event.labels == {"a": None, "b": [None]}
    assert isinstance(turns.event, events.TurnsFinished)
    assert turns.event.turns[0].data["metrics"] == {"e2e_latency_ms": None, "x": [None]}
    assert isinstance(history.event, events.AgentHistory)
    assert history.event.contents[0].extra == {"ms": None}


@pytest.mark.parametrize(
    ("segmented", "stages"),
    [
        # 112: an object of stage -> ms
        ({"asr_ttlw": 380, "llm_ttft": 610, "tts_ttfb": 120}, (380, 610, 120)),
        # /turns: a list of {name, latency}
        (
            [{"name": "tts_ttfb", "latency": 95}, {"name": "asr_ttlw", "latency": "301"}],
            (301, None, 95),
        ),
        # a numeric string is the number, a fraction is truncated
        ({"asr_ttlw": "250", "llm_ttft": 400.9}, (250, 400, None)),
        # hostile figures are left out: negative, not a number, a bool, an object, too large
        (
            {"asr_ttlw": -5, "llm_ttft": "fast", "tts_ttfb": True, "x": 1},
            (None, None, None),
        ),
        ({"asr_ttlw": {"ms": 1}, "llm_ttft": 2**40, "tts_ttfb": None}, (None, None, None)),
        # list items that are not objects or name no known stage are ignored; the first wins
        (
            [
                "asr_ttlw",
                {"name": 7},
                {"name": "llm_ttft", "latency": 1},
                {"name": "llm_ttft", "latency": 2},
            ],
            (None, 1, None),
        ),
        # neither an object nor a list: no stages
        ("380", (None, None, None)),
        (None, (None, None, None)),
    ],
)
def test_turn_stages_are_read_from_an_object_or_a_list(
    segmented: Any, stages: tuple[int | None, ...]
) -> None:
    turn = {"turn_id": 1, "metrics": {"e2e_latency_ms": 900, "segmented_latency_ms": segmented}}
    note = events.parse(body({"agent_id": "a", "turns": [turn]}, eventType=112))
    assert isinstance(note.event, events.TurnsFinished)
    found = note.event.turns[0].stages
    assert tuple(found.get(stage) for stage in events.STAGES) == stages
    assert note.event.turns[0].e2e_latency_ms == 900


def test_hostile_stage_figures_are_noted() -> None:
    turn = {"turn_id": 1, "metrics": {"segmented_latency_ms": {"asr_ttlw": -1, "tts_ttfb": "x"}}}
    note = events.parse(body({"agent_id": "a", "turns": [turn]}, eventType=112))
    assert note.problems is not None
    assert "payload.turns[0].metrics.segmented_latency_ms.asr_ttlw is negative" in note.problems
    assert "segmented_latency_ms.tts_ttfb is not a number" in note.problems


_JSON_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(10**30), max_value=10**30)
    | st.integers(min_value=-(2**64), max_value=2**64)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)


@settings(max_examples=500, deadline=None)
@given(
    document=st.dictionaries(st.text(max_size=8), _JSON_VALUES, max_size=6), spaced=st.booleans()
)
def test_a_body_reads_as_the_standard_library_reads_it(
    document: dict[str, Any], spaced: bool
) -> None:
    """The fast decoder's reading is the stdlib's, integers of any length included."""
    separators = (", ", ": ") if spaced else (",", ":")
    text = json.dumps(document, separators=separators, ensure_ascii=False)
    body = text.encode()
    read = events._loads(body, text, plain=events._plain_numbers(body))
    assert read == json.loads(text)
    assert json.dumps(read, sort_keys=True) == json.dumps(json.loads(text), sort_keys=True)


_NUMBERS = st.one_of(
    st.integers().map(str),
    st.from_regex(r"-?(0|[1-9][0-9]{0,400})(\.[0-9]{1,40})?([eE][+-]?[0-9]{1,6})?", fullmatch=True),
)


@settings(max_examples=500, deadline=None)
@given(
    numbers=st.lists(_NUMBERS, min_size=1, max_size=4),
    spaces=st.sampled_from(("", " ", "\n", "\t", "\r\n ")),
    words=st.text(alphabet="ab1e0E+-.: ", max_size=40),
)
def test_a_body_called_plain_has_no_number_the_slow_checks_would_catch(
    numbers: list[str], spaces: str, words: str
) -> None:
    """`_plain_numbers` may raise a false alarm, never miss what the regular expressions see."""
    body = (
        "{"
        + f'"w":{json.dumps(words)},'
        + ",".join(f'"{i}":{spaces}{n}' for i, n in enumerate(numbers))
        + f',"l":[{spaces}{numbers[0]}]'
        + "}"
    ).encode()
    if events._plain_numbers(body):
        assert events._MAYBE_INFINITE.search(body) is None
        assert events._LONG_NUMBER.search(body) is None
        read = events._loads(body, body.decode(), plain=True)
        assert json.dumps(read) == json.dumps(json.loads(body))


@pytest.mark.parametrize("depth", [300, 1000, 1023, 5000])
def test_a_body_nested_deeper_than_python_reads_is_refused_whichever_decoder_reads_it(
    depth: int,
) -> None:
    nested = "[" * depth + "]" * depth
    body = '{"noticeId":"n1","productId":17,"eventType":101,"payload":{"x":' + nested + "}}"
    try:
        note = events.parse(body.encode())
    except MalformedEvent as refused:
        assert "nested too deeply" in str(refused)
    else:  # shallow enough for the stdlib: read the same way
        assert note.notice_id == "n1" and json.loads(note.json) == json.loads(body)


# --- free-form values: rebuilt without recursion ---------------------------------------------

free_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False)
    | st.just(float("inf"))
    | st.text(alphabet=st.characters(codec="utf-8") | st.just("\x00"), max_size=5),
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(st.text(alphabet="a\x00\ufffd", max_size=2), children, max_size=4)
    ),
    max_leaves=30,
)


def reference(value: Any, depth: int | None, level: int = 1) -> Any:
    """The recursive reading `fields.rebuild` replaces: non-finite numbers and what nests deeper
    than `depth` as None, NUL in keys and strings as U+FFFD."""
    if isinstance(value, dict | list) and depth is not None and level > depth:
        return None
    if isinstance(value, dict):
        return {
            k.replace("\x00", "\ufffd"): reference(v, depth, level + 1) for k, v in value.items()
        }
    if isinstance(value, list):
        return [reference(v, depth, level + 1) for v in value]
    if isinstance(value, float) and value in (float("inf"), float("-inf")):
        return None
    return value.replace("\x00", "\ufffd") if isinstance(value, str) else value


def levels(value: Any) -> int:
    if isinstance(value, dict):
        return 1 + max(map(levels, value.values()), default=0)
    if isinstance(value, list):
        return 1 + max(map(levels, value), default=0)
    return 0


@settings(max_examples=300)
@given(value=free_values, depth=st.none() | st.integers(1, 4))
def test_rebuild_equals_the_recursive_reading(value: Any, depth: int | None) -> None:
    def scalar(v: Any) -> Any:
        v = fields.finite_number(v)
        return v.replace("\x00", "\ufffd") if isinstance(v, str) else v

    rebuilt, cut = fields.rebuild(
        value, scalar, key=lambda k: k.replace("\x00", "\ufffd"), depth=depth
    )
    expected = reference(value, depth)
    assert json.dumps(rebuilt) == json.dumps(expected)  # same keys in the same order
    assert cut == (depth is not None and levels(value) > depth)


def test_rebuild_takes_no_stack_for_a_value_nested_far_beyond_the_recursion_limit() -> None:
    value: Any = 1
    for _ in range(50_000):
        value = [value]
    rebuilt, cut = fields.rebuild(value, fields.finite_number)
    assert cut is False
    for _ in range(50_000):
        assert isinstance(rebuilt, list) and len(rebuilt) == 1
        rebuilt = rebuilt[0]
    assert rebuilt == 1
    assert fields.rebuild(value, fields.finite_number, depth=3) == ([[[None]]], True)
