"""Erasure on request (CONTRACT §8): admin tokens only; the transcript, the turns and the
transcript in the raw 103 are deleted everywhere, logged without the token, and stay deleted."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from starlette.testclient import TestClient
from structlog.testing import capture_logs

from service import config, db, erasure, events, repositories
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
    Sql,
    deliver,
    payload,
    post,
    reader_headers,
    scoped_environment,
)

START = 1_751_400_000
SECRET_WORDS = ("zanzibar", "quixotic")  # what the erased agent said
KEPT_WORDS = ("marmalade",)  # what the agent that is not erased said
ADMIN = reader_headers(ADMIN_TOKEN)


@pytest.fixture
def client(database_url: str, tmp_path: Path) -> Iterator[TestClient]:
    environment = scoped_environment(
        database_url, tmp_path, ADMIN_API_TOKENS=f"first-admin,{ADMIN_TOKEN}"
    )
    with TestClient(create_app(config.load(environment))) as test_client:
        yield test_client


def send(
    client: TestClient, event_type: int, agent_id: str, app_id: str = APP_ID, **fields: Any
) -> Any:
    secret = SECRET if app_id == APP_ID else SECOND_SECRET
    response = post(client, deliver(event_type, payload(agent_id, **fields), secret=secret), app_id)
    assert response.status_code == 200, response.text
    return response.json()


def session(
    client: TestClient,
    agent_id: str,
    words: tuple[str, ...],
    *,
    app_id: str = APP_ID,
    **fields: Any,
) -> None:
    """A whole session: joined, errors, metrics, left, a 103 (twice: once with a NUL character,
    which jsonb cannot hold, so the exact bytes are kept in `raw`) and a 112 with turns."""
    contents = [{"role": "user", "content": f"my secret is {word}"} for word in words]
    send(client, 101, agent_id, app_id, start_ts=START, **fields)
    send(client, 110, agent_id, app_id, errors=[{"module": "llm", "code": 1, "message": "m"}])
    send(client, 111, agent_id, app_id, metrics=[{"turn_id": 1, "asr_ttlw": 300}])
    send(client, 102, agent_id, app_id, start_ts=START, stop_ts=START + 60, status="STOPPED")
    send(client, 103, agent_id, app_id, contents=contents)
    nul = [{"role": "assistant", "content": f"{' and '.join(words)}\x00 again"}]
    send(client, 103, agent_id, app_id, contents=nul)
    turns = [
        {
            "turn_id": 1,
            "start": {"start_at": (START + 1) * 1000},
            "end": {"end_at": (START + 5) * 1000},
        },
        {
            "turn_id": 2,
            "start": {"start_at": (START + 9) * 1000},
            "end": {"end_at": (START + 14) * 1000},
        },
    ]
    send(client, 112, agent_id, app_id, turns=turns)


def tables_holding(sql: Sql, word: str) -> set[str]:
    """Every table with a row whose text, or a bytea column's bytes, contains `word`."""
    found = set()
    tables = sql.rows(
        "SELECT table_name FROM information_schema.tables"
        " WHERE table_schema = 'public' AND table_type = 'BASE TABLE'"
    )
    for (name,) in (tuple(row.values()) for row in tables):
        if sql.value(
            f'SELECT count(*) FROM "{name}" AS t WHERE t::text ILIKE %(p)s', p=f"%{word}%"
        ):
            found.add(name)
        binary = sql.rows(
            "SELECT column_name FROM information_schema.columns"
            " WHERE table_schema = 'public' AND table_name = %(t)s AND data_type = 'bytea'",
            t=name,
        )
        for column in (row["column_name"] for row in binary):
            hits = sql.value(
                f'SELECT count(*) FROM "{name}"'
                f" WHERE position(convert_to(%(w)s, 'UTF8') in \"{column}\") > 0",
                w=word,
            )
            if hits:
                found.add(f"{name}.{column}")
    return found


def history(client: TestClient, agent_id: str, app_id: str = APP_ID) -> dict[str, Any]:
    response = client.get(f"/v1/agents/{agent_id}/history?app_id={app_id}", headers=ADMIN)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def test_an_admin_erases_one_agents_history_and_it_answers_erased(
    client: TestClient, sql: Sql
) -> None:
    session(client, "forget-me", SECRET_WORDS)
    assert history(client, "forget-me")["status"] == "complete"

    response = client.delete("/v1/agents/forget-me/history", headers=ADMIN)

    assert (response.status_code, response.content) == (204, b"")
    assert history(client, "forget-me") == {
        "agent_id": "forget-me",
        "status": "erased",
        "source": None,
        "contents": [],
        "turns": [],
        "reason": None,
    }
    payloads = {
        item["event_type"]: item["payload"]
        for item in client.get("/v1/agents/forget-me/events", headers=ADMIN).json()["items"]
    }
    assert "contents" not in payloads[103] and "turns" not in payloads[112]
    assert payloads[103]["agent_id"] == "forget-me"  # the rest of the notification stays
    assert sql.value("SELECT count(*) FROM notification WHERE raw IS NOT NULL") == 0
    # What is not the transcript stays: the agent, its transitions, errors and metrics.
    agent = client.get("/v1/agents/forget-me", headers=ADMIN).json()
    assert agent["state"] == "STOPPED" and len(agent["errors"]) == 1
    assert sql.count("agent_metric") == 1
    # Erasing again changes nothing and answers the same.
    assert client.delete("/v1/agents/forget-me/history", headers=ADMIN).status_code == 204


