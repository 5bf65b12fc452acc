"""Fuzzing the webhook: random and mutated bodies, signed validly and not, against a real database.

Bodies start from the real notifications in `tests/payloads/` and are mutated (values swapped for
other types, huge numbers, odd unicode, NUL, deep nesting; keys removed or added; bytes truncated,
replaced or prefixed), or are random bytes altogether. Mutations include what the service must
read leniently (numbers for strings and numeric strings for numbers, integer status enums,
fractional timestamps, labels as arrays), numbers no JSON library writes (5,000-digit integers,
10**400, numbers past what PostgreSQL's `numeric` holds) and hostile agent ids (`../../x`,
`q?evil=1&`, NUL, lone surrogates, 257 characters, numbers, objects). Bodies of tens of thousands
of array items in 103, 110, 111 and 112 are sent too, a few per run.

Each is signed correctly, with a wrong secret, with a signature over other bytes, or not at all.
Whatever arrives, the service must never answer 500 (or 503 with the database up); a body it
rejects must leave no trace (the counts of stored rows are compared before and after every
request); and every verified body (correctly signed, for a known app, at most 1 MiB, with a
valid envelope) is answered 200 and stored exactly once, exactly as sent: its JSON equal to the
body's, or, when jsonb cannot hold the body, its exact bytes in `raw`. Nothing verified fails to
apply for a reason other than its content (no stored `problem` says "applying failed").
"""

from __future__ import annotations

import copy
import itertools
import json
import math
import os
import sys
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from starlette.testclient import TestClient

from service import events, signatures
from tests.factories import APP_ID, SECRET, Sql, load_payload

PAYLOADS = os.path.join(os.path.dirname(os.path.dirname(__file__)), "payloads")
# Real payloads by event type, from the files named after them (101_agent_joined.json, ...).
SEEDS: dict[int, dict[str, Any]] = {
    int(name.split("_", 1)[0]): load_payload(name)
    for name in sorted(os.listdir(PAYLOADS))
    if name[:3].isdigit()
}
MAX_BODY = 1024 * 1024
TABLES = ("notification", "agent", "agent_transition", "agent_error", "history_job")

HUGE_NUMBERS = (
    2**31,
    -(2**31) - 1,
    2**53 + 1,
    2**63,
    -(2**63) - 1,
    2**64,
    10**30,
    10**300,
    1e308,
    -1e308,
    1.5,
    -0.0,
    1e-300,
)
ODD_STRINGS = (
    "",
    " ",
    "\x00",
    "agent\x00id",
    "\ud800",  # a lone surrogate: valid JSON escaped, not storable
    "\udfff\ud800",
    "\u202eevil",
    "💥" * 64,
    "ǅ̈‍",
    "\uffff\ufffe",
    "x" * 5000,
    "null",
    "1751400000",
    "STOPPED",
    "FAILED",
    "test_webhook",
)

# Agent ids that must never steer a request or reach another agent: stored, answered unapplied or
# applied as plain text, never a 400.
HOSTILE_AGENT_IDS: tuple[Any, ...] = (
    "../../x",
    "../../../../admin/secret",
    "q?evil=1&",
    "a/b",
    "%2e%2e%2f",
    "a\x00b",
    "\ud800",
    "\udfffx",
    "x" * 257,
    "x" * 5000,
    "",
    " ",
    12345,
    -1,
    1.5,
    10**400,
    True,
    None,
    {"id": "a"},
    ["a"],
)


@dataclass(frozen=True, slots=True)
class Raw:
    """A number written into the body as this literal (`json.dumps` cannot write most of them)."""

    literal: str


