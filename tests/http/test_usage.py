"""GET /v1/apps/{app_id}/usage (CONTRACT §6.1): agent time, sessions and failures per bucket."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from starlette.testclient import TestClient

from service import config, folder
from service.app import create_app
from tests.factories import (
    APP_ID,
    SCOPED_TOKEN,
    SECOND_APP,
    SECOND_SECRET,
    Sql,
    deliver,
    payload,
    post,
    reader_headers,
    scoped_environment,
)

START = 1_751_400_000  # 2025-07-01T20:00:00Z
USAGE = f"/v1/apps/{APP_ID}/usage"
THREE_HOURS = "from=2025-07-01T20:00:00Z&to=2025-07-01T23:00:00Z&step=3600"
AT = ["2025-07-01T20:00:00Z", "2025-07-01T21:00:00Z", "2025-07-01T22:00:00Z"]


def join(client: TestClient, agent_id: str, start_ts: int, **labels: str) -> None:
    body = payload(agent_id, start_ts=start_ts, labels=labels)
    assert post(client, deliver(101, body)).status_code == 200


def leave(
    client: TestClient, agent_id: str, start_ts: int, stop_ts: int, *, status: str = "STOPPED"
) -> None:
    body = payload(agent_id, start_ts=start_ts, stop_ts=stop_ts, status=status)
    assert post(client, deliver(102, body)).status_code == 200


def usage(client: TestClient, query: str, token: str | None = None) -> Any:
    headers = reader_headers() if token is None else reader_headers(token)
    response = client.get(f"{USAGE}?{query}", headers=headers)
    assert response.status_code == 200, response.text
    return response.json()


def stamp(at: int) -> str:
    """RFC 3339 UTC of a Unix time."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(at))


def fold(settings: config.Settings) -> None:
    asyncio.run(folder.Folder(settings).fold_all())


def overlap(a: int, b: int, s: int, e: int) -> float:
    """Seconds of [a, b) inside [s, e), computed here."""
    return float(max(0, min(b, e) - max(a, s)))


def hours(*figures: tuple[str | None, float, int, int] | None) -> list[dict[str, Any]]:
    """Points of THREE_HOURS, one group (or none) each."""
    return [
        {
            "at": at,
            "groups": []
            if group is None
            else [dict(zip(("key", "agent_seconds", "sessions", "failed"), group, strict=True))],
        }
        for at, group in zip(AT, figures, strict=True)
    ]


def test_usage_sums_exact_overlaps_per_bucket(client: TestClient) -> None:
    leave(client, "a", START + 1800, START + 5400)  # 102 only: 30 min of hour 1, 30 of hour 2
    leave(client, "b", START + 3599, START + 3601, status="FAILED")  # 1 s each side of 21:00
    join(client, "c", START + 7000)  # running: from 21:56:40 on
    body = usage(client, THREE_HOURS)
    spans = [(START + 1800, START + 5400), (START + 3599, START + 3601), (START + 7000, 10**12)]
    seconds = [
        sum(overlap(a, b, START + h * 3600, START + (h + 1) * 3600) for a, b in spans)
        for h in range(3)
    ]
    assert body == {
        "app_id": APP_ID,
        "from": "2025-07-01T20:00:00Z",
        "to": "2025-07-01T23:00:00Z",
        "step": 3600,
        "group_by": None,
        "points": hours(
            (None, seconds[0], 2, 0), (None, seconds[1], 1, 1), (None, seconds[2], 0, 0)
        ),
    }
    assert seconds == [1801.0, 1801.0 + 200, 3600.0]


def test_the_default_step_is_a_day_and_empty_buckets_have_zeros(client: TestClient) -> None:
    body = usage(client, "from=2025-07-01T00:00:00Z&to=2025-07-03T00:00:00Z")
    zero = {"key": None, "agent_seconds": 0.0, "sessions": 0, "failed": 0}
    assert body["step"] == 86_400
    assert body["points"] == [
        {"at": "2025-07-01T00:00:00Z", "groups": [zero]},
        {"at": "2025-07-02T00:00:00Z", "groups": [zero]},
    ]
    grouped = usage(client, "from=2025-07-01T00:00:00Z&to=2025-07-03T00:00:00Z&group_by=label.x")
    assert [point["groups"] for point in grouped["points"]] == [[], []]


