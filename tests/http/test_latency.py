"""GET /v1/apps/{app_id}/latency (CONTRACT §6.1) over HTTP: the answer's shape, empty buckets,
label filters, hostile parameters, and the turn latency histograms of /metrics."""

from __future__ import annotations

from typing import Any

import pytest
from starlette.testclient import TestClient

from tests.factories import APP_ID, deliver, payload, post, reader_headers
from tests.http.test_metrics import samples, value

URL = f"/v1/apps/{APP_ID}/latency"
HOUR_S = 1_751_400_000  # 2025-07-01T20:00:00Z, a whole hour
FROM, TO = "2025-07-01T20:00:00Z", "2025-07-01T23:00:00Z"


def turn(turn_id: int, end_s: float, e2e: int | None, **stages: int) -> dict[str, Any]:
    metrics: dict[str, Any] = {"segmented_latency_ms": stages}
    if e2e is not None:
        metrics["e2e_latency_ms"] = e2e
    return {"turn_id": turn_id, "end": {"end_at": int(end_s * 1000)}, "metrics": metrics}


def send_turns(
    client: TestClient, agent_id: str, turns: list[dict[str, Any]], **fields: Any
) -> None:
    body = payload(agent_id, turns=turns, **fields)
    assert post(client, deliver(112, body)).json() == {"status": "accepted"}


def get(client: TestClient, query: str) -> tuple[int, Any]:
    response = client.get(f"{URL}?{query}", headers=reader_headers())
    return response.status_code, response.json()


def empty(at: str) -> dict[str, Any]:
    pair = {"p50": None, "p90": None}
    return {
        "at": at,
        "turns": 0,
        "e2e_ms": {"p50": None, "p90": None, "p99": None, "max": None},
        "segments": {"asr_ttlw": pair, "llm_ttft": pair, "tts_ttfb": pair},
    }


def test_each_bucket_holds_the_nearest_rank_figures_of_the_turns_ending_in_it(
    client: TestClient,
) -> None:
    # Ten turns in the first hour (e2e 100..1000, ASR on the first five only), one in the third.
    turns = [
        turn(i, HOUR_S + 60 * i, 100 * i, **({"asr_ttlw": 10 * i} if i <= 5 else {}))
        for i in range(1, 11)
    ]
    send_turns(client, "a1", turns)
    send_turns(client, "a2", [turn(1, HOUR_S + 2 * 3600 + 5, None, tts_ttfb=70)])
    status, body = get(client, f"from={FROM}&to={TO}&step=3600")
    assert status == 200
    assert body["app_id"] == APP_ID
    assert (body["from"], body["to"], body["step"]) == (FROM, TO, 3600)
    first, second, third = body["points"]
    assert first["at"] == FROM and first["turns"] == 10
    # nearest rank: p50 the 5th of 10, p90 the 9th, p99 the 10th
    assert first["e2e_ms"] == {"p50": 500, "p90": 900, "p99": 1000, "max": 1000}
    assert first["segments"]["asr_ttlw"] == {"p50": 30, "p90": 50}  # 3rd and 5th of 5
    assert first["segments"]["llm_ttft"] == {"p50": None, "p90": None}
    assert second == empty("2025-07-01T21:00:00Z")
    assert third["turns"] == 1
    assert third["e2e_ms"] == {"p50": None, "p90": None, "p99": None, "max": None}
    assert third["segments"]["tts_ttfb"] == {"p50": 70, "p90": 70}


def test_a_label_filter_keeps_the_turns_of_agents_holding_the_label(client: TestClient) -> None:
    send_turns(client, "gold", [turn(1, HOUR_S + 10, 300)], labels={"tier": "gold"})
    send_turns(client, "free", [turn(1, HOUR_S + 20, 900)], labels={"tier": "free"})
    send_turns(client, "none", [turn(1, HOUR_S + 30, 600)])  # no labels at all
    query = f"from={FROM}&to=2025-07-01T21:00:00Z&step=3600"
    assert get(client, query)[1]["points"][0]["e2e_ms"]["max"] == 900
    status, body = get(client, f"{query}&label.tier=gold")
    assert status == 200
    assert (body["points"][0]["turns"], body["points"][0]["e2e_ms"]["max"]) == (1, 300)
    status, body = get(client, f"{query}&label.tier=silver")
    assert body["points"] == [empty(FROM)]