RAW_NUMBERS = (
    "1" + "0" * 5000,  # past Python's int() digit limit
    "-" + "9" * 5000,
    "1" + "0" * 400,
    "1e400",
    "-1e400",
    "1e-400",
    "1.5e308",
    "0.5E-999",
    "1e200000",  # past what PostgreSQL's numeric holds: stored beside its exact bytes
    "-1e-200000",
    "0." + "1" * 16_384,
    "9" * 131_073,
)

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=20),
    st.sampled_from(HUGE_NUMBERS),
    st.sampled_from(ODD_STRINGS),
)
json_values = st.recursive(
    scalars,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)


def nested(depth: int, leaf: Any = 1) -> Any:
    value = leaf
    for level in range(depth):
        value = [value] if level % 2 else {"n": value}
    return value


# Deeper than the JSON encoder's recursion limit is done on the bytes (`damage`, "deep").
values = st.one_of(
    st.sampled_from(HUGE_NUMBERS + ODD_STRINGS),
    json_values,
    st.text(min_size=257, max_size=2000),
    st.integers(1, 400).map(nested),
    st.sampled_from(RAW_NUMBERS).map(Raw),
    st.sampled_from(HOSTILE_AGENT_IDS),
)


def retyped(data: st.DataObject, value: Any) -> Any:
    """The same meaning in another type, as Agora's payloads sometimes carry it: a number as a
    string, a numeric string as a number, a time with a fraction, an object as an array."""
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, int | float):
        if abs(value) > 1e300:
            return str(value)
        return data.draw(st.sampled_from((str(value), value + 0.5, float(value), -value)))
    if isinstance(value, str):
        try:
            number = float(value)
        except ValueError:
            return data.draw(st.sampled_from((value, [value], len(value))))
        return int(number) if math.isfinite(number) and number.is_integer() else number
    if isinstance(value, dict):
        return data.draw(st.sampled_from((list(value.items()), list(value), [], "")))
    if isinstance(value, list):
        return data.draw(st.sampled_from((value[:1], dict(enumerate(value)), "")))
    return value


def meaningful(data: st.DataObject, payload: dict[str, Any]) -> None:
    """Fields that CONTRACT §3 reads leniently, given in their other documented forms."""
    field = data.draw(
        st.sampled_from(("status", "start_ts", "stop_ts", "labels", "message", "name", "channel"))
    )
    if field == "status":
        payload["status"] = data.draw(st.sampled_from((0, 4, 6, 7, -1, "6", "4", 6.0, "failed")))
    elif field in ("start_ts", "stop_ts"):
        base = payload.get(field, 1_751_400_000)
        stamp = base if isinstance(base, int) else 1_751_400_000
        payload[field] = data.draw(
            st.sampled_from((stamp + 0.75, stamp * 1000 + 0.5, str(stamp), f"{stamp}.5", 10**400))
        )
    elif field == "labels":
        # A copy: a later `mutate` may change it in place, and a sample shared between examples
        # would then differ from one example to the next (hypothesis: flaky generation).
        labels = data.draw(st.sampled_from(([], [["k", "v"]], "tenant=acme", 7, None)))
        payload["labels"] = copy.deepcopy(labels)
    else:
        payload[field] = data.draw(st.sampled_from((500, -1, 1.5, 10**30, "500")))


def exact_json(text: str | bytes) -> Any:
    """A JSON document with every number a Decimal. jsonb keeps numbers as `numeric`, so 1e308
    comes back as 100…0: the same number, which floats and ints would not compare equal."""
    return json.loads(text, parse_float=Decimal, parse_int=Decimal)


def same_json(stored: str | bytes, sent: str | bytes) -> bool:
    """Whether two JSON texts hold the same document (`exact_json`). The service decodes on a
    fresh stack; deep in hypothesis and pytest, decoding and comparing here may need more room
    for a body nested almost as deep as Python's limit allows."""
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(limit + 2000)
    try:
        return bool(exact_json(stored) == exact_json(sent))
    finally:
        sys.setrecursionlimit(limit)