def test_group_by_a_label_splits_by_its_value_and_null_for_agents_without_it(
    client: TestClient,
) -> None:
    join(client, "g1", START, tier="gold")
    leave(client, "g1", START, START + 600)
    join(client, "g2", START + 60, tier="gold")
    leave(client, "g2", START + 60, START + 120, status="FAILED")
    join(client, "s1", START + 300, tier="silver", region="eu")
    leave(client, "s1", START + 300, START + 400)
    join(client, "n1", START + 10)  # no labels
    leave(client, "n1", START + 10, START + 20)
    body = usage(client, f"{THREE_HOURS}&group_by=label.tier")
    assert body["group_by"] == "label.tier"
    assert body["points"][0]["groups"] == [
        {"key": "gold", "agent_seconds": 600.0 + 60.0, "sessions": 2, "failed": 1},
        {"key": "silver", "agent_seconds": 100.0, "sessions": 1, "failed": 0},
        {"key": None, "agent_seconds": 10.0, "sessions": 1, "failed": 0},
    ]
    assert [point["groups"] for point in body["points"][1:]] == [[], []]
    by_region = usage(client, f"{THREE_HOURS}&group_by=label.region")["points"][0]["groups"]
    assert [(g["key"], g["sessions"]) for g in by_region] == [("eu", 1), (None, 3)]


def test_a_running_agent_counts_up_to_now(client: TestClient) -> None:
    started = int(time.time()) - 90
    join(client, "live", started)
    before = time.time()
    body = usage(client, "step=86400")  # the last 24 h in one bucket
    after = time.time()
    (point,) = body["points"]
    (group,) = point["groups"]
    assert before - started - 1 <= group["agent_seconds"] <= after - started + 1
    assert group["sessions"] == 1


def test_a_running_agent_counts_nothing_after_now_in_a_range_reaching_into_the_future(
    client: TestClient,
) -> None:
    """The concurrency counts an open interval on past now; usage stops it at now, from any
    second, with or without a label."""
    started = int(time.time()) - 90
    join(client, "live", started, tier="gold")
    first = started - started % 3600 - 3600 + 17  # an odd second, 1 to 2 hours before the start
    query = f"from={stamp(first)}&to={stamp(first + 4 * 3600)}&step=3600"
    before = time.time()
    plain = usage(client, query)["points"]
    grouped = usage(client, f"{query}&group_by=label.tier")["points"]
    after = time.time()
    for points in (plain, grouped):
        seconds = [sum(g["agent_seconds"] for g in point["groups"]) for point in points]
        assert before - started - 1 <= sum(seconds) <= after - started + 1
        assert seconds[-1] == 0  # wholly after now
        assert sum(sum(g["sessions"] for g in point["groups"]) for point in points) == 1


def test_a_label_changed_later_moves_usage_between_groups_folded_or_not(
    make_settings: Callable[..., config.Settings],
) -> None:
    settings = make_settings()
    with TestClient(create_app(settings)) as client:
        join(client, "m", START + 100, tier="gold")
        leave(client, "m", START + 100, START + 4000)
        query = f"{THREE_HOURS}&group_by=label.tier"
        gold = hours(("gold", 3500.0, 1, 0), ("gold", 400.0, 0, 0), None)
        assert usage(client, query)["points"] == gold
        fold(settings)
        assert usage(client, query)["points"] == gold
        # A 104 with a later event time relabels the agent: all its usage moves.
        body = payload("m", labels={"tier": "silver"})
        assert post(client, deliver(104, body, notify_ms=(START + 5000) * 1000)).status_code == 200
        silver = hours(("silver", 3500.0, 1, 0), ("silver", 400.0, 0, 0), None)
        assert usage(client, query)["points"] == silver
        fold(settings)
        assert usage(client, query)["points"] == silver


def test_late_and_reordered_notifications_change_an_earlier_answer(client: TestClient) -> None:
    join(client, "r", START + 600)  # running: every bucket to its end
    assert usage(client, THREE_HOURS)["points"] == hours(
        (None, 3000.0, 1, 0), (None, 3600.0, 0, 0), (None, 3600.0, 0, 0)
    )
    leave(client, "r", START + 600, START + 4200, status="FAILED")  # the stop, late
    assert usage(client, THREE_HOURS)["points"] == hours(
        (None, 3000.0, 1, 0), (None, 600.0, 0, 1), (None, 0.0, 0, 0)
    )
    join(client, "r", START + 60)  # a 101 reporting an earlier start: the start moves
    assert usage(client, THREE_HOURS)["points"] == hours(
        (None, 3540.0, 1, 0), (None, 600.0, 0, 1), (None, 0.0, 0, 0)
    )


