"""Fuzzing the webhook: random and mutated bodies, signed validly and not, against a real database.

Bodies start from the real notifications in `tests/payloads/` and are mutated (values swapped for
other types, huge numbers, odd unicode, NUL, deep nesting; keys removed or added; bytes truncated,
replaced or prefixed), or are random bytes altogether. Each is signed correctly, with a wrong
secret, with a signature over other bytes, or not at all. Whatever arrives, the service must never
answer 500 (or 503 with the database up), and a body it rejects must leave no trace: the counts of
stored rows are compared before and after every request, and every stored notification must be one
that was answered 200, stored exactly as sent.
"""

from __future__ import annotations

import copy
import json
import os
import uuid
from collections import Counter
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import psycopg
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
)


def exact_json(text: str | bytes) -> Any:
    """A JSON document with every number a Decimal. jsonb keeps numbers as `numeric`, so 1e308
    comes back as 100…0: the same number, which floats and ints would not compare equal."""
    return json.loads(text, parse_float=Decimal, parse_int=Decimal)


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
    action = data.draw(st.sampled_from(("replace", "remove", "add", "wrap")))
    if action == "replace":
        parent[key] = data.draw(values)
    elif action == "remove":
        del parent[key]
    elif action == "add" and isinstance(parent, dict):
        parent[data.draw(st.text(max_size=10))] = data.draw(values)
    elif action == "wrap":
        parent[key] = data.draw(st.sampled_from(([parent[key]], {"value": parent[key]})))


def serialise(data: st.DataObject, document: dict[str, Any]) -> bytes:
    ascii_only = data.draw(st.booleans())
    text = json.dumps(document, ensure_ascii=ascii_only, separators=(",", ":"))
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


def test_no_body_or_signature_makes_the_webhook_fail_or_store_what_it_rejected(
    client: TestClient, sql: Sql
) -> None:
    answers: Counter[int] = Counter()
    accepted: dict[str, Any] = {}  # the bodies answered 200 (accepted or ignored), by noticeId

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
        if status != 200:
            assert after == before, (status, response.json())
            assert set(response.json()) <= {"error", "detail"}
            return
        answer = response.json()["status"]
        assert answer in ("accepted", "unapplied", "duplicate", "ignored")
        document = exact_json(sent)
        notice_id = str(document["noticeId"])
        stored = conn.execute(
            "SELECT coalesce(convert_from(raw, 'UTF8'), body::text) FROM notification"
            " WHERE app_id = %s AND notice_id = %s",
            (APP_ID, notice_id),
        ).fetchall()
        stored = [(exact_json(body),) for (body,) in stored]
        assert len(stored) == 1
        if answer == "duplicate":
            assert after == before
        else:
            assert after[0] == before[0] + 1
            assert stored[0][0] == document
            accepted[notice_id] = document

    with psycopg.connect(sql.url, autocommit=True) as conn:
        one_delivery()
        rows = conn.execute(
            "SELECT notice_id, coalesce(convert_from(raw, 'UTF8'), body::text) FROM notification"
        ).fetchall()
        stored = {notice_id: exact_json(body) for notice_id, body in rows}
    assert stored == accepted
    assert answers[200] > 0 and answers[400] > 0 and answers[401] > 0, answers