def paths(document: Any, prefix: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    """Every place in a JSON document down to 8 levels, the root excluded."""
    items: Any = ()
    if len(prefix) >= 8:
        return
    if isinstance(document, dict):
        items = document.items()
    elif isinstance(document, list):
        items = enumerate(document)
    for key, value in items:
        yield (*prefix, key)
        yield from paths(value, (*prefix, key))


def mutate(data: st.DataObject, document: dict[str, Any]) -> None:
    """One change at a random place: another value, a missing key, an extra key, a wrapper."""
    path = data.draw(st.sampled_from(list(paths(document))))
    parent: Any = document
    for key in path[:-1]:
        parent = parent[key]
    key = path[-1]
    action = data.draw(st.sampled_from(("replace", "remove", "add", "wrap", "retype")))
    if action == "replace":
        parent[key] = copy.deepcopy(data.draw(values))  # (constants: see `body`)
    elif action == "retype":
        parent[key] = retyped(data, parent[key])
    elif action == "remove":
        del parent[key]
    elif action == "add" and isinstance(parent, dict):
        parent[data.draw(st.text(max_size=10))] = copy.deepcopy(data.draw(values))
    elif action == "wrap":
        parent[key] = data.draw(st.sampled_from(([parent[key]], {"value": parent[key]})))


def serialise(data: st.DataObject, document: dict[str, Any]) -> bytes:
    ascii_only = data.draw(st.booleans())
    literals: dict[str, str] = {}

    def placeholder(value: Any) -> str:
        if not isinstance(value, Raw):
            raise TypeError(value)
        marker = f"\ue000{len(literals)}\ue000"
        literals[json.dumps(marker, ensure_ascii=ascii_only)] = value.literal
        return marker

    text = json.dumps(document, ensure_ascii=ascii_only, separators=(",", ":"), default=placeholder)
    for marker, literal in literals.items():
        text = text.replace(marker, literal, 1)
    return text.encode("utf-8", "surrogatepass")


def damage(data: st.DataObject, body: bytes) -> bytes:
    """Byte-level harm after serialising: truncation, a NUL, a flipped byte, a BOM, garbage."""
    how = data.draw(
        st.sampled_from(
            (
                "none",
                "none",
                "truncate",
                "nul",
                "byte",
                "bom",
                "append",
                "infinite",
                "deep",
                "oversize",
            )
        )
    )
    at = data.draw(st.integers(0, max(len(body) - 1, 0)))
    if how == "truncate":
        return body[:at]
    if how == "nul":
        return body[:at] + b"\x00" + body[at:]
    if how == "byte":
        return body[:at] + bytes([data.draw(st.integers(0, 255))]) + body[at + 1 :]
    if how == "bom":
        return b"\xef\xbb\xbf" + body
    if how == "append":
        return body + data.draw(st.binary(min_size=1, max_size=8))
    if how == "infinite":  # valid JSON that decodes to float("inf")
        return body[:-1] + b',"big":-1e400}'
    if how == "deep":
        depth = data.draw(st.integers(1, 100_000))
        return body[:-1] + b',"deep":' + b"[" * depth + b"]" * depth + b"}"
    if how == "oversize":
        return body[:-1] + b',"pad":"' + b"x" * (1024 * 1024) + b'"}'
    return body


def body(data: st.DataObject) -> bytes:
    source = data.draw(st.sampled_from(("mutated", "mutated", "mutated", "bytes", "json")))
    if source == "bytes":
        return data.draw(st.binary(max_size=300))
    if source == "json":
        return json.dumps(data.draw(json_values)).encode("utf-8", "surrogatepass")
    event_type = data.draw(st.sampled_from(sorted(SEEDS)))
    document = json.loads(
        events.build(
            event_type,
            copy.deepcopy(SEEDS[event_type]),
            notice_id=f"fuzz-{uuid.uuid4()}",  # fresh, so the body is applied, not a duplicate
            notify_ms=1_751_400_000_000,
        )
    )
    payload = document["payload"]
    if data.draw(st.integers(0, 3)) == 0:
        meaningful(data, payload)
    if data.draw(st.integers(0, 5)) == 0:
        # (A copy: a later mutation may change a dict or list in place, and the next example
        # must draw the same constants.)
        payload["agent_id"] = copy.deepcopy(data.draw(st.sampled_from(HOSTILE_AGENT_IDS)))
    for _ in range(data.draw(st.integers(0, 3))):
        mutate(data, document)
    return damage(data, serialise(data, document))


SIGNINGS = ("valid", "valid", "valid", "sha1_only", "wrong_secret", "none", "garbage", "stale")


def signed(body: bytes, how: str) -> dict[str, str]:
    if how == "valid":
        return signatures.sign(body, SECRET)
    if how == "sha1_only":
        return {signatures.SHA1_HEADER: signatures.sign(body, SECRET)[signatures.SHA1_HEADER]}
    if how == "wrong_secret":
        return signatures.sign(body, SECRET + "-old")
    if how == "garbage":
        return {
            signatures.SHA256_HEADER: "zz" + "0" * 62,
            signatures.SHA1_HEADER: "not a signature",
        }
    if how == "stale":  # a signature of other bytes (the body before it was changed)
        return signatures.sign(body + b" ", SECRET)
    return {}


def counts(conn: psycopg.Connection[Any]) -> tuple[int, ...]:
    return tuple(conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0] for table in TABLES)  # type: ignore[index]


