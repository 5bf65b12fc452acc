from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from starlette.testclient import TestClient

from service import config
from service.app import create_app
from tests.factories import (
    APP_ID,
    SECOND_APP,
    SECOND_SECRET,
    Sql,
    apps_file,
    deliver,
    payload,
    post,
    reader_headers,
)


@pytest.fixture
def client(make_settings: Callable[..., config.Settings], tmp_path: Path) -> Iterator[TestClient]:
    """Two apps: the environment's and a second one from the apps file."""
    settings = make_settings(LEDGER_APPS_FILE=apps_file(tmp_path, (SECOND_APP, SECOND_SECRET)))
    with TestClient(create_app(settings)) as test_client:
        yield test_client


def add_agent(
    sql: Sql,
    agent_id: str,
    *,
    started: str | None,
    app_id: str = APP_ID,
    state: str = "RUNNING",
    channel: str = "c1",
    labels: str = "{}",
) -> None:
    sql.execute(
        "INSERT INTO agent (agent_id, app_id, state, channel, labels, started_at)"
        " VALUES (%(id)s, %(app)s, %(state)s, %(channel)s, %(labels)s::jsonb, %(started)s)",
        id=agent_id,
        app=app_id,
        state=state,
        channel=channel,
        labels=labels,
        started=started,
    )


def ids(client: TestClient, query: str = "") -> list[str]:
    response = client.get(f"/v1/agents?limit=500{query}", headers=reader_headers())
    assert response.status_code == 200, response.json()
    return [item["agent_id"] for item in response.json()["items"]]


@pytest.fixture
def fleet(sql: Sql) -> None:
    add_agent(
        sql, "a1", started="2026-01-01T10:00:00Z", labels='{"tenant": "acme", "tier": "gold"}'
    )
    add_agent(sql, "a2", started="2026-01-01T11:00:00Z", state="STOPPED", channel="c2")
    add_agent(sql, "a3", started="2026-01-01T12:00:00Z", labels='{"tenant": "acme"}')
    add_agent(sql, "b1", started="2026-01-01T13:00:00Z", app_id="app-two", state="FAILED")
    add_agent(sql, "idle", started=None, state="IDLE", channel="c2")


def test_agents_are_listed_newest_first(client: TestClient, fleet: None) -> None:
    # `idle` has no start time: it is placed by when it was first seen (now), so it is newest.
    assert ids(client) == ["idle", "b1", "a3", "a2", "a1"]


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("&app_id=app-two", ["b1"]),
        ("&state=RUNNING", ["a3", "a1"]),
        ("&state=STOPPED&state=FAILED", ["b1", "a2"]),
        ("&state=idle", ["idle"]),  # state names in any case
        ("&channel=c2", ["idle", "a2"]),
        ("&label.tenant=acme", ["a3", "a1"]),
        ("&label.tenant=acme&label.tier=gold", ["a1"]),
        ("&label.tenant=other", []),
        ("&since=2026-01-01T11:00:00Z", ["b1", "a3", "a2"]),  # since is inclusive
        ("&until=2026-01-01T11:00:00Z", ["a1"]),  # until is exclusive
        ("&since=2026-01-01T11:00:00%2B01:00", ["b1", "a3", "a2", "a1"]),  # offsets honoured
        ("&since=2026-01-01T10:30:00Z&until=2026-01-01T12:30:00Z&channel=c1", ["a3"]),
    ],
)
def test_every_filter_narrows_the_list(
    client: TestClient, fleet: None, query: str, expected: list[str]
) -> None:
    assert ids(client, query) == expected


@pytest.mark.parametrize(
    ("query", "parameter"),
    [
        ("limit=0", "limit"),
        ("limit=501", "limit"),
        ("limit=ten", "limit"),
        ("state=DANCING", "state"),
        ("since=yesterday", "since"),
        ("until=2026-01-01T10:00:00", "until"),  # no offset
        ("cursor=not-a-cursor", "cursor"),
        ("cursor=WzEsMl0", "cursor"),  # [1, 2]: well-formed JSON, wrong kinds
        ("colour=blue", "colour"),
        ("label.=x", "label."),
        ("channel=a&channel=b", "channel"),
    ],
)
def test_bad_parameters_are_400_naming_the_parameter(
    client: TestClient, query: str, parameter: str
) -> None:
    response = client.get(f"/v1/agents?{query}", headers=reader_headers())
    assert response.status_code == 400
    assert response.json()["error"] == "invalid_parameter"
    assert response.json()["detail"].startswith(f"{parameter}:")


