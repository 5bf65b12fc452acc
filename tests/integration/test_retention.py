"""Retention: old raw notifications are pruned in batches; everything derived from them stays."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

from starlette.testclient import TestClient

from service import db, retention
from tests.factories import Sql, deliver, payload, post

NOW = datetime(2026, 11, 21, 12, 0, tzinfo=UTC)
START = 1_751_400_000


def prune(
    database_url: str,
    *,
    retention_days: int,
    batch_size: int = retention.BATCH_SIZE,
    stop: asyncio.Event | None = None,
) -> int:
    async def run() -> int:
        engine = db.create_engine(database_url)
        try:
            return await retention.prune(
                engine, retention_days=retention_days, now=NOW, batch_size=batch_size, stop=stop
            )
        finally:
            await engine.dispose()

    return asyncio.run(run())


def add_notifications(sql: Sql, *, count: int, received_at: datetime, prefix: str) -> None:
    sql.execute(
        "INSERT INTO notification (app_id, notice_id, product_id, event_type, outcome, body,"
        " received_at) SELECT 'app-one', %(prefix)s || g, 17, 101, 'accepted', '{}'::jsonb,"
        " %(at)s FROM generate_series(1, %(count)s) AS g",
        prefix=prefix,
        at=received_at,
        count=count,
    )


def deliver_session(client: TestClient, agent_id: str) -> None:
    for event_type, fields in [
        (101, {"start_ts": START}),
        (110, {"errors": [{"module": "llm", "code": 1, "message": "m"}]}),
        (111, {"metrics": [{"turn_id": 1, "asr_ttlw": 1}]}),
        (102, {"start_ts": START, "stop_ts": START + 60, "status": "STOPPED"}),
        (103, {"stop_ts": START + 60, "contents": [{"role": "user", "content": "hi"}]}),
    ]:
        response = post(client, deliver(event_type, payload(agent_id, **fields)))
        assert response.json() == {"status": "accepted"}


def derived_counts(sql: Sql) -> dict[str, int]:
    names = ("agent", "agent_transition", "agent_error", "agent_metric", "history", "history_job")
    return {name: sql.count(name) for name in names}


def test_old_notifications_are_pruned_and_agents_transitions_and_histories_stay(
    client: TestClient, sql: Sql, database_url: str
) -> None:
    deliver_session(client, "old-agent")
    deliver_session(client, "new-agent")
    sql.execute(
        "UPDATE notification SET received_at = %(at)s WHERE agent_id = 'old-agent'",
        at=NOW - timedelta(days=31),
    )
    sql.execute(
        "UPDATE notification SET received_at = %(at)s WHERE agent_id = 'new-agent'",
        at=NOW - timedelta(days=1),
    )
    before = derived_counts(sql)

    assert prune(database_url, retention_days=30) == 5

    assert sql.rows("SELECT DISTINCT agent_id FROM notification") == [{"agent_id": "new-agent"}]
    assert derived_counts(sql) == before
    assert sql.rows("SELECT agent_id, state FROM agent ORDER BY agent_id") == [
        {"agent_id": "new-agent", "state": "STOPPED"},
        {"agent_id": "old-agent", "state": "STOPPED"},
    ]
    assert sql.value("SELECT status FROM history WHERE agent_id = 'old-agent'") == "complete"


def test_the_cut_off_is_exactly_the_retention_age(sql: Sql, database_url: str) -> None:
    add_notifications(sql, count=2, received_at=NOW - timedelta(days=7, seconds=1), prefix="over-")
    add_notifications(sql, count=3, received_at=NOW - timedelta(days=7), prefix="at-")
    add_notifications(sql, count=1, received_at=NOW - timedelta(days=6), prefix="under-")

    assert prune(database_url, retention_days=7) == 2

    assert sql.value("SELECT count(*) FROM notification WHERE notice_id LIKE 'over-%%'") == 0
    assert sql.count("notification") == 4


def test_a_backlog_larger_than_a_batch_is_pruned_completely(sql: Sql, database_url: str) -> None:
    add_notifications(sql, count=25, received_at=NOW - timedelta(days=90), prefix="old-")
    add_notifications(sql, count=3, received_at=NOW - timedelta(days=2), prefix="new-")

    assert prune(database_url, retention_days=30, batch_size=10) == 25

    assert sql.count("notification") == 3


def test_zero_days_keeps_every_notification(sql: Sql, database_url: str) -> None:
    add_notifications(sql, count=4, received_at=NOW - timedelta(days=3650), prefix="ancient-")

    assert prune(database_url, retention_days=0) == 0

    assert sql.count("notification") == 4


def test_a_stopping_worker_prunes_nothing_more(sql: Sql, database_url: str) -> None:
    add_notifications(sql, count=4, received_at=NOW - timedelta(days=90), prefix="old-")
    stop = asyncio.Event()
    stop.set()

    assert prune(database_url, retention_days=30, stop=stop) == 0

    assert sql.count("notification") == 4


def test_concurrent_pruners_delete_each_row_once(sql: Sql, database_url: str) -> None:
    add_notifications(sql, count=300, received_at=NOW - timedelta(days=90), prefix="old-")

    async def both() -> list[int]:
        engine = db.create_engine(database_url)
        try:
            runs = [
                retention.prune(engine, retention_days=30, now=NOW, batch_size=20) for _ in range(2)
            ]
            return list(await asyncio.gather(*runs))
        finally:
            await engine.dispose()

    assert sum(asyncio.run(both())) == 300
    assert sql.count("notification") == 0
