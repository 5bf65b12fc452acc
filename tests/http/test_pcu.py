from __future__ import annotations

import time
from collections.abc import Callable

import pytest
import structlog
from starlette.testclient import TestClient

from service import config
from service.app import create_app
from tests.factories import APP_ID, deliver, payload, poll, post, reader_headers

START = 1_751_400_000  # 2025-07-01T20:00:00Z


def join(client: TestClient, agent_id: str, start_ts: int) -> None:
    assert post(client, deliver(101, payload(agent_id, start_ts=start_ts))).status_code == 200


def leave(client: TestClient, agent_id: str, start_ts: int, stop_ts: int) -> None:
    body = payload(agent_id, start_ts=start_ts, stop_ts=stop_ts, status="STOPPED")
    assert post(client, deliver(102, body)).status_code == 200


def test_pcu_counts_active_agents_against_the_cap(
    make_settings: Callable[..., config.Settings],
) -> None:
    now = int(time.time())
    with TestClient(create_app(make_settings(PCU_CAP="4"))) as client:
        join(client, "a1", now - 600)
        join(client, "a2", now - 300)
        join(client, "a3", now - 200)
        leave(client, "a3", now - 200, now - 100)
        post(client, deliver(110, payload("idle-only", errors=[])))  # IDLE: holds no slot
        response = client.get(f"/v1/apps/{APP_ID}/pcu", headers=reader_headers())
    assert response.status_code == 200
    assert response.json() == {
        "app_id": APP_ID,
        "cap": 4,
        "current": 2,
        "available": 2,
        "utilisation": 0.5,
        "window": "24h",
        "peak": {"value": 3, "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now - 200))},
    }


def test_available_is_never_negative(make_settings: Callable[..., config.Settings]) -> None:
    with TestClient(create_app(make_settings(PCU_CAP="1"))) as client:
        join(client, "a1", int(time.time()) - 10)
        join(client, "a2", int(time.time()) - 5)
        body = client.get(f"/v1/apps/{APP_ID}/pcu", headers=reader_headers()).json()
    assert (body["current"], body["available"], body["utilisation"]) == (2, 0, 2.0)


def test_the_peak_window_is_chosen_by_the_caller(client: TestClient) -> None:
    now = int(time.time())
    for i in range(3):  # three agents together two days ago
        join(client, f"old-{i}", now - 2 * 86_400)
        leave(client, f"old-{i}", now - 2 * 86_400, now - 2 * 86_400 + 60)
    join(client, "recent", now - 60)

    def peak(window: str) -> dict[str, object]:
        response = client.get(f"/v1/apps/{APP_ID}/pcu?window={window}", headers=reader_headers())
        assert response.status_code == 200
        return dict(response.json()["peak"])

    assert peak("1h")["value"] == 1
    assert peak("24h")["value"] == 1
    assert peak("7d") == {
        "value": 3,
        "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now - 2 * 86_400)),
    }


def test_a_window_with_nothing_active_has_a_zero_peak(client: TestClient) -> None:
    body = client.get(f"/v1/apps/{APP_ID}/pcu", headers=reader_headers()).json()
    assert (body["current"], body["peak"]) == (0, {"value": 0, "at": None})


def test_series_answers_exact_max_and_average_per_bucket(client: TestClient) -> None:
    join(client, "a1", START)  # running from the start
    leave(client, "a2", START + 1800, START + 5400)  # 102 only: 30 min into hour 1 to 30 into 2
    response = client.get(
        f"/v1/apps/{APP_ID}/pcu/series?from=2025-07-01T20:00:00Z&to=2025-07-01T23:00:00Z&step=3600",
        headers=reader_headers(),
    )
    assert response.status_code == 200
    assert response.json() == {
        "app_id": APP_ID,
        "from": "2025-07-01T20:00:00Z",
        "to": "2025-07-01T23:00:00Z",
        "step": 3600,
        "points": [
            {"at": "2025-07-01T20:00:00Z", "max": 2, "avg": 1.5},
            {"at": "2025-07-01T21:00:00Z", "max": 2, "avg": 1.5},
            {"at": "2025-07-01T22:00:00Z", "max": 1, "avg": 1.0},
        ],
    }


def test_a_series_defaults_to_the_last_day_in_five_minute_steps(client: TestClient) -> None:
    body = client.get(f"/v1/apps/{APP_ID}/pcu/series", headers=reader_headers()).json()
    assert (len(body["points"]), body["step"]) == (288, 300)


@pytest.mark.parametrize(
    ("query", "parameter"),
    [
        ("step=0", "step"),
        ("step=1.5", "step"),
        ("from=2025-07-02T00:00:00Z&to=2025-07-01T00:00:00Z", "from"),
        ("from=2025-07-01T00:00:00Z&to=2025-07-31T00:00:00Z&step=60", "step"),  # 43,200 points
        # One bucket of 1,920 years was 17 million hour pieces: a minute of CPU, then a 503.
        ("from=0080-08-21T00:00:47Z&to=2000-01-01T00:00:00Z&step=31000000", "from"),
        ("from=0080-08-21T00:00:47Z&to=2000-01-01T00:00:00Z&step=31000000000", "step"),
        ("from=2024-07-01T00:00:00Z&to=2025-07-02T00:00:01Z&step=86400", "from"),
        ("from=soon", "from"),
        ("to=2025-07-01", "to"),
        ("window=24h", "window"),
    ],
)
def test_bad_series_parameters_are_400_naming_the_parameter(
    client: TestClient, query: str, parameter: str
) -> None:
    response = client.get(f"/v1/apps/{APP_ID}/pcu/series?{query}", headers=reader_headers())
    assert response.status_code == 400
    assert response.json()["detail"].startswith(f"{parameter}:")


def test_a_series_may_span_a_leap_year(client: TestClient) -> None:
    query = "from=2024-01-01T00:00:00Z&to=2025-01-01T00:00:00Z&step=86400"
    response = client.get(f"/v1/apps/{APP_ID}/pcu/series?{query}", headers=reader_headers())
    assert (response.status_code, len(response.json()["points"])) == (200, 366)


def test_an_unknown_window_is_400(client: TestClient) -> None:
    response = client.get(f"/v1/apps/{APP_ID}/pcu?window=2h", headers=reader_headers())
    assert (response.status_code, response.json()["detail"][:7]) == (400, "window:")


@pytest.mark.parametrize("path", ["/v1/apps/nobody/pcu", "/v1/apps/nobody/pcu/series"])
def test_unknown_apps_are_404(client: TestClient, path: str) -> None:
    response = client.get(path, headers=reader_headers())
    assert (response.status_code, response.json()) == (404, {"error": "not_found"})


def test_crossing_the_warning_and_the_cap_logs_once_each(
    make_settings: Callable[..., config.Settings],
) -> None:
    now = int(time.time())
    with (
        TestClient(create_app(make_settings(PCU_CAP="5", PCU_WARN_FRACTION="0.6"))) as client,
        structlog.testing.capture_logs() as logs,
    ):
        for i in range(6):  # 0 → 6: warning at 3, cap at 5
            join(client, f"a{i}", now - 100 + i)
        post(client, deliver(101, payload("a0", start_ts=now - 100)))  # redelivery: no change
        for i in range(4):  # 6 → 2: back under both
            leave(client, f"a{i}", now - 100 + i, now - 50)
        join(client, "again", now - 10)  # 2 → 3: warning again

        def crossings() -> list[tuple[str, int]]:
            return [
                (e["threshold"], e["current"])
                for e in logs
                if e["event"] == "pcu_threshold_crossed"
            ]

        # Announced by the folder, in the order the counts changed, within a second or so.
        poll(lambda: len(crossings()) >= 3, timeout=5)
    assert crossings() == [("warning", 3), ("cap", 5), ("warning", 3)]
    assert all(e["log_level"] == "warning" for e in logs if e["event"] == "pcu_threshold_crossed")
