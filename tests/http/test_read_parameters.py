"""Hostile values in every parameter and path segment of the read API (CONTRACT §6).

No input is answered 5xx: a bad query parameter is a 400 whose detail names it, an id no stored
row can have (a NUL, bytes that are not UTF-8) is a 404, and a cursor that is not one the API gave
out, however it was crafted, is a 400.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from typing import Any

import pytest
from starlette.testclient import TestClient

from service.timeline import KINDS
from tests.factories import APP_ID, deliver, payload, post, reader_headers

START = 1_751_400_000  # 2025-07-01T20:00:00Z
SERIES = f"/v1/apps/{APP_ID}/pcu/series"
SUMMARY = f"/v1/apps/{APP_ID}/errors/summary"
LISTS = ("/v1/agents", "/v1/agents/a1/events", f"/v1/apps/{APP_ID}/notifications", "/v1/errors")
NOT_FOUND = {"error": "not_found"}


def invalid(detail: str) -> dict[str, str]:
    return {"error": "invalid_parameter", "detail": detail}


@pytest.fixture
def seeded(client: TestClient) -> Iterator[TestClient]:
    """Two agents with three events each (one an error) and two unapplied notifications: every
    list pages."""
    for agent_id in ("a1", "a2"):
        post(client, deliver(101, payload(agent_id, start_ts=START)))
        post(client, deliver(102, payload(agent_id, start_ts=START, stop_ts=START + 60)))
        error = {"module": "tts", "code": 429, "message": "rate limited"}
        post(client, deliver(110, payload(agent_id, errors=[error]), notify_ms=START * 1000))
    for _ in range(2):
        assert post(client, deliver(101, {"channel": "c"})).json() == {"status": "unapplied"}
    yield client


def get(client: TestClient, url: str) -> tuple[int, Any]:
    response = client.get(url, headers=reader_headers())
    return response.status_code, response.json()


def real_cursor(client: TestClient, path: str) -> str:
    status, body = get(client, f"{path}?limit=1")
    assert status == 200 and body["next_cursor"], body
    cursor: str = body["next_cursor"]
    return cursor


def decode(cursor: str) -> Any:
    return json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))


def encode(key: Any) -> str:
    return base64.urlsafe_b64encode(json.dumps(key).encode()).decode().rstrip("=")


NUMBER_JUNK = (
    "²",  # str.isdigit() holds, int() refuses it
    "٣",  # str.isdigit() holds, int() reads 3
    "\uff15",  # fullwidth 5
    "-1",
    "0",
    "1.5",
    "1e2",
    "0x10",
    "+5",
    " 5",
    "5 ",
    "1_0",
    "%00",
    "9" * 30,
    "9" * 5000,  # past Python's int() digit limit
)


@pytest.mark.parametrize(
    ("path", "name", "most"),
    [(path, "limit", 500) for path in LISTS] + [(SERIES, "step", 31_622_400)],
)
def test_numbers_are_ascii_digits_within_bounds(
    seeded: TestClient, path: str, name: str, most: int
) -> None:
    for value in NUMBER_JUNK:
        assert get(seeded, f"{path}?{name}={value}") == (
            400,
            invalid(f"{name}: a whole number from 1 to {most}"),
        ), value
    assert get(seeded, f"{path}?{name}={most}")[0] == 200


def test_the_largest_step_is_one_bucket(seeded: TestClient) -> None:
    status, body = get(seeded, f"{SERIES}?step=31622400")
    assert (status, len(body["points"])) == (200, 1)


OFF_THE_CALENDAR = "outside years 1 to 9999 in UTC"
NOT_RFC3339 = "an RFC 3339 time such as 2026-01-31T12:00:00Z"


TIME_JUNK = (
    ("0001-01-01T00:00:00%2B01:00", OFF_THE_CALENDAR),
    ("0001-01-01T00:59:59.999999%2B01:00", OFF_THE_CALENDAR),
    ("9999-12-31T23:59:59-01:00", OFF_THE_CALENDAR),
    ("9999-12-31T23:00:00-23:59", OFF_THE_CALENDAR),
    ("2026-01-01T00:00:00", "the time needs a UTC offset (Z or +hh:mm)"),
    ("2026-01-01T00:00:00.5", "the time needs a UTC offset (Z or +hh:mm)"),
    ("2026-01-01T23:59:60Z", "not a date and time on the calendar"),
    ("2026-13-01T00:00:00Z", "not a date and time on the calendar"),
    ("2026-02-30T00:00:00Z", "not a date and time on the calendar"),
    ("2026-01-01T24:00:00Z", "not a date and time on the calendar"),
    ("2026-01-01T00:00:00%2B24:00", "not a date and time on the calendar"),
    ("٢٠٢٦-01-01T00:00:00Z", NOT_RFC3339),
    ("\uff12\uff10\uff12\uff16-01-01T00:00:00Z", NOT_RFC3339),
    ("2026-01-01T0²:00:00Z", NOT_RFC3339),
    ("2026-W01-1T00:00:00Z", NOT_RFC3339),  # ISO week date: fromisoformat takes it
    ("20260101T000000Z", NOT_RFC3339),  # ISO basic format: fromisoformat takes it too
    ("2026-01-01", NOT_RFC3339),
    ("2026-01-01T00:00:00%2B0100", NOT_RFC3339),
    ("1751400000", NOT_RFC3339),
    ("%00", NOT_RFC3339),
    ("2026-01-01T00:00:00Z%00", NOT_RFC3339),
)


@pytest.mark.parametrize(
    ("path", "name"),
    [
        *(("/v1/agents", name) for name in ("since", "until", "stopped_since", "stopped_until")),
        *((path, name) for path in (SERIES, SUMMARY) for name in ("from", "to")),
        ("/v1/errors", "since"),
        ("/v1/errors", "until"),
    ],
)
def test_times_are_rfc_3339_and_on_the_calendar_in_utc(
    client: TestClient, path: str, name: str
) -> None:
    for value, detail in TIME_JUNK:
        assert get(client, f"{path}?{name}={value}") == (400, invalid(f"{name}: {detail}")), value


@pytest.mark.parametrize(
    ("query", "first", "points"),
    [
        ("from=0001-01-01T00:00:00Z&to=0001-01-01T01:00:00Z", "0001-01-01T00:00:00Z", 12),
        # The default day before `to` would leave the calendar: the series starts at year 1.
        ("to=0001-01-01T01:00:00Z", "0001-01-01T00:00:00Z", 12),
        (
            "from=9999-12-31T23:59:00Z&to=9999-12-31T23:59:59.999999Z&step=1",
            "9999-12-31T23:59:00Z",
            60,
        ),
        ("from=2026-01-01t00:00:00.123456789z&to=2026-01-01 00:10:00Z", None, 2),
        (
            "from=2026-01-01T01:00:00%2B01:00&to=2026-01-01T00:10:00-00:00",
            "2026-01-01T00:00:00Z",
            2,
        ),
    ],
)
def test_times_at_the_edges_of_the_calendar_are_answered(
    client: TestClient, query: str, first: str | None, points: int
) -> None:
    status, body = get(client, f"{SERIES}?{query}")
    assert (status, len(body["points"])) == (200, points), body
    if first is not None:
        assert body["points"][0]["at"] == first
    else:  # fractional seconds past the microsecond are truncated
        assert body["from"] == "2026-01-01T00:00:00.123456Z"


@pytest.mark.parametrize(
    "query",
    [
        "from=0001-01-01T00:00:00Z&to=0001-01-01T01:00:00Z",
        "to=0001-01-02T00:00:00Z",
        "from=9999-12-30T23:59:59Z&to=9999-12-31T23:59:59.999999Z",
    ],
)
def test_error_counts_at_the_edges_of_the_calendar_are_answered(
    client: TestClient, query: str
) -> None:
    assert get(client, f"{SUMMARY}?{query}")[0] == 200
    bounds = query.replace("from=", "since=").replace("to=", "until=")
    assert get(client, f"/v1/errors?{bounds}")[0] == 200


@pytest.mark.parametrize("path", [SERIES, SUMMARY])
def test_a_range_that_cannot_start_before_year_1_is_400(client: TestClient, path: str) -> None:
    assert get(client, f"{path}?to=0001-01-01T00:00:00Z") == (
        400,
        invalid("to: must be after 0001-01-01T00:00:00Z"),
    )


@pytest.mark.parametrize(
    ("query", "name"),
    [
        ("channel=a%00b", "channel"),
        ("channel=%00", "channel"),
        ("label.tenant=a%00b", "label.tenant"),
        ("label.ten%00ant=acme", "label.ten\x00ant"),
        ("label.%00=%00", "label.\x00"),
        ("name=a%00", "name"),
        ("errors:agent_id=a%00b", "agent_id"),
        ("errors:module=%00", "module"),
        ("errors:module=tts%00", "module"),
    ],
)
def test_text_filters_postgres_cannot_hold_are_400(
    seeded: TestClient, query: str, name: str
) -> None:
    path = "/v1/errors" if query.startswith("errors:") else "/v1/agents"
    assert get(seeded, f"{path}?{query.removeprefix('errors:')}") == (
        400,
        invalid(f"{name}: no NUL character or unpaired surrogate"),
    )


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
    assert (status, len(body["items"])) == (200, 2 if value == "0429" else 0)


@pytest.mark.parametrize(
    "query",
    [
        "channel=%ed%a0%80",  # a surrogate's UTF-8 bytes arrive as U+FFFD, never as a surrogate
        "channel=%ff",
        "channel=" + "c" * 20_000,
        "label." + "k" * 20_000 + "=v",
        "label.tenant=" + "v" * 20_000,
        "label.%E2%80%AE=x",
    ],
)
def test_odd_but_holdable_text_filters_match_nothing(seeded: TestClient, query: str) -> None:
    assert get(seeded, f"/v1/agents?{query}") == (200, {"items": [], "next_cursor": None})
    errors = query.replace("channel=", "module=").replace("label.tenant=", "agent_id=")
    if errors.startswith(("module=", "agent_id=")):
        assert get(seeded, f"/v1/errors?{errors}") == (200, {"items": [], "next_cursor": None})


@pytest.mark.parametrize(
    "agent_id",
    ["a%00b", "%00", "a1%00", "a%ffb", "%ed%a0%80", "..", "x" * 20_000, "a1%20", "A1"],
)
@pytest.mark.parametrize("suffix", ["", "/history", "/events", "/timeline"])
def test_agent_ids_no_agent_has_are_404(seeded: TestClient, agent_id: str, suffix: str) -> None:
    assert get(seeded, f"/v1/agents/{agent_id}{suffix}") == (404, NOT_FOUND)
    assert get(seeded, f"/v1/agents/{agent_id}{suffix}?app_id={APP_ID}") == (404, NOT_FOUND)


@pytest.mark.parametrize("app_id", ["a%00b", "%00", f"{APP_ID}%00", "%ff", "..", "x" * 20_000])
def test_app_ids_no_app_has_are_404(seeded: TestClient, app_id: str) -> None:
    for url in (
        f"/v1/agents?app_id={app_id}",
        f"/v1/agents/a1?app_id={app_id}",
        f"/v1/agents/a1/history?app_id={app_id}",
        f"/v1/agents/a1/events?app_id={app_id}",
        f"/v1/apps/{app_id}/pcu",
        f"/v1/apps/{app_id}/pcu/series",
        f"/v1/apps/{app_id}/usage",
        f"/v1/apps/{app_id}/notifications",
        f"/v1/errors?app_id={app_id}",
        f"/v1/apps/{app_id}/errors/summary",
        f"/v1/agents/a1/timeline?app_id={app_id}",
    ):
        assert get(seeded, url) == (404, NOT_FOUND), url


@pytest.mark.parametrize(
    ("url", "detail"),
    [
        (f"/v1/apps/{APP_ID}/notifications?status=%00", "status: only unapplied is listed"),
        (f"/v1/apps/{APP_ID}/notifications?status=UNAPPLIED", "status: only unapplied is listed"),
        (f"/v1/apps/{APP_ID}/notifications?status=accepted", "status: only unapplied is listed"),
        (f"/v1/apps/{APP_ID}/notifications?status=", "status: empty"),
        (f"/v1/apps/{APP_ID}/pcu?window=%00", "window: one of 1h, 24h, 7d, 30d"),
        (f"/v1/apps/{APP_ID}/pcu?window=24h%00", "window: one of 1h, 24h, 7d, 30d"),
        (
            "/v1/agents?state=running%00",
            "state: one of IDLE, STARTING, RUNNING, STOPPING, STOPPED, RECOVERING, FAILED",
        ),
        ("/v1/agents?%00=1", "\x00: unknown parameter"),
        ("/v1/agents?limit=1&limit=2", "limit: given more than once"),
        ("/v1/agents?has_errors=1", "has_errors: true or false"),
        ("/v1/agents?has_errors=%00", "has_errors: true or false"),
        ("/v1/agents/a1/timeline?kind=%00", f"kind: one of {', '.join(KINDS)}"),
        ("/v1/agents/a1/timeline?kind=Error", f"kind: one of {', '.join(KINDS)}"),
        ("/v1/agents/a1/timeline?limit=5", "limit: unknown parameter"),
        ("/v1/errors?app_id=", "app_id: empty"),
        ("/v1/errors?module=a&module=b", "module: given more than once"),
        ("/v1/apps?limit=5", "limit: unknown parameter"),
    ],
)
def test_enumerated_parameters_take_only_their_values(
    seeded: TestClient, url: str, detail: str
) -> None:
    assert get(seeded, url) == (400, invalid(detail))


SHAPE_JUNK: tuple[Any, ...] = (True, False, 1.5, None, [1], {"a": 1})
INT_JUNK = (*SHAPE_JUNK, 10**30, -(10**30), 2**63, -(2**63) - 1, "7")
TIME_KEY_JUNK = (
    *INT_JUNK,
    253_402_300_800_000_000,  # 10000-01-01 in µs: past what a datetime holds
    -62_135_596_800_000_001,  # a microsecond before 0001-01-01
)
TEXT_JUNK = (*SHAPE_JUNK, 7, "a\x00b", "\ud800")


def tampered(key: list[Any]) -> Iterator[Any]:
    """A real cursor's key with each member swapped for junk of its kind, then reshaped."""
    for position, member in enumerate(key):
        if position == 0:
            junk = TIME_KEY_JUNK
        else:
            junk = TEXT_JUNK if isinstance(member, str) else INT_JUNK
        for value in junk:
            yield [*key[:position], value, *key[position + 1 :]]
    yield [*key, 1]
    yield key[:-1]
    yield []
    yield {"at": key[0]}
    yield key[0]