def test_limit_500_is_allowed(client: TestClient) -> None:
    assert client.get("/v1/agents?limit=500", headers=reader_headers()).status_code == 200


def page_through(client: TestClient, query: str, *, between: Any = None) -> list[str]:
    seen: list[str] = []
    cursor = None
    while True:
        suffix = f"&cursor={cursor}" if cursor else ""
        body = client.get(f"/v1/agents?limit=7{query}{suffix}", headers=reader_headers()).json()
        seen += [item["agent_id"] for item in body["items"]]
        cursor = body["next_cursor"]
        if between is not None:
            between()
        if cursor is None:
            return seen


def test_pages_cover_every_agent_once(client: TestClient, sql: Sql) -> None:
    for i in range(30):
        # Pairs share a start time: the agent id breaks the tie.
        add_agent(sql, f"agent-{i:02d}", started=f"2026-01-01T10:{i // 2:02d}:00Z")
    seen = page_through(client, "")
    assert seen == ids(client)
    assert sorted(seen) == sorted(f"agent-{i:02d}" for i in range(30))


def test_pagination_neither_skips_nor_repeats_while_new_agents_arrive(
    client: TestClient, sql: Sql
) -> None:
    for i in range(60):
        add_agent(sql, f"old-{i:02d}", started=f"2026-01-01T10:{i:02d}:00Z")
    before = set(ids(client))
    stop = threading.Event()
    arrived: list[str] = []

    def arrive() -> None:
        # New agents through the webhook while the pages are read: just started, or reported
        # late with a start time in the middle of the ones already listed.
        n = 0
        while not stop.is_set() and n < 200:
            agent_id = f"new-{n:03d}"
            start_ts = 1_767_261_600 + (n % 60) * 60 if n % 2 else None  # 2026-01-01T10:xx
            fields = {"start_ts": start_ts} if start_ts else {}
            post(client, deliver(101, payload(agent_id, **fields)))
            arrived.append(agent_id)
            n += 1

    writer = threading.Thread(target=arrive)
    writer.start()
    try:
        seen = page_through(client, "", between=lambda: None)
    finally:
        stop.set()
        writer.join()
    assert len(seen) == len(set(seen)), "an agent was listed twice"
    assert before <= set(seen), "an agent that existed before paging was skipped"
    assert set(seen) <= before | set(arrived)
    assert arrived, "no agent arrived while paging"


def test_events_come_in_event_order_page_by_page(client: TestClient) -> None:
    start = 1_751_400_000
    post(
        client,
        deliver(
            102, payload("a1", start_ts=start, stop_ts=start + 60, status="STOPPED"), notice_id="n3"
        ),
    )
    post(client, deliver(101, payload("a1", start_ts=start), notice_id="n1"))
    post(
        client,
        deliver(
            110,
            payload("a1", errors=[{"module": "asr", "code": 1, "message": "m"}]),
            notice_id="n2",
            notify_ms=(start + 30) * 1000,
        ),
    )
    first = client.get("/v1/agents/a1/events?limit=2", headers=reader_headers()).json()
    assert [e["notice_id"] for e in first["items"]] == ["n1", "n2"]
    rest = client.get(
        f"/v1/agents/a1/events?limit=2&cursor={first['next_cursor']}", headers=reader_headers()
    ).json()
    assert [e["notice_id"] for e in rest["items"]] == ["n3"]
    assert rest["next_cursor"] is None
    event = first["items"][0]
    assert event["event_type"] == 101
    assert event["event_time"] == "2025-07-01T20:00:00Z"
    assert event["received_at"].endswith("Z")
    assert event["payload"] == payload("a1", start_ts=start)


def test_events_of_an_unknown_agent_are_404(client: TestClient) -> None:
    response = client.get("/v1/agents/nobody/events", headers=reader_headers())
    assert (response.status_code, response.json()) == (404, {"error": "not_found"})