def send(client: TestClient, body: bytes, headers: dict[str, str], app_id: str | None) -> Any:
    path = "/v1/webhooks/agora" + (f"/{app_id}" if app_id is not None else "")
    return client.post(path, content=body, headers={"Content-Type": "application/json", **headers})


def _as_int(digits: str) -> int | float:
    # As the service reads integers: longer digit strings cannot become ints.
    return int(digits) if len(digits) <= 4000 else math.inf


def _no_constant(name: str) -> None:
    raise ValueError(name)


def valid_envelope(sent: bytes) -> bool | None:
    """Whether the body is a JSON object with a valid envelope (CONTRACT §3, Hardening); None when
    it nests so deeply that whether it decodes depends on the decoder's stack."""
    try:
        document = json.loads(sent.decode("utf-8"), parse_int=_as_int, parse_constant=_no_constant)
    except RecursionError:
        return None
    except ValueError:
        return False
    if not isinstance(document, dict) or not isinstance(document.get("payload"), dict):
        return False
    notice_id = document.get("noticeId")
    if isinstance(notice_id, int) and not isinstance(notice_id, bool):
        notice_id = str(notice_id)
    if not (isinstance(notice_id, str) and notice_id.strip() and len(notice_id) <= 256):
        return False
    if "\x00" in notice_id or "\ufffd" in notice_id or not _utf8(notice_id):
        return False
    return all(_envelope_int(document.get(key)) for key in ("productId", "eventType"))


def _utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _envelope_int(value: Any) -> bool:
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return isinstance(value, int) and not isinstance(value, bool) and -(2**31) <= value < 2**31


def notice_of(sent: bytes) -> str:
    """The body's `noticeId` as the service keys it (an integer as its decimal text)."""
    return str(json.loads(sent, parse_int=_as_int)["noticeId"])


def stored_once(
    conn: psycopg.Connection[Any], sent: bytes, *, duplicate: bool = False
) -> tuple[str, str | None]:
    """The one row stored under this body's noticeId: unless the body repeats an earlier one's
    noticeId, checks it is the body exactly. Answers its (outcome, problem)."""
    notice_id = notice_of(sent)
    rows = conn.execute(
        "SELECT raw, body::text, outcome, problem FROM notification"
        " WHERE app_id = %s AND notice_id = %s",
        (APP_ID, notice_id),
    ).fetchall()
    assert len(rows) == 1, notice_id
    raw, copy_text, outcome, problem = rows[0]
    if duplicate:
        pass
    elif raw is not None:  # jsonb could not hold the body: its exact bytes, beside a copy
        assert bytes(raw) == sent
        assert notice_of(copy_text.encode()) == notice_id
    else:
        assert same_json(copy_text, sent)
    assert not (problem or "").startswith("applying failed"), problem
    return outcome, problem