def test_nothing_of_an_erased_transcript_remains_in_any_table(client: TestClient, sql: Sql) -> None:
    session(client, "forget-me", SECRET_WORDS)
    session(client, "keep-me", KEPT_WORDS)
    assert sql.value("SELECT count(*) FROM notification WHERE raw IS NOT NULL") == 2
    for word in SECRET_WORDS + KEPT_WORDS:
        assert {"history", "notification", "notification.raw"} <= tables_holding(sql, word), word

    assert client.delete("/v1/agents/forget-me/history", headers=ADMIN).status_code == 204

    for word in SECRET_WORDS:
        assert tables_holding(sql, word) == set(), word
    assert sql.count("agent_turn") == 2  # keep-me's
    # The search finds what is still there: the other agent's transcript, raw bytes included.
    assert {"history", "notification", "notification.raw"} <= tables_holding(sql, KEPT_WORDS[0])
    assert history(client, "keep-me")["status"] == "complete"


def test_a_later_103_or_112_does_not_bring_the_transcript_back(
    client: TestClient, sql: Sql
) -> None:
    session(client, "forget-me", SECRET_WORDS)
    assert client.delete("/v1/agents/forget-me/history", headers=ADMIN).status_code == 204
    again = [{"role": "user", "content": f"my secret is {SECRET_WORDS[1]}"}]

    assert send(client, 103, "forget-me", contents=again) == {"status": "accepted"}
    assert send(client, 103, "forget-me", contents=[{"role": "user", "content": "x\x00 y"}]) == {
        "status": "accepted"
    }
    assert send(
        client, 112, "forget-me", turns=[{"turn_id": 7, "end": {"end_at": 1751400030000}}]
    ) == {"status": "accepted"}

    assert history(client, "forget-me")["status"] == "erased"
    assert history(client, "forget-me")["contents"] == []
    assert sql.count("agent_turn") == 0
    assert tables_holding(sql, SECRET_WORDS[1]) == set()
    assert sql.value("SELECT count(*) FROM notification WHERE raw IS NOT NULL") == 0
    assert sql.value("SELECT count(*) FROM notification WHERE event_type = 103") == 4


def test_an_agent_erased_while_running_stays_erased_after_its_stop(
    client: TestClient, sql: Sql
) -> None:
    send(client, 101, "early", start_ts=START)
    assert client.delete("/v1/agents/early/history", headers=ADMIN).status_code == 204

    send(client, 102, "early", start_ts=START, stop_ts=START + 60, status="STOPPED")
    send(client, 103, "early", contents=[{"role": "user", "content": SECRET_WORDS[0]}])

    assert history(client, "early")["status"] == "erased"
    assert tables_holding(sql, SECRET_WORDS[0]) == set()


def test_a_fetch_from_agora_does_not_bring_the_transcript_back_and_is_not_made(
    client: TestClient, sql: Sql, database_url: str
) -> None:
    send(client, 101, "fetched", start_ts=START)
    send(client, 102, "fetched", start_ts=START, stop_ts=START + 60, status="STOPPED")
    assert sql.value("SELECT status FROM history_job WHERE agent_id = 'fetched'") == "queued"

    assert client.delete("/v1/agents/fetched/history", headers=ADMIN).status_code == 204
    # The queued job is finished: nothing asks Agora for this transcript again.
    assert sql.value("SELECT status FROM history_job WHERE agent_id = 'fetched'") == "done"

    async def store_as_the_worker_would() -> bool:
        engine = db.create_engine(database_url)
        try:
            async with engine.begin() as conn:
                stored = await repositories.store_transcript(
                    conn,
                    app_id=APP_ID,
                    agent_id="fetched",
                    contents=[{"role": "user", "content": SECRET_WORDS[0]}],
                    source="api",
                )
                await repositories.upsert_turns(
                    conn,
                    app_id=APP_ID,
                    agent_id="fetched",
                    turns=[
                        events.Turn(
                            turn_id=1,
                            start_at=None,
                            end_at=None,
                            start_type=None,
                            end_type=None,
                            e2e_latency_ms=None,
                            data={},
                        )
                    ],
                    source="api",
                )
            return stored
        finally:
            await engine.dispose()

    assert asyncio.run(store_as_the_worker_would()) is False
    assert history(client, "fetched")["status"] == "erased"
    assert sql.count("agent_turn") == 0
    assert tables_holding(sql, SECRET_WORDS[0]) == set()