def test_a_turn_delivered_twice_is_counted_once(client: TestClient) -> None:
    turns = [turn(1, HOUR_S + 10, 300), turn(2, HOUR_S + 20, 500)]
    send_turns(client, "a1", turns)
    send_turns(client, "a1", [*turns, turn(3, HOUR_S + 30, 700)])  # a second 112, one turn more
    point = get(client, f"from={FROM}&to={TO}&step=86400")[1]["points"][0]
    assert (point["turns"], point["e2e_ms"]["p50"]) == (3, 500)


def test_the_last_bucket_ends_at_to(client: TestClient) -> None:
    send_turns(client, "a1", [turn(1, HOUR_S + 1800, 300), turn(2, HOUR_S + 3000, 400)])
    status, body = get(client, f"from={FROM}&to=2025-07-01T20:40:00Z&step=3600")
    assert status == 200
    assert [(p["at"], p["turns"]) for p in body["points"]] == [(FROM, 1)]


@pytest.mark.parametrize(
    "query",
    [
        "from=0001-01-01T00:00:00Z&to=0001-01-03T00:00:00Z&step=86400",
        "from=9999-12-30T00:00:00Z&to=9999-12-31T23:59:59.999999Z&step=86400",
        "from=9999-12-31T00:00:00Z&to=9999-12-31T23:59:59Z&step=31622400",
        "from=9999-12-31T22:00:00Z&to=9999-12-31T23:30:00Z&step=3600",
        # Buckets that cut hours (each hour's packed turns), at both ends.
        "from=0001-01-01T00:00:01Z&to=0001-01-02T00:00:00Z&step=3600",
        "from=9999-12-31T22:17:03.5Z&to=9999-12-31T23:59:59.999999Z&step=600",
    ],
)
def test_series_at_the_ends_of_the_calendar_are_answered(client: TestClient, query: str) -> None:
    status, body = get(client, query)
    assert status == 200, body
    assert all(point["turns"] == 0 for point in body["points"])


def test_an_unknown_app_is_not_found(client: TestClient) -> None:
    response = client.get("/v1/apps/nope/latency", headers=reader_headers())
    assert (response.status_code, response.json()) == (404, {"error": "not_found"})
    assert client.get(URL).status_code == 401


@pytest.mark.parametrize(
    ("query", "detail"),
    [
        ("step=0", "step: a whole number from 1 to 31622400"),
        ("step=-5", "step: a whole number from 1 to 31622400"),
        ("step=1.5", "step: a whole number from 1 to 31622400"),
        ("step=%C2%B2", "step: a whole number from 1 to 31622400"),
        ("step=1", "step: at most 10000 points per series"),
        (f"from={TO}&to={FROM}", "from: must be before to"),
        ("from=2025-07-01T20:00:00", "from: the time needs a UTC offset (Z or +hh:mm)"),
        ("from=yesterday", "from: an RFC 3339 time such as 2026-01-31T12:00:00Z"),
        ("to=2025-13-01T00:00:00Z", "to: not a date and time on the calendar"),
        ("from=2020-01-01T00:00:00Z&to=2025-01-01T00:00:00Z&step=86400",
         "from: at most 366 days before to"),
        ("step=60&step=60", "step: given more than once"),
        ("label.tier=", "label.tier: empty"),
        ("label.=x", "label.: label.KEY=VALUE with a key and a value"),
        ("label.tier=a%00b", "label.tier: no NUL character or unpaired surrogate"),
        ("window=24h", "window: unknown parameter"),
    ],
)  # fmt: skip
def test_hostile_parameters_are_refused(client: TestClient, query: str, detail: str) -> None:
    assert get(client, query) == (400, {"error": "invalid_parameter", "detail": detail})


def test_turn_latency_is_observed_once_per_stored_turn(client: TestClient) -> None:
    name = "ledger_turn_latency_seconds_count"
    before = samples(client)
    turns = [turn(1, HOUR_S + 10, 300, asr_ttlw=40, llm_ttft=200), turn(2, HOUR_S + 20, 500)]
    send_turns(client, "m1", turns)
    send_turns(client, "m1", turns)  # the same turns again: not counted again
    after = samples(client)

    def counted(stage: str) -> float:
        labels = {"app_id": APP_ID, "stage": stage}
        return value(after, name, **labels) - value(before, name, **labels)

    assert [counted(s) for s in ("e2e", "asr_ttlw", "llm_ttft", "tts_ttfb")] == [2, 1, 1, 0]
    sums = "ledger_turn_latency_seconds_sum"
    labels = {"app_id": APP_ID, "stage": "e2e"}
    assert value(after, sums, **labels) - value(before, sums, **labels) == pytest.approx(0.8)