def test_an_interval_longer_than_a_day_is_exact_and_marks_few_hours(
    make_settings: Callable[..., config.Settings], sql: Sql
) -> None:
    """A stuck agent, or a signed notification claiming a start days ago: read from the agent
    at read time (not spread over the rollup), so its change marks a handful of hours."""
    settings = make_settings()
    day = 86_400
    begin = START - 3 * day
    query = "from=2025-06-28T00:00:00Z&to=2025-07-02T00:00:00Z&step=86400"
    edges = [START - 3 * day - 20 * 3600 + d * day for d in range(5)]  # 2025-06-28 .. 07-02

    def seconds(a: int, b: int) -> list[float]:
        return [overlap(a, b, s, e) for s, e in itertools.pairwise(edges)]

    with TestClient(create_app(settings)) as client:
        join(client, "long", begin)
        leave(client, "long", begin, START + 600)  # 3 days and 10 minutes
        marks = sql.value("SELECT count(*) FROM insight_change WHERE kind = 'usage'")
        assert marks <= 3
        want = seconds(begin, START + 600)
        for _ in range(2):  # marked, then folded
            body = usage(client, query)
            assert [p["groups"][0]["agent_seconds"] for p in body["points"]] == want
            assert sum(p["groups"][0]["sessions"] for p in body["points"]) == 1
            fold(settings)
        # An earlier stop arrives late: the interval shrinks to half an hour, into the rollup.
        leave(client, "long", begin, begin + 1800, status="FAILED")
        want = seconds(begin, begin + 1800)
        for _ in range(2):
            body = usage(client, query)
            assert [p["groups"][0]["agent_seconds"] for p in body["points"]] == want
            assert [p["groups"][0]["failed"] for p in body["points"]] == [1, 0, 0, 0]
            fold(settings)
        assert sql.value("SELECT count(*) FROM insight_change WHERE kind = 'usage'") == 0


def test_unaligned_ranges_are_exact_to_the_microsecond(client: TestClient) -> None:
    leave(client, "u", START + 10, START + 7200)
    query = "from=2025-07-01T20:00:00.000001Z&to=2025-07-01T22:00:00.5Z&step=3599"
    points = usage(client, query)["points"]
    us = 1_000_000
    start = START * us + 1
    edges = [start, start + 3599 * us, start + 7198 * us, (START + 7200) * us + us // 2]
    interval = ((START + 10) * us, (START + 7200) * us)
    want = [overlap(*interval, a, b) / us for a, b in itertools.pairwise(edges)]
    assert [p["groups"][0]["agent_seconds"] for p in points] == want
    assert want == [3589.000001, 3599.0, 1.999999]


@pytest.mark.parametrize(
    ("query", "parameter"),
    [
        ("group_by=tier", "group_by"),
        ("group_by=label.", "group_by"),
        ("group_by=label.%00", "group_by"),
        ("group_by=label.%0A", "group_by"),
        ("group_by=label." + "k" * 129, "group_by"),
        ("group_by=label.a&group_by=label.b", "group_by"),
        ("group_by=", "group_by"),
        ("step=0", "step"),
        ("step=-1", "step"),
        ("step=1e3", "step"),
        ("from=2025-07-02T00:00:00Z&to=2025-07-01T00:00:00Z", "from"),
        ("from=2025-07-01T00:00:00Z&to=2025-07-31T00:00:00Z&step=60", "step"),
        ("from=2024-07-01T00:00:00Z&to=2025-07-02T00:00:01Z", "from"),
        ("from=yesterday", "from"),
        ("label.tier=gold", "label.tier"),
        ("window=24h", "window"),
    ],
)
def test_bad_usage_parameters_are_400_naming_the_parameter(
    client: TestClient, query: str, parameter: str
) -> None:
    response = client.get(f"{USAGE}?{query}", headers=reader_headers())
    assert response.status_code == 400, response.text
    assert response.json()["error"] == "invalid_parameter"
    assert response.json()["detail"].startswith(f"{parameter}:")


def test_a_label_key_with_any_printable_characters_is_read_safely(client: TestClient) -> None:
    join(client, "q", START, **{"it's; DROP": "x"})
    leave(client, "q", START, START + 60)
    body = usage(client, f"{THREE_HOURS}&group_by=label.it%27s%3B%20DROP")
    assert body["points"][0]["groups"] == [
        {"key": "x", "agent_seconds": 60.0, "sessions": 1, "failed": 0}
    ]


def test_an_unknown_app_is_404(client: TestClient) -> None:
    response = client.get("/v1/apps/nobody/usage", headers=reader_headers())
    assert (response.status_code, response.json()) == (404, {"error": "not_found"})


def test_a_scoped_token_sees_only_its_apps_usage(database_url: str, tmp_path: Path) -> None:
    settings = config.load(scoped_environment(database_url, tmp_path))
    with TestClient(create_app(settings)) as client:
        body = payload("other", start_ts=START, stop_ts=START + 60, status="STOPPED")
        assert post(client, deliver(102, body, secret=SECOND_SECRET), SECOND_APP).status_code == 200
        own = usage(client, THREE_HOURS, token=SCOPED_TOKEN)
        assert own["points"][0]["groups"][0]["sessions"] == 0
        other = client.get(
            f"/v1/apps/{SECOND_APP}/usage?{THREE_HOURS}", headers=reader_headers(SCOPED_TOKEN)
        )
        assert (other.status_code, other.json()) == (404, {"error": "not_found"})