@pytest.mark.parametrize("token", [READ_TOKEN, SCOPED_TOKEN, SECOND_SCOPED_TOKEN])
def test_read_tokens_may_not_erase_and_learn_nothing_from_trying(
    client: TestClient, sql: Sql, token: str
) -> None:
    session(client, "shared", SECRET_WORDS)
    session(client, "shared", KEPT_WORDS, app_id=SECOND_APP)
    session(client, "only-two", KEPT_WORDS, app_id=SECOND_APP)
    headers = reader_headers(token)
    answers = {
        path: (response.status_code, response.json())
        for path in (
            "/v1/agents/shared/history",
            f"/v1/agents/shared/history?app_id={SECOND_APP}",
            "/v1/agents/only-two/history",
            "/v1/agents/never-seen/history",
            "/v1/agents/never-seen/history?app_id=no-such-app",
        )
        for response in [client.delete(path, headers=headers)]
    }
    for path in (
        f"/v1/apps/{APP_ID}/erasures",
        f"/v1/apps/{SECOND_APP}/erasures",
        "/v1/apps/nope/erasures",
    ):
        response = client.post(path, json={"label": {"tenant": "acme"}}, headers=headers)
        answers[path] = (response.status_code, response.json())
    assert all(answer == (403, {"error": "forbidden"}) for answer in answers.values()), answers
    assert sql.value("SELECT count(*) FROM history WHERE status = 'complete'") == 3


def test_erasure_without_a_valid_token_is_unauthorized(client: TestClient) -> None:
    session(client, "forget-me", SECRET_WORDS)
    for headers in ({}, reader_headers("wrong"), {"Authorization": f"Basic {ADMIN_TOKEN}"}):
        response = client.delete("/v1/agents/forget-me/history", headers=headers)
        assert (response.status_code, response.json()) == (401, {"error": "unauthorized"})
        response = client.post(
            f"/v1/apps/{APP_ID}/erasures", json={"label": {"a": "b"}}, headers=headers
        )
        assert response.status_code == 401
    assert history(client, "forget-me")["status"] == "complete"


def test_an_agent_id_in_two_apps_needs_its_app_id(client: TestClient) -> None:
    session(client, "shared", SECRET_WORDS)
    session(client, "shared", KEPT_WORDS, app_id=SECOND_APP)

    response = client.delete("/v1/agents/shared/history", headers=ADMIN)
    assert (response.status_code, response.json()) == (
        409,
        {"error": "ambiguous_agent", "app_ids": [APP_ID, SECOND_APP]},
    )
    assert (
        client.delete(f"/v1/agents/shared/history?app_id={SECOND_APP}", headers=ADMIN).status_code
        == 204
    )

    assert history(client, "shared", SECOND_APP)["status"] == "erased"
    assert history(client, "shared", APP_ID)["status"] == "complete"


@pytest.mark.parametrize(
    "path",
    [
        "/v1/agents/never-seen/history",
        "/v1/agents/nul%00id/history",
        "/v1/agents/surrogate%ED%A0%80/history",
        f"/v1/agents/never-seen/history?app_id={APP_ID}",
        "/v1/agents/forget-me/history?app_id=no-such-app",
    ],
)
def test_an_unknown_agent_or_app_is_not_found(client: TestClient, path: str) -> None:
    session(client, "forget-me", SECRET_WORDS)
    response = client.delete(path, headers=ADMIN)
    assert (response.status_code, response.json()) == (404, {"error": "not_found"})


def test_an_erasure_is_logged_with_the_tokens_place_and_the_agent_never_the_token(
    client: TestClient,
) -> None:
    session(client, "forget-me", SECRET_WORDS)
    session(client, "tagged-1", KEPT_WORDS, labels={"tenant": "acme"})
    with capture_logs() as logs:
        client.delete("/v1/agents/forget-me/history", headers=ADMIN)
        client.post(
            f"/v1/apps/{APP_ID}/erasures", json={"label": {"tenant": "acme"}}, headers=ADMIN
        )
    erased = [entry for entry in logs if entry["event"] == "history_erased"]
    assert [(e["app_id"], e["agent_ids"], e["by"]) for e in erased] == [
        (APP_ID, ["forget-me"], "admin_token=2"),
        (APP_ID, ["tagged-1"], "admin_token=2"),
    ]
    assert ADMIN_TOKEN not in repr(logs)
    assert all(word not in repr(logs) for word in SECRET_WORDS + KEPT_WORDS)


