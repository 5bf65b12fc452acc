"""Hostile values in every parameter of the insight reads (CONTRACT §6, §6.1), as
tests/http/test_read_parameters.py does for the rest of the read API: 400 naming the parameter,
404 for ids nothing has, never 5xx."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Iterator

import pytest
from starlette.testclient import TestClient

from tests.factories import APP_ID, deliver, payload, post
from tests.http.test_read_parameters import (
    NOT_FOUND,
    NUMBER_JUNK,
    TIME_JUNK,
    decode,
    encode,
    get,
    invalid,
    real_cursor,
    tampered,
)

SUMMARY = f"/v1/apps/{APP_ID}/errors/summary"
NOT_A_CURSOR = invalid("cursor: not a cursor this API gave out")


@pytest.fixture
def seeded(client: TestClient) -> Iterator[TestClient]:
    """Two agents with an error each (so /v1/errors pages) and a stop."""
    now_ms = int(time.time() * 1000)
    for number, agent_id in enumerate(("a1", "a2")):
        post(client, deliver(101, payload(agent_id, start_ts=now_ms // 1000 - 60)))
        errors = [{"module": "tts", "code": 429, "message": "rate limited"}]
        post(client, deliver(110, payload(agent_id, errors=errors), notify_ms=now_ms - number))
    yield client


@pytest.mark.parametrize(("path", "name"), [("/v1/errors", "limit")])
def test_numbers_are_ascii_digits_within_bounds(seeded: TestClient, path: str, name: str) -> None:
    for value in NUMBER_JUNK:
        assert get(seeded, f"{path}?{name}={value}") == (
            400,
            invalid(f"{name}: a whole number from 1 to 500"),
        ), value
    assert get(seeded, f"{path}?{name}=500")[0] == 200


@pytest.mark.parametrize(
    "value",
    [
        *("1.5", "0x10", "+5", "--5", "-", " 5", "٣", "²", "%00", "1e3", "true"),
        *("9" * 20, "9" * 5000, str(2**63), str(-(2**63) - 1)),
    ],
)
def test_error_codes_are_whole_numbers_a_bigint_holds(seeded: TestClient, value: str) -> None:
    assert get(seeded, f"/v1/errors?code={value}") == (
        400,
        invalid("code: a whole number (an error code)"),
    )


@pytest.mark.parametrize("value", [str(2**63 - 1), str(-(2**63)), "0", "-0", "0429"])
def test_error_codes_at_the_edges_are_answered(seeded: TestClient, value: str) -> None:
    status, body = get(seeded, f"/v1/errors?code={value}")
    assert status == 200
    assert len(body["items"]) == (2 if value == "0429" else 0)


@pytest.mark.parametrize(
    ("path", "name"),
    [
        ("/v1/errors", "since"),
        ("/v1/errors", "until"),
        (SUMMARY, "from"),
        (SUMMARY, "to"),
        ("/v1/agents", "stopped_since"),
        ("/v1/agents", "stopped_until"),
    ],
)
def test_times_are_rfc_3339_and_on_the_calendar_in_utc(
    client: TestClient, path: str, name: str
) -> None:
    for value, detail in TIME_JUNK:
        assert get(client, f"{path}?{name}={value}") == (400, invalid(f"{name}: {detail}")), value


@pytest.mark.parametrize(
    "query",
    [
        "from=0001-01-01T00:00:00Z&to=0001-01-01T01:00:00Z",
        "to=0001-01-02T00:00:00Z",
        "from=9999-12-30T23:59:59Z&to=9999-12-31T23:59:59.999999Z",
    ],
)
def test_summaries_at_the_edges_of_the_calendar_are_answered(
    client: TestClient, query: str
) -> None:
    assert get(client, f"{SUMMARY}?{query}")[0] == 200
    assert (
        get(client, f"/v1/errors?{query.replace('from', 'since').replace('to', 'until')}")[0] == 200
    )


@pytest.mark.parametrize(
    ("query", "name"),
    [
        ("agent_id=a%00b", "agent_id"),
        ("module=%00", "module"),
        ("module=tts%00", "module"),
        ("name=a%00", "name"),
    ],
)
def test_text_filters_postgres_cannot_hold_are_400(
    seeded: TestClient, query: str, name: str
) -> None:
    path = "/v1/agents" if name == "name" else "/v1/errors"
    assert get(seeded, f"{path}?{query}") == (
        400,
        invalid(f"{name}: no NUL character or unpaired surrogate"),
    )


@pytest.mark.parametrize(
    "query",
    ["agent_id=%ff", "module=%ed%a0%80", "module=" + "m" * 20_000, "agent_id=A1"],
)
def test_odd_but_holdable_error_filters_match_nothing(seeded: TestClient, query: str) -> None:
    assert get(seeded, f"/v1/errors?{query}") == (200, {"items": [], "next_cursor": None})


@pytest.mark.parametrize("app_id", ["a%00b", "%00", f"{APP_ID}%00", "%ff", "..", "x" * 20_000])
def test_app_ids_no_app_has_are_404(seeded: TestClient, app_id: str) -> None:
    for url in (
        f"/v1/errors?app_id={app_id}",
        f"/v1/apps/{app_id}/errors/summary",
        f"/v1/agents/a1/timeline?app_id={app_id}",
    ):
        assert get(seeded, url) == (404, NOT_FOUND), url


@pytest.mark.parametrize(
    "agent_id", ["a%00b", "%00", "a1%00", "a%ffb", "%ed%a0%80", "..", "x" * 20_000, "A1"]
)
def test_agent_ids_no_agent_has_are_404(seeded: TestClient, agent_id: str) -> None:
    assert get(seeded, f"/v1/agents/{agent_id}/timeline") == (404, NOT_FOUND)
    assert get(seeded, f"/v1/agents/{agent_id}/timeline?app_id={APP_ID}") == (404, NOT_FOUND)


@pytest.mark.parametrize(
    ("url", "detail"),
    [
        (
            "/v1/agents/a1/timeline?kind=%00",
            "kind: one of transition, error, metrics, turn, call_state, warning, transcript",
        ),
        (
            "/v1/agents/a1/timeline?kind=Error",
            "kind: one of transition, error, metrics, turn, call_state, warning, transcript",
        ),
        ("/v1/agents/a1/timeline?limit=5", "limit: unknown parameter"),
        ("/v1/errors?app_id=", "app_id: empty"),
        ("/v1/errors?module=a&module=b", "module: given more than once"),
        ("/v1/errors?%00=1", "\x00: unknown parameter"),
        ("/v1/apps?limit=5", "limit: unknown parameter"),
        (
            f"{SUMMARY}?from=2026-01-01T00:00:00Z&from=2026-01-01T00:00:00Z",
            "from: given more than once",
        ),
        (f"{SUMMARY}?to=0001-01-01T00:00:00Z", "to: must be after 0001-01-01T00:00:00Z"),
        ("/v1/agents?has_errors=1", "has_errors: true or false"),
        ("/v1/agents?has_errors=%00", "has_errors: true or false"),
    ],
)
def test_enumerated_parameters_take_only_their_values(
    seeded: TestClient, url: str, detail: str
) -> None:
    assert get(seeded, url) == (400, invalid(detail))


def test_tampered_error_cursors_are_400(seeded: TestClient) -> None:
    key = decode(real_cursor(seeded, "/v1/errors"))
    for changed in tampered(key):
        if changed == [None, *key[1:]]:
            continue  # an untimed position: a cursor this API gives out
        cursor = base64.urlsafe_b64encode(
            json.dumps(changed).encode("utf-8", "surrogatepass")
        ).decode()
        assert get(seeded, f"/v1/errors?cursor={cursor}") == (400, NOT_A_CURSOR), changed


@pytest.mark.parametrize(
    "cursor",
    [
        "!!!",
        "%00",
        "é",
        "A" * 60_000,
        base64.urlsafe_b64encode(b"\xff\xfe").decode(),
        base64.urlsafe_b64encode(b"[" * 30_000).decode(),
        base64.urlsafe_b64encode(b"[1" + b"0" * 5000 + b", 1]").decode(),
        base64.urlsafe_b64encode(b"[NaN, 1]").decode(),
        base64.urlsafe_b64encode(b"[null, null]").decode(),
        base64.urlsafe_b64encode(b'"\\u0000"').decode(),
    ],
)
def test_junk_error_cursors_are_400(seeded: TestClient, cursor: str) -> None:
    assert get(seeded, f"/v1/errors?cursor={cursor}") == (400, NOT_A_CURSOR)


def test_an_error_cursor_at_either_end_of_time_pages_from_there(seeded: TestClient) -> None:
    key = decode(real_cursor(seeded, "/v1/errors"))
    for at in (-62_135_596_800_000_000, 253_402_300_799_999_999, None):
        status, body = get(seeded, f"/v1/errors?cursor={encode([at, *key[1:]])}")
        assert status == 200, body
        # Newest first: nothing timed before year 1 nor untimed here; everything before 9999.
        assert len(body["items"]) == (2 if at is not None and at > 0 else 0), (at, body)