def test_no_body_or_signature_makes_the_webhook_fail_or_store_what_it_rejected(
    client: TestClient, sql: Sql
) -> None:
    answers: Counter[int] = Counter()
    accepted: dict[str, bytes] = {}  # the bodies stored (answered 200, not duplicate), by noticeId

    @settings(
        max_examples=400,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(data=st.data())
    def one_delivery(data: st.DataObject) -> None:
        sent = body(data)
        signing = data.draw(st.sampled_from(SIGNINGS))
        app_id = data.draw(st.sampled_from((APP_ID, APP_ID, APP_ID, None, "unknown-app")))
        before = counts(conn)
        response = send(client, sent, signed(sent, signing), app_id)
        after = counts(conn)
        status = response.status_code
        answers[status] += 1

        assert status in (200, 400, 401, 404, 413), (status, response.text)
        if app_id == "unknown-app":
            assert status == 404
        elif len(sent) > MAX_BODY:
            assert status == 413
        elif signing not in ("valid", "sha1_only"):
            assert status == 401
        else:  # verified: only the envelope decides between 200 and 400
            verdict = valid_envelope(sent)
            if verdict is not None:
                assert status == (200 if verdict else 400), (status, response.text)
        if status != 200:
            assert after == before, (status, response.json())
            assert set(response.json()) <= {"error", "detail"}
            return
        answer = response.json()["status"]
        assert answer in ("accepted", "unapplied", "duplicate", "ignored")
        outcome, _ = stored_once(conn, sent, duplicate=answer == "duplicate")
        if answer == "duplicate":
            assert after == before
        else:
            assert after[0] == before[0] + 1
            assert outcome == answer  # the answer says how it was stored
            accepted[notice_of(sent)] = sent

    with psycopg.connect(sql.url, autocommit=True) as conn:
        one_delivery()
        rows = conn.execute("SELECT notice_id, raw, body::text FROM notification").fetchall()
    assert {notice_id for notice_id, _, _ in rows} == set(accepted)
    for notice_id, raw, copy_text in rows:
        sent = accepted[notice_id]
        assert bytes(raw) == sent if raw is not None else same_json(copy_text, sent)
    assert answers[200] > 0 and answers[400] > 0 and answers[401] > 0, answers


def numbers_body(literal: str) -> bytes:
    return events.build(
        101,
        {"agent_id": f"numbers-{uuid.uuid4()}", "start_ts": 1_751_400_000, "x": "@@"},
        notice_id=f"numbers-{uuid.uuid4()}",
        notify_ms=1_751_400_000_000,
    ).replace(b'"@@"', literal.encode())


@pytest.mark.parametrize("literal", (*RAW_NUMBERS, "1e-16383", "1e131071", "1e131072"))
def test_a_number_of_any_size_is_stored_and_its_notification_applied(
    client: TestClient, sql: Sql, literal: str
) -> None:
    sent = numbers_body(literal)
    response = send(client, sent, signatures.sign(sent, SECRET), APP_ID)
    assert response.json() == {"status": "accepted"}
    with psycopg.connect(sql.url, autocommit=True) as conn:
        assert stored_once(conn, sent) == ("accepted", None)


# Items of each array: well-formed, odd but meaningful, junk, hostile. The ids they carry are
# `{n}`, numbered so that every turn is its own.
WIDE_ITEMS: dict[int, tuple[str, list[str]]] = {
    103: (
        "contents",
        [
            '{"role":"user","content":"My router keeps dropping Wi-Fi. {n}"}',
            '{"role":"assistant","content":"Let us restart it.","turn_id":{n}}',
            '{"role":7,"content":500}',
            '{"role":"user","content":"\\u0000 nul {n}"}',
            '"just text"',
            "null",
        ],
    ),
    110: (
        "errors",
        [
            '{"module":"tts","turn_id":{n},"code":429,"message":"vendor rate limited"}',
            '{"module":"llm","turn_id":"{n}","code":"500","message":500}',
            '{"module":7,"code":1e400,"message":null,"turn_id":1.5}',
            '{"module":"asr","code":1' + "0" * 50 + "}",
            "[1,2]",
            "5",
        ],
    ),
    111: (
        "metrics",
        [
            '{"turn_id":{n},"asr_ttlw":410,"llm_ttfb":690,"llm_ttfs":910,"tts_ttfb":120}',
            '{"turn_id":"{n}","asr_ttlw":"380","tts_ttfb":95.5}',
            '{"turn_id":{n},"asr_ttlw":-1e400,"llm_ttfb":"fast"}',
            '{"asr_ttlw":1}',
            '"metric"',
            "{}",
        ],
    ),
    112: (
        "turns",
        [
            '{"turn_id":{n},"start":{"start_at":1751400001200,"type":"greeting"},'
            '"end":{"end_at":1751400004100,"type":"ok"},"metrics":{"e2e_latency_ms":900}}',
            '{"turn_id":"{n}","start":{"start_at":"1751400009000"},'
            '"end":{"end_at":1751400014800.5},"metrics":{"e2e_latency_ms":"1390"}}',
            '{"turn_id":{n},"start":[],"end":"x","metrics":{"e2e_latency_ms":1e400}}',
            '{"turn_id":null}',
            "7",
        ],
    ),
}


def wide_body(event_type: int, agent_id: str) -> tuple[bytes, int]:
    """A body just under 1 MiB of items cycling through the templates; answers it and its item
    count."""
    key, templates = WIDE_ITEMS[event_type]
    head = events.build(
        event_type,
        {"agent_id": agent_id, "start_ts": 1_751_400_000, "stop_ts": 1_751_400_600, key: "@@"},
        notice_id=f"wide-{uuid.uuid4()}",
        notify_ms=1_751_400_000_000,
    )
    room = MAX_BODY - len(head) - 16
    items: list[str] = []
    size = 0
    for n, template in zip(itertools.count(), itertools.cycle(templates)):
        item = template.replace("{n}", str(n))
        if size + len(item) + 1 > room:
            break
        items.append(item)
        size += len(item) + 1
    return head.replace(b'"@@"', f"[{','.join(items)}]".encode()), len(items)


@pytest.mark.parametrize("event_type", sorted(WIDE_ITEMS))
def test_tens_of_thousands_of_array_items_are_stored_once_and_applied(
    client: TestClient, sql: Sql, event_type: int
) -> None:
    agent_id = f"wide-{event_type}"
    sent, items = wide_body(event_type, agent_id)
    assert len(sent) <= MAX_BODY and items > 10_000
    response = send(client, sent, signatures.sign(sent, SECRET), APP_ID)
    assert response.json() == {"status": "accepted"}
    with psycopg.connect(sql.url, autocommit=True) as conn:
        outcome, problem = stored_once(conn, sent)
    assert outcome == "accepted" and problem is not None  # the junk items are noted
    table = {103: None, 110: "agent_error", 111: "agent_metric", 112: "agent_turn"}[event_type]
    if table is not None:
        kept = sql.value(f"SELECT count(*) FROM {table} WHERE agent_id = %(a)s", a=agent_id)
        well_formed = items // len(WIDE_ITEMS[event_type][1])
        assert well_formed <= kept <= items, (kept, items)
    else:
        contents = sql.value("SELECT contents FROM history WHERE agent_id = %(a)s", a=agent_id)
        assert items // 3 <= len(contents) <= items
