"""Insight reads across agents (CONTRACT §6.1): apps, errors, the error summary, the timeline and
the agent list's new filters. Expected answers are computed here from what the tests sent."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from starlette.testclient import TestClient

from service import config
from service.app import create_app
from tests.factories import (
    ADMIN_TOKEN,
    APP_ID,
    READ_TOKEN,
    SCOPED_TOKEN,
    SECOND_APP,
    SECOND_SCOPED_TOKEN,
    SECOND_SECRET,
    SECRET,
    deliver,
    environment,
    payload,
    post,
    reader_headers,
)

NOW_S = int(time.time())
BASE_MS = (NOW_S - 3 * 3600) * 1000  # three hours ago: inside the default 24 h


def at_ms(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat().replace("+00:00", "Z")


@pytest.fixture
def client(database_url: str, tmp_path: Path) -> Iterator[TestClient]:
    """APP_ID (cap 3) and SECOND_APP (cap 5), each with a scoped token; READ_TOKEN sees both."""
    path = tmp_path / "apps.toml"
    path.write_text(
        f"[[apps]]\napp_id = '{APP_ID}'\nwebhook_secrets = ['{SECRET}']\npcu_cap = 3\n"
        f"read_tokens = ['{SCOPED_TOKEN}']\n"
        f"[[apps]]\napp_id = '{SECOND_APP}'\nwebhook_secrets = ['{SECOND_SECRET}']\n"
        f"pcu_cap = 5\nread_tokens = ['{SECOND_SCOPED_TOKEN}']\n"
    )
    settings = config.load(
        environment(
            database_url,
            AGORA_APP_ID="",
            AGORA_WEBHOOK_SECRETS="",
            LEDGER_APPS_FILE=str(path),
            ADMIN_API_TOKENS=ADMIN_TOKEN,
        )
    )
    with TestClient(create_app(settings)) as test_client:
        yield test_client


def send(
    client: TestClient, event_type: int, agent_id: str, app_id: str = APP_ID, **fields: Any
) -> None:
    notify_ms = fields.pop("notify_ms", None)
    secret = SECRET if app_id == APP_ID else SECOND_SECRET
    delivery = deliver(event_type, payload(agent_id, **fields), notify_ms=notify_ms, secret=secret)
    assert post(client, delivery, app_id).json() == {"status": "accepted"}


def get(client: TestClient, url: str, token: str = READ_TOKEN) -> tuple[int, Any]:
    response = client.get(url, headers=reader_headers(token))
    return response.status_code, response.json()


def ok(client: TestClient, url: str, token: str = READ_TOKEN) -> Any:
    status, body = get(client, url, token)
    assert status == 200, (url, body)
    return body


# --- GET /v1/apps ---------------------------------------------------------------------------


def test_apps_answer_each_visible_apps_cap_and_current(client: TestClient) -> None:
    start = NOW_S - 600
    for agent_id in ("a1", "a2", "a3", "a4"):
        send(client, 101, agent_id, start_ts=start)
    send(client, 102, "a4", start_ts=start, stop_ts=start + 60, status="STOPPED")
    # A stop that arrives before its start: the agent never holds a slot.
    send(client, 102, "late", start_ts=start, stop_ts=start + 30, status="FAILED")
    send(client, 101, "late", start_ts=start)
    send(client, 101, "b1", SECOND_APP, start_ts=start)
    both = ok(client, "/v1/apps")
    assert both == {
        "items": [
            {"app_id": APP_ID, "cap": 3, "current": 3, "available": 0},
            {"app_id": SECOND_APP, "cap": 5, "current": 1, "available": 4},
        ]
    }
    assert ok(client, "/v1/apps", SCOPED_TOKEN) == {"items": [both["items"][0]]}
    assert ok(client, "/v1/apps", SECOND_SCOPED_TOKEN) == {"items": [both["items"][1]]}
    # A later stop changes the next answer.
    send(client, 102, "a1", start_ts=start, stop_ts=start + 90, status="STOPPED")
    assert ok(client, "/v1/apps", SCOPED_TOKEN)["items"][0] == {
        "app_id": APP_ID,
        "cap": 3,
        "current": 2,
        "available": 1,
    }
    # The PCU endpoint agrees.
    pcu = ok(client, f"/v1/apps/{APP_ID}/pcu")
    assert (pcu["current"], pcu["available"]) == (2, 1)
    assert get(client, f"/v1/apps?app_id={APP_ID}")[0] == 400
    assert client.get("/v1/apps").json() == {"error": "unauthorized"}


# --- GET /v1/errors -------------------------------------------------------------------------


def error_feed(client: TestClient) -> list[dict[str, Any]]:
    """Sends errors across agents and apps (ties in time, several per notification, one with no
    usable time); answers them as the API must list them, newest first."""
    sent: list[tuple[int, int, dict[str, Any]]] = []  # (time or -1, sequence, item)

    def error(app_id: str, agent_id: str, ms: int | None, *errors: dict[str, Any]) -> None:
        send(
            client,
            110,
            agent_id,
            app_id,
            errors=list(errors),
            notify_ms=ms if ms is not None else 1,  # 1970: not a usable time
        )
        for e in errors:
            item = {
                "app_id": app_id,
                "agent_id": agent_id,
                "at": at_ms(ms) if ms is not None else None,
                "module": e.get("module"),
                "code": e.get("code"),
                "message": e.get("message"),
                "turn_id": str(e["turn_id"]) if "turn_id" in e else None,
            }
            sent.append((ms if ms is not None else -1, len(sent), item))

    tts = {"module": "tts", "code": 429, "message": "rate limited"}
    error(APP_ID, "a1", BASE_MS, tts)
    error(APP_ID, "a2", BASE_MS + 60_000, {"module": "llm", "code": 500, "message": "boom"})
    error(SECOND_APP, "b1", BASE_MS + 30_000, tts, {"module": "asr", "code": 1, "turn_id": 4})
    error(APP_ID, "a1", BASE_MS + 60_000, tts)  # same time as a2's: the later id first
    error(APP_ID, "a3", None, {"message": "no time"})
    error(SECOND_APP, "b2", None, tts)
    error(APP_ID, "a2", BASE_MS + 120_000, {"module": "llm", "code": 500, "message": "again"})
    # Timed ones newest first (then the later one), untimed ones after them, later ones first.
    ordered = sorted(sent, key=lambda s: (s[0] >= 0, s[0], s[1]), reverse=True)
    return [item for _, _, item in ordered]


def walk(
    client: TestClient,
    url: str,
    *,
    limit: int,
    token: str = READ_TOKEN,
    cursor: str | None = None,
) -> list[Any]:
    """Every item of a list, page by page from `cursor`."""
    items: list[Any] = []
    joiner = "&" if "?" in url else "?"
    while True:
        after = f"&cursor={cursor}" if cursor else ""
        page = ok(client, f"{url}{joiner}limit={limit}{after}", token)
        assert len(page["items"]) <= limit
        items += page["items"]
        cursor = page["next_cursor"]
        if cursor is None:
            return items


def test_errors_are_listed_newest_first_across_apps_page_by_page(client: TestClient) -> None:
    expected = error_feed(client)
    assert ok(client, "/v1/errors")["items"] == expected
    for limit in (1, 2, 3):
        assert walk(client, "/v1/errors", limit=limit) == expected
    assert ok(client, "/v1/errors")["next_cursor"] is None


@pytest.mark.parametrize(
    ("query", "keep"),
    [
        (f"app_id={APP_ID}", lambda e: e["app_id"] == APP_ID),
        (f"app_id={SECOND_APP}", lambda e: e["app_id"] == SECOND_APP),
        ("agent_id=a1", lambda e: e["agent_id"] == "a1"),
        ("module=tts", lambda e: e["module"] == "tts"),
        ("code=500", lambda e: e["code"] == 500),
        (
            "module=tts&code=429&app_id=app-two",
            lambda e: e["module"] == "tts" and e["app_id"] == SECOND_APP,
        ),
        (
            f"since={at_ms(BASE_MS + 60_000)}",
            lambda e: e["at"] and e["at"] >= at_ms(BASE_MS + 60_000),
        ),
        (
            f"until={at_ms(BASE_MS + 60_000)}",
            lambda e: e["at"] and e["at"] < at_ms(BASE_MS + 60_000),
        ),
        ("code=-7", lambda e: False),
        ("module=nothing", lambda e: False),
    ],
    # Fixed ids: the times in the queries change from one collection to the next (test workers
    # must collect the same tests).
    ids=[
        "app",
        "second-app",
        "agent",
        "module",
        "code",
        "module-code-app",
        "since",
        "until",
        "no-such-code",
        "no-such-module",
    ],
)
def test_every_error_filter_narrows_the_list(client: TestClient, query: str, keep: Any) -> None:
    expected = [e for e in error_feed(client) if keep(e)]
    assert walk(client, f"/v1/errors?{query}", limit=2) == expected


def test_a_late_error_takes_its_place_in_the_next_answer(client: TestClient) -> None:
    expected = error_feed(client)
    first = ok(client, "/v1/errors?limit=2")
    late = {"module": "rtc", "code": 7, "message": "late"}
    send(client, 110, "a9", errors=[late], notify_ms=BASE_MS + 45_000)
    item = {
        "app_id": APP_ID,
        "agent_id": "a9",
        "at": at_ms(BASE_MS + 45_000),
        **late,
        "turn_id": None,
    }
    # It sorts after those at BASE + 60 s (the first page ends there), before those at + 30 s.
    older = next(i for i, e in enumerate(expected) if e["at"] == at_ms(BASE_MS + 30_000))
    now_expected = [*expected[:older], item, *expected[older:]]
    assert first["items"] == expected[:2] and older > 2
    assert ok(client, "/v1/errors")["items"] == now_expected
    # A page read before it arrived continues after what it showed, the late one included.
    rest = walk(client, "/v1/errors", limit=2, cursor=first["next_cursor"])
    assert first["items"] + rest == now_expected


def test_a_scoped_token_lists_only_its_apps_errors(client: TestClient) -> None:
    expected = error_feed(client)
    own = [e for e in expected if e["app_id"] == APP_ID]
    assert walk(client, "/v1/errors", limit=2, token=SCOPED_TOKEN) == own
    assert get(client, f"/v1/errors?app_id={SECOND_APP}", SCOPED_TOKEN) == (
        404,
        {"error": "not_found"},
    )
    assert get(client, "/v1/errors?app_id=no-such-app") == (404, {"error": "not_found"})
    # An agent id of the other app: nothing.
    assert ok(client, "/v1/errors?agent_id=b1", SCOPED_TOKEN)["items"] == []


# --- GET /v1/apps/{app_id}/errors/summary ----------------------------------------------------


def when(text: str) -> datetime:
    return datetime.fromisoformat(text)


def summarise(errors: list[dict[str, Any]], *, start: str, end: str) -> list[dict[str, Any]]:
    groups: dict[tuple[Any, Any], list[dict[str, Any]]] = {}
    for e in errors:
        if e["at"] is not None and when(start) <= when(e["at"]) < when(end):
            groups.setdefault((e["module"], e["code"]), []).append(e)
    rows = [
        {
            "module": module,
            "code": code,
            "count": len(found),
            "agents": len({e["agent_id"] for e in found}),
            "last_at": max(found, key=lambda e: when(e["at"]))["at"],
        }
        for (module, code), found in groups.items()
    ]

    def last(value: Any) -> tuple[bool, Any]:
        return (value is None, value if value is not None else 0)

    return sorted(rows, key=lambda r: (-r["count"], last(r["module"]), last(r["code"])))


def test_the_summary_counts_errors_and_distinct_agents_most_frequent_first(
    client: TestClient,
) -> None:
    errors = error_feed(client)
    old_ms = (NOW_S - 30 * 3600) * 1000  # before the default 24 h
    send(client, 110, "a5", errors=[{"module": "llm", "code": 500}], notify_ms=old_ms)
    send(client, 110, "a6", errors=[{"module": "asr", "code": 2}], notify_ms=BASE_MS + 5_000)
    errors += [
        {"app_id": APP_ID, "agent_id": "a5", "at": at_ms(old_ms), "module": "llm", "code": 500},
        {
            "app_id": APP_ID,
            "agent_id": "a6",
            "at": at_ms(BASE_MS + 5_000),
            "module": "asr",
            "code": 2,
        },
    ]
    own = [e for e in errors if e["app_id"] == APP_ID]
    day = (at_ms((NOW_S - 86_400 + 60) * 1000), at_ms((NOW_S + 3600) * 1000))
    body = ok(client, f"/v1/apps/{APP_ID}/errors/summary")
    assert body["items"] == summarise(own, start=day[0], end=day[1])
    assert body["items"][0] == {
        "module": "llm",
        "code": 500,
        "count": 2,
        "agents": 1,
        "last_at": at_ms(BASE_MS + 120_000),
    }
    assert body["truncated"] is False
    # An explicit range, reaching back to the old one.
    start, end = at_ms(old_ms), at_ms(BASE_MS + 60_001)
    ranged = ok(client, f"/v1/apps/{APP_ID}/errors/summary?from={start}&to={end}")
    assert ranged["items"] == summarise(own, start=start, end=end)
    assert (ranged["from"], ranged["to"]) == (start, end)
    # A late error for another agent changes the next answer: llm 500 now has two agents.
    send(client, 110, "a7", errors=[{"module": "llm", "code": 500}], notify_ms=BASE_MS + 1_000)
    own.append(
        {
            "app_id": APP_ID,
            "agent_id": "a7",
            "at": at_ms(BASE_MS + 1_000),
            "module": "llm",
            "code": 500,
        }
    )
    again = ok(client, f"/v1/apps/{APP_ID}/errors/summary?from={start}&to={end}")
    assert again["items"] == summarise(own, start=start, end=end)
    assert {
        "module": "llm",
        "code": 500,
        "count": 3,
        "agents": 3,
        "last_at": at_ms(BASE_MS + 60_000),
    } in again["items"]
    # The other app's errors are its own.
    second = [e for e in errors if e["app_id"] == SECOND_APP]
    assert ok(client, f"/v1/apps/{SECOND_APP}/errors/summary")["items"] == summarise(
        second, start=day[0], end=day[1]
    )


@pytest.mark.parametrize(
    ("query", "detail"),
    [
        ("from=2026-01-02T00:00:00Z&to=2026-01-01T00:00:00Z", "from: must be before to"),
        ("from=2024-01-01T00:00:00Z&to=2026-01-01T00:00:00Z", "from: at most 366 days before to"),
        ("from=yesterday", "from: an RFC 3339 time such as 2026-01-31T12:00:00Z"),
        ("window=24h", "window: unknown parameter"),
    ],
)
def test_summary_ranges_are_checked(client: TestClient, query: str, detail: str) -> None:
    assert get(client, f"/v1/apps/{APP_ID}/errors/summary?{query}") == (
        400,
        {"error": "invalid_parameter", "detail": detail},
    )


# --- GET /v1/agents/{agent_id}/timeline ------------------------------------------------------


def story(client: TestClient, agent_id: str = "story") -> int:
    """A whole session, sent out of order; answers its start in seconds."""
    start = NOW_S - 3600
    turns = [
        {
            "turn_id": 1,
            "start": {"start_at": (start + 10) * 1000, "type": "voice"},
            "end": {"end_at": (start + 14) * 1000, "type": "ok"},
            "metrics": {
                "e2e_latency_ms": 850,
                "segmented_latency_ms": {"asr_ttlw": 300, "llm_ttft": 400, "tts_ttfb": 90},
            },
        },
        {
            "turn_id": 2,
            "start": {"start_at": (start + 20) * 1000, "type": "voice"},
            "end": {"end_at": (start + 25) * 1000, "type": "interrupted"},
            "metrics": {
                "e2e_latency_ms": 990,
                "segmented_latency_ms": [{"name": "asr_ttlw", "latency": 310}],
            },
        },
    ]
    # The stop, the turns and the transcript arrive before the start and the errors.
    send(client, 102, agent_id, start_ts=start, stop_ts=start + 60, status="STOPPED", message="bye")
    send(client, 112, agent_id, stop_ts=start + 60, turns=turns)
    send(
        client,
        103,
        agent_id,
        stop_ts=start + 60,
        contents=[
            {"role": "user", "content": "Is my order late?"},
            {"role": "assistant", "content": "It arrives today."},
        ],
    )
    send(client, 101, agent_id, start_ts=start)
    send(client, 201, agent_id, state="START", report_ms=(start + 2) * 1000)
    send(
        client,
        111,
        agent_id,
        metrics=[{"turn_id": 1, "asr_ttlw": 410, "llm_ttfb": 690, "tts_ttfb": 120}],
        notify_ms=(start + 15) * 1000,
    )
    send(
        client,
        110,
        agent_id,
        errors=[{"module": "tts", "code": 429, "message": "rate limited", "turn_id": 2}],
        notify_ms=(start + 24) * 1000,
    )
    send(
        client,
        104,
        agent_id,
        message="Task exceeded maximum lifetime",
        notify_ms=(start + 50) * 1000,
    )
    return start


def s(seconds: int) -> str:
    return at_ms(seconds * 1000)


def test_the_timeline_merges_every_kind_in_event_time_order(client: TestClient) -> None:
    before = datetime.now(UTC) - timedelta(seconds=1)
    start = story(client)
    after = datetime.now(UTC) + timedelta(seconds=1)
    body = ok(client, "/v1/agents/story/timeline")
    assert (body["agent_id"], body["app_id"], body["truncated"]) == ("story", APP_ID, False)
    items = body["items"]
    transcript = items[-1]
    assert transcript["kind"] == "transcript"
    assert before <= datetime.fromisoformat(transcript["at"]) <= after
    assert transcript == {
        "at": transcript["at"],
        "kind": "transcript",
        "source": "webhook",
        "messages": 2,
    }
    stopped = {"at": s(start + 60), "kind": "transition", "from": "RUNNING", "to": "STOPPED"}
    assert [
        {k: v for k, v in item.items() if k in ("at", "kind", "from", "to")} for item in items[:-1]
    ] == [
        {"at": s(start), "kind": "transition", "from": "IDLE", "to": "RUNNING"},
        {"at": s(start + 2), "kind": "call_state"},
        {"at": s(start + 14), "kind": "turn"},
        {"at": s(start + 15), "kind": "metrics"},
        {"at": s(start + 24), "kind": "error"},
        {"at": s(start + 25), "kind": "turn"},
        {"at": s(start + 50), "kind": "warning"},
        stopped,
    ]
    by_kind = {item["kind"]: item for item in items}
    assert by_kind["call_state"] == {
        "at": s(start + 2),
        "kind": "call_state",
        "direction": "inbound",
        "state": "START",
    }
    assert by_kind["metrics"] == {
        "at": s(start + 15),
        "kind": "metrics",
        "turn_id": "1",
        "asr_ttlw": 410,
        "llm_ttfb": 690,
        "llm_ttfs": None,
        "tts_ttfb": 120,
    }
    assert by_kind["error"] == {
        "at": s(start + 24),
        "kind": "error",
        "module": "tts",
        "code": 429,
        "message": "rate limited",
        "turn_id": "2",
    }
    assert by_kind["warning"] == {
        "at": s(start + 50),
        "kind": "warning",
        "text": "Task exceeded maximum lifetime",
    }
    first_turn, second_turn = (item for item in items if item["kind"] == "turn")
    assert first_turn == {
        "at": s(start + 14),
        "kind": "turn",
        "turn_id": 1,
        "start_at": s(start + 10),
        "end_at": s(start + 14),
        "start_type": "voice",
        "end_type": "ok",
        "e2e_latency_ms": 850,
        "asr_ttlw": 300,
        "llm_ttft": 400,
        "tts_ttfb": 90,
    }
    assert (second_turn["asr_ttlw"], second_turn["llm_ttft"], second_turn["end_type"]) == (
        310,
        None,
        "interrupted",
    )
    assert items[-2]["cause"] and items[-2]["source"] == "webhook"
    # Never the transcript's words.
    raw = client.get("/v1/agents/story/timeline", headers=reader_headers()).text
    assert "order late" not in raw and "arrives today" not in raw
    # Only some kinds, when asked.
    only = ok(client, "/v1/agents/story/timeline?kind=error&kind=warning")["items"]
    assert [item["kind"] for item in only] == ["error", "warning"]


def test_an_erased_history_shows_no_transcript_or_turns(client: TestClient) -> None:
    story(client)
    erased = client.delete("/v1/agents/story/history", headers=reader_headers(ADMIN_TOKEN))
    assert erased.status_code == 204
    kinds = [item["kind"] for item in ok(client, "/v1/agents/story/timeline")["items"]]
    assert "transcript" not in kinds and "turn" not in kinds
    assert kinds.count("transition") == 2 and "error" in kinds and "metrics" in kinds


def test_the_timeline_is_bounded_and_says_so(client: TestClient, sql: Any) -> None:
    from service import timeline

    send(client, 101, "busy", start_ts=NOW_S - 7200)
    sql.execute(
        "INSERT INTO agent_turn (app_id, agent_id, turn_id, end_at, data, source)"
        " SELECT %(app)s, 'busy', n, now() - interval '1 hour' + n * interval '1 ms', '{}', 'api'"
        " FROM generate_series(1, %(n)s) AS n",
        app=APP_ID,
        n=timeline.MAX_ITEMS + 10,
    )
    body = ok(client, "/v1/agents/busy/timeline")
    assert body["truncated"] is True
    assert len(body["items"]) == timeline.MAX_ITEMS
    # The first items in time: the start, then the turns from the first.
    assert body["items"][0]["kind"] == "transition"
    assert [item["turn_id"] for item in body["items"][1:4]] == [1, 2, 3]
    small = ok(client, "/v1/agents/busy/timeline?kind=transition")
    assert small["truncated"] is False and len(small["items"]) == 1


def test_timeline_agents_are_found_as_for_every_agent_endpoint(client: TestClient) -> None:
    send(client, 101, "shared", start_ts=NOW_S - 60)
    send(client, 101, "shared", SECOND_APP, start_ts=NOW_S - 60)
    assert get(client, "/v1/agents/shared/timeline") == (
        409,
        {"error": "ambiguous_agent", "app_ids": [APP_ID, SECOND_APP]},
    )
    assert ok(client, f"/v1/agents/shared/timeline?app_id={SECOND_APP}")["app_id"] == SECOND_APP
    assert ok(client, "/v1/agents/shared/timeline", SCOPED_TOKEN)["app_id"] == APP_ID
    assert get(client, "/v1/agents/nobody/timeline") == (404, {"error": "not_found"})
    assert get(client, f"/v1/agents/shared/timeline?app_id={SECOND_APP}", SCOPED_TOKEN) == (
        404,
        {"error": "not_found"},
    )
    assert get(client, "/v1/agents/shared/timeline?app_id=nope") == (404, {"error": "not_found"})
    assert get(client, f"/v1/agents/shared/timeline?app_id={APP_ID}&kind=turns")[0] == 400


# --- GET /v1/agents: name, has_errors, stopped_since, stopped_until ---------------------------


def test_the_agent_list_filters_by_name_errors_and_stop_time(client: TestClient) -> None:
    start = NOW_S - 7200
    for number, stop in ((1, 100), (2, 200), (3, None), (4, 300)):
        agent_id = f"f{number}"
        send(client, 101, agent_id, start_ts=start + number)
        if stop is not None:
            send(
                client,
                102,
                agent_id,
                start_ts=start + number,
                stop_ts=start + stop,
                status="STOPPED",
            )
    send(client, 110, "f2", errors=[{"module": "llm", "code": 1}])
    send(client, 110, "f3", errors=[{"module": "llm", "code": 1}])
    send(client, 101, "other", SECOND_APP, name="name-f1", start_ts=start)

    def listed(query: str, token: str = READ_TOKEN) -> list[str]:
        return [a["agent_id"] for a in ok(client, f"/v1/agents?{query}", token)["items"]]

    assert listed("name=name-f1") == ["f1", "other"]
    assert listed("name=name-f1", SCOPED_TOKEN) == ["f1"]
    assert listed(f"name=name-f1&app_id={APP_ID}") == ["f1"]
    assert listed("name=name-f") == []
    assert listed(f"has_errors=true&app_id={APP_ID}") == ["f3", "f2"]
    assert listed(f"has_errors=false&app_id={APP_ID}") == ["f4", "f1"]
    assert listed(f"stopped_since={s(start + 200)}") == ["f4", "f2"]
    assert listed(f"stopped_until={s(start + 200)}") == ["f1"]
    assert listed(
        f"stopped_since={s(start + 100)}&stopped_until={s(start + 300)}&has_errors=false"
    ) == ["f1"]
    # A late error changes the next answer.
    send(client, 110, "f1", errors=[{"module": "tts", "code": 2}], notify_ms=(start + 5) * 1000)
    assert listed(f"has_errors=false&app_id={APP_ID}") == ["f4"]


@pytest.mark.parametrize(
    ("query", "detail"),
    [
        ("has_errors=yes", "has_errors: true or false"),
        ("has_errors=True", "has_errors: true or false"),
        ("has_errors=", "has_errors: empty"),
        ("has_errors=true&has_errors=false", "has_errors: given more than once"),
        ("name=a%00b", "name: no NUL character or unpaired surrogate"),
        (
            "stopped_since=2026-13-01T00:00:00Z",
            "stopped_since: not a date and time on the calendar",
        ),
        (
            "stopped_until=2026-01-01T00:00:00",
            "stopped_until: the time needs a UTC offset (Z or +hh:mm)",
        ),
    ],
)
def test_bad_agent_filters_are_400(client: TestClient, query: str, detail: str) -> None:
    assert get(client, f"/v1/agents?{query}") == (
        400,
        {"error": "invalid_parameter", "detail": detail},
    )


@pytest.mark.parametrize("app_id", ["no-such-app", SECOND_APP])
def test_listing_agents_of_an_app_not_seen_is_404(client: TestClient, app_id: str) -> None:
    assert get(client, f"/v1/agents?app_id={app_id}", SCOPED_TOKEN) == (404, {"error": "not_found"})