@pytest.mark.parametrize("path", LISTS)
def test_tampered_cursors_are_400(seeded: TestClient, path: str) -> None:
    key = decode(real_cursor(seeded, path))
    for changed in tampered(key):
        if path == "/v1/errors" and changed == [None, *key[1:]]:
            continue  # errors without a time come last: a cursor this API gives out
        cursor = base64.urlsafe_b64encode(
            json.dumps(changed).encode("utf-8", "surrogatepass")
        ).decode()
        assert get(seeded, f"{path}?cursor={cursor}") == (
            400,
            invalid("cursor: not a cursor this API gave out"),
        ), changed


@pytest.mark.parametrize(
    "cursor",
    [
        "!!!",
        "%00",
        "é",
        "A" * 60_000,
        base64.urlsafe_b64encode(b"\xff\xfe").decode(),
        base64.urlsafe_b64encode(b"[" * 30_000).decode(),  # deeper than the JSON decoder goes
        base64.urlsafe_b64encode(b"[1" + b"0" * 5000 + b"]").decode(),
        base64.urlsafe_b64encode(b"[NaN, 1]").decode(),
        base64.urlsafe_b64encode(b"[Infinity, 1]").decode(),
        base64.urlsafe_b64encode(b'"\\u0000"').decode(),
    ],
)
@pytest.mark.parametrize("path", LISTS)
def test_junk_cursors_are_400(seeded: TestClient, path: str, cursor: str) -> None:
    assert get(seeded, f"{path}?cursor={cursor}") == (
        400,
        invalid("cursor: not a cursor this API gave out"),
    )


@pytest.mark.parametrize("path", LISTS)
def test_a_cursor_at_either_end_of_time_pages_from_there(seeded: TestClient, path: str) -> None:
    key = decode(real_cursor(seeded, path))
    for at in (-62_135_596_800_000_000, 253_402_300_799_999_999):
        status, body = get(seeded, f"{path}?cursor={encode([at, *key[1:]])}")
        assert status == 200, body
        # Newest-first lists have nothing before year 1; the event list nothing after 9999.
        ascending = path == "/v1/agents/a1/events"
        assert bool(body["items"]) == (ascending == (at < 0)), (at, body)


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/v1/agents/"),
        ("GET", "/v1/agents/a1/"),
        ("GET", "/v1/agents/a1/events/"),
        ("GET", f"/v1/apps/{APP_ID}/pcu/"),
        ("POST", "/v1/webhooks/agora/"),
        ("POST", f"/v1/webhooks/agora/{APP_ID}/"),
    ],
)
def test_a_trailing_slash_is_not_found_in_json_never_an_empty_redirect(
    seeded: TestClient, method: str, path: str
) -> None:
    response = seeded.request(method, path, headers=reader_headers(), follow_redirects=False)
    assert (response.status_code, response.json()) == (404, NOT_FOUND)