def test_erasure_by_label_erases_every_agent_of_the_app_that_holds_the_pair(
    client: TestClient, sql: Sql
) -> None:
    session(client, "acme-1", SECRET_WORDS, labels={"tenant": "acme", "tier": "gold"})
    session(client, "acme-2", SECRET_WORDS, labels={"tenant": "acme"})
    session(client, "globex", KEPT_WORDS, labels={"tenant": "globex"})
    session(client, "plain", KEPT_WORDS)
    session(client, "acme-elsewhere", KEPT_WORDS, app_id=SECOND_APP, labels={"tenant": "acme"})

    response = client.post(
        f"/v1/apps/{APP_ID}/erasures", json={"label": {"tenant": "acme"}}, headers=ADMIN
    )

    assert (response.status_code, response.json()) == (200, {"agents": 2})
    statuses = dict(
        (row["agent_id"], row["status"]) for row in sql.rows("SELECT agent_id, status FROM history")
    )
    assert statuses == {
        "acme-1": "erased",
        "acme-2": "erased",
        "globex": "complete",
        "plain": "complete",
        "acme-elsewhere": "complete",
    }
    for word in SECRET_WORDS:
        assert tables_holding(sql, word) == set()
    # Asked again, the same agents hold the label; they are all erased already.
    again = client.post(
        f"/v1/apps/{APP_ID}/erasures", json={"label": {"tenant": "acme"}}, headers=ADMIN
    )
    assert again.json() == {"agents": 2}
    nobody = client.post(
        f"/v1/apps/{APP_ID}/erasures", json={"label": {"tenant": "initech"}}, headers=ADMIN
    )
    assert nobody.json() == {"agents": 0}


def test_erasure_by_label_goes_in_batches(client: TestClient, sql: Sql, database_url: str) -> None:
    for i in range(5):
        send(client, 101, f"batch-{i}", start_ts=START, labels={"cohort": "b"})

    async def erase() -> int:
        engine = db.create_engine(database_url)
        try:
            return await erasure.erase_by_label(
                engine, app_id=APP_ID, key="cohort", value="b", who="test", batch_size=2
            )
        finally:
            await engine.dispose()

    assert asyncio.run(erase()) == 5
    assert sql.value("SELECT count(*) FROM history WHERE status = 'erased'") == 5


@pytest.mark.parametrize(
    ("body", "detail"),
    [
        (b"", "body"),
        (b"not json", "body"),
        (b"[1, 2]", "body"),
        (b"{}", "body"),
        (b'{"label": {"tenant": "acme"}, "more": 1}', "body"),
        (b'{"label": "tenant=acme"}', "label"),
        (b'{"label": {}}', "label"),
        (b'{"label": {"tenant": "acme", "tier": "gold"}}', "label"),
        (b'{"label": {"tenant": 7}}', "label"),
        (b'{"label": {"tenant": null}}', "label"),
        (b'{"label": {"": "acme"}}', "label"),
        (b'{"label": {"tenant": ""}}', "label"),
        (b'{"label": {"tenant": "a\\u0000b"}}', "label"),
        (b'{"label": {"tenant": "\\ud800"}}', "label"),
        (json.dumps({"label": {"tenant": "x" * 2000}}).encode(), "label"),
        (b"[" * 5000 + b"]" * 5000, "body"),
    ],
)
def test_a_bad_erasure_body_is_an_invalid_parameter(
    client: TestClient, body: bytes, detail: str
) -> None:
    response = client.post(f"/v1/apps/{APP_ID}/erasures", content=body, headers=ADMIN)
    assert response.status_code == 400, response.text
    assert response.json()["error"] == "invalid_parameter"
    assert response.json()["detail"].startswith(detail)


def test_an_erasure_body_over_the_limit_is_refused(client: TestClient) -> None:
    body = json.dumps({"label": {"k": "v"}, "padding": "x" * 20_000}).encode()
    response = client.post(f"/v1/apps/{APP_ID}/erasures", content=body, headers=ADMIN)
    assert (response.status_code, response.json()) == (413, {"error": "payload_too_large"})


def test_erasure_by_label_of_an_unknown_app_is_not_found(client: TestClient) -> None:
    response = client.post(
        "/v1/apps/no-such-app/erasures", json={"label": {"a": "b"}}, headers=ADMIN
    )
    assert (response.status_code, response.json()) == (404, {"error": "not_found"})
    response = client.post(
        f"/v1/apps/{APP_ID}/erasures?dry_run=1", json={"label": {"a": "b"}}, headers=ADMIN
    )
    assert response.status_code == 400
