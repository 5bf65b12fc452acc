"""Transcripts deleted by age (`erasure.expire`), and erasures racing the writes they must win."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
from starlette.testclient import TestClient

from service import db, erasure
from tests.factories import APP_ID, Sql, deliver, payload, poll, post, reader_headers

NOW = datetime(2026, 11, 21, 12, 0, tzinfo=UTC)
START = 1_751_400_000
WORDS = "ultramarine"


def session(client: TestClient, agent_id: str) -> None:
    for event_type, fields in [
        (101, {"start_ts": START}),
        (102, {"start_ts": START, "stop_ts": START + 60, "status": "STOPPED"}),
        (103, {"contents": [{"role": "user", "content": f"{WORDS} {agent_id}"}]}),
        (112, {"turns": [{"turn_id": 1, "end": {"end_at": (START + 30) * 1000}}]}),
    ]:
        response = post(client, deliver(event_type, payload(agent_id, **fields)))
        assert response.json() == {"status": "accepted"}


def stopped_ago(sql: Sql, agent_id: str, age: timedelta) -> None:
    sql.execute(
        "UPDATE agent SET stopped_at = %(at)s WHERE agent_id = %(id)s", at=NOW - age, id=agent_id
    )


def expire(database_url: str, *, retention_days: int, batch_size: int = erasure.BATCH_SIZE) -> int:
    async def run() -> int:
        engine = db.create_engine(database_url)
        try:
            return await erasure.expire(
                engine, retention_days=retention_days, now=NOW, batch_size=batch_size
            )
        finally:
            await engine.dispose()

    return asyncio.run(run())


def statuses(sql: Sql) -> dict[str, str]:
    return {r["agent_id"]: r["status"] for r in sql.rows("SELECT agent_id, status FROM history")}


def transcript_rows(sql: Sql, agent_id: str) -> dict[str, int]:
    return {
        "turns": sql.value("SELECT count(*) FROM agent_turn WHERE agent_id = %(a)s", a=agent_id),
        "bodies": sql.value(
            "SELECT count(*) FROM notification WHERE agent_id = %(a)s"
            " AND (body -> 'payload') ?| array['contents', 'turns']",
            a=agent_id,
        ),
        "words": sql.value(
            "SELECT count(*) FROM history WHERE agent_id = %(a)s AND contents::text LIKE %(w)s",
            a=agent_id,
            w=f"%{WORDS}%",
        ),
    }


def test_histories_of_agents_stopped_before_the_retention_age_expire(
    client: TestClient, sql: Sql, database_url: str
) -> None:
    session(client, "old")
    session(client, "recent")
    stopped_ago(sql, "old", timedelta(days=31))
    stopped_ago(sql, "recent", timedelta(days=29))

    assert expire(database_url, retention_days=30) == 1

    assert statuses(sql) == {"old": "expired", "recent": "complete"}
    assert transcript_rows(sql, "old") == {"turns": 0, "bodies": 0, "words": 0}
    assert transcript_rows(sql, "recent") == {"turns": 1, "bodies": 2, "words": 1}
    history = client.get("/v1/agents/old/history", headers=reader_headers())
    assert history.json()["status"] == "expired" and history.json()["contents"] == []
    # Everything else about the agent stays.
    assert sql.value("SELECT state FROM agent WHERE agent_id = 'old'") == "STOPPED"
    assert sql.value("SELECT count(*) FROM notification WHERE agent_id = 'old'") == 4
    # A second pass finds nothing more to do.
    assert expire(database_url, retention_days=30) == 0


def test_a_later_103_does_not_bring_an_expired_transcript_back(
    client: TestClient, sql: Sql, database_url: str
) -> None:
    session(client, "old")
    stopped_ago(sql, "old", timedelta(days=400))
    assert expire(database_url, retention_days=30) == 1

    contents = [{"role": "user", "content": f"{WORDS} again"}]
    post(client, deliver(103, payload("old", contents=contents)))

    assert statuses(sql) == {"old": "expired"}
    assert transcript_rows(sql, "old") == {"turns": 0, "bodies": 0, "words": 0}


def test_zero_days_keeps_every_transcript(client: TestClient, sql: Sql, database_url: str) -> None:
    session(client, "ancient")
    stopped_ago(sql, "ancient", timedelta(days=3650))

    assert expire(database_url, retention_days=0) == 0

    assert statuses(sql) == {"ancient": "complete"}


def test_an_erased_history_stays_erased_and_an_expired_one_may_still_be_erased(
    client: TestClient, sql: Sql, database_url: str
) -> None:
    session(client, "erased-first")
    session(client, "expired-first")
    for agent_id in ("erased-first", "expired-first"):
        stopped_ago(sql, agent_id, timedelta(days=90))
    sql.execute(
        "UPDATE history SET status = 'erased', contents = '[]', source = NULL"
        " WHERE agent_id = 'erased-first'"
    )

    assert expire(database_url, retention_days=30) == 1
    sql.execute("UPDATE history SET status = 'erased' WHERE agent_id = 'expired-first'")
    # Nothing takes a history out of erased or expired: the update is skipped.
    sql.execute("UPDATE history SET status = 'complete' WHERE agent_id = 'erased-first'")

    assert statuses(sql) == {"erased-first": "erased", "expired-first": "erased"}


def test_agents_never_stopped_expire_only_when_idle_and_silent_that_long(
    client: TestClient, sql: Sql, database_url: str
) -> None:
    for agent_id in ("idle-old", "idle-new", "running-old"):
        post(client, deliver(103, payload(agent_id, contents=[{"role": "user", "content": "w"}])))
    post(client, deliver(101, payload("running-old", start_ts=START)))
    sql.execute(
        "UPDATE agent SET last_event_at = %(old)s, first_seen_at = %(old)s"
        " WHERE agent_id IN ('idle-old', 'running-old')",
        old=NOW - timedelta(days=60),
    )
    sql.execute("UPDATE agent SET last_event_at = %(at)s WHERE agent_id = 'idle-new'", at=NOW)

    assert expire(database_url, retention_days=30) == 1

    assert statuses(sql) == {
        "idle-old": "expired",
        "idle-new": "complete",
        "running-old": "complete",
    }


def test_a_backlog_larger_than_a_batch_expires_completely(sql: Sql, database_url: str) -> None:
    sql.execute(
        "INSERT INTO agent (app_id, agent_id, state, stopped_at)"
        " SELECT 'app-one', 'a' || g, 'STOPPED', %(at)s FROM generate_series(1, 25) AS g",
        at=NOW - timedelta(days=100),
    )
    sql.execute(
        "INSERT INTO history (app_id, agent_id, status, contents)"
        ' SELECT app_id, agent_id, \'complete\', \'[{"role": "user", "content": "w"}]\''
        " FROM agent"
    )

    assert expire(database_url, retention_days=30, batch_size=10) == 25

    assert set(statuses(sql).values()) == {"expired"}


def test_concurrent_expiries_take_each_history_once(sql: Sql, database_url: str) -> None:
    sql.execute(
        "INSERT INTO agent (app_id, agent_id, state, stopped_at)"
        " SELECT 'app-one', 'a' || g, 'STOPPED', %(at)s FROM generate_series(1, 120) AS g",
        at=NOW - timedelta(days=100),
    )
    sql.execute("INSERT INTO history (app_id, agent_id) SELECT app_id, agent_id FROM agent")

    async def both() -> list[int]:
        engine = db.create_engine(database_url)
        try:
            runs = [
                erasure.expire(engine, retention_days=30, now=NOW, batch_size=7) for _ in range(2)
            ]
            return list(await asyncio.gather(*runs))
        finally:
            await engine.dispose()

    assert sum(asyncio.run(both())) == 120
    assert set(statuses(sql).values()) == {"expired"}


# --- erasures racing writes ---------------------------------------------------------------------


def waiting_on_a_lock(sql: Sql) -> bool:
    return bool(
        sql.value(
            "SELECT count(*) FROM pg_stat_activity"
            " WHERE datname = current_database() AND wait_event_type = 'Lock'"
        )
    )


def in_thread(work: Callable[[], Any]) -> tuple[threading.Thread, list[Any]]:
    result: list[Any] = []
    thread = threading.Thread(target=lambda: result.append(work()))
    thread.start()
    return thread, result


def test_a_103_arriving_during_an_erasure_waits_for_it_and_is_stored_without_its_transcript(
    client: TestClient, sql: Sql
) -> None:
    session(client, "racing")
    with psycopg.connect(sql.url) as erasing:  # an erasure half done: rows locked, not committed
        erasing.execute(
            "SELECT 1 FROM agent AS a JOIN history AS h USING (app_id, agent_id)"
            " WHERE a.app_id = %s AND a.agent_id = 'racing' FOR UPDATE OF a, h",
            [APP_ID],
        )
        erasing.execute(
            "UPDATE history SET status = 'erased', contents = '[]', source = NULL"
            " WHERE agent_id = 'racing'"
        )
        contents = [{"role": "user", "content": f"{WORDS} late"}]
        thread, answers = in_thread(
            lambda: post(client, deliver(103, payload("racing", contents=contents))).json()
        )
        poll(lambda: waiting_on_a_lock(sql))
        erasing.commit()
    thread.join(timeout=30)

    assert answers == [{"status": "accepted"}]
    late = sql.value(
        "SELECT body FROM notification WHERE agent_id = 'racing' AND event_type = 103"
        " ORDER BY id DESC LIMIT 1"
    )
    assert "contents" not in late["payload"]
    assert statuses(sql) == {"racing": "erased"}


def test_an_erasure_waits_for_a_103_in_flight_and_then_deletes_its_transcript(
    client: TestClient, sql: Sql, database_url: str
) -> None:
    session(client, "racing")
    with psycopg.connect(sql.url) as writing:  # a 103 stored, its transaction not committed yet
        # As the write path does: the agent's row first, then what it writes about it.
        writing.execute(
            "SELECT 1 FROM agent WHERE app_id = %s AND agent_id = 'racing' FOR UPDATE", [APP_ID]
        )
        writing.execute(
            "INSERT INTO notification (app_id, notice_id, product_id, event_type, agent_id,"
            " outcome, body) VALUES (%s, 'in-flight', 17, 103, 'racing', 'accepted',"
            " %s::jsonb)",
            [APP_ID, json.dumps({"payload": {"contents": [{"role": "user", "content": WORDS}]}})],
        )

        async def erase() -> bool:
            engine = db.create_engine(database_url)
            try:
                return await erasure.erase_agent(
                    engine, app_id=APP_ID, agent_id="racing", who="test"
                )
            finally:
                await engine.dispose()

        thread, answers = in_thread(lambda: asyncio.run(erase()))
        poll(lambda: waiting_on_a_lock(sql))
        writing.commit()
    thread.join(timeout=30)

    assert answers == [True]
    assert (
        sql.value("SELECT count(*) FROM notification WHERE (body -> 'payload') ? 'contents'") == 0
    )
    assert statuses(sql) == {"racing": "erased"}
