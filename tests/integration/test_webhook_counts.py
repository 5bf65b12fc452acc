"""Webhook counts: tallied in memory, added up in `webhook_count` across processes, never in the
webhook's way."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import psycopg
from starlette.testclient import TestClient

from service import config, db, webhook_counts
from service.app import create_app
from tests.factories import APP_ID, Sql, deliver, payload, poll, post

NOW = datetime(2026, 11, 28, 10, 30, 15, tzinfo=UTC)
MINUTE = NOW.replace(second=0)


def stored(sql: Sql) -> dict[tuple[str, str, str], int]:
    rows = sql.rows(
        "SELECT app_id, outcome, reason, sum(count) AS n FROM webhook_count GROUP BY 1, 2, 3"
    )
    return {(r["app_id"], r["outcome"], r["reason"]): int(r["n"]) for r in rows}


def test_a_tally_keeps_invented_app_ids_to_a_bounded_few() -> None:
    tally = webhook_counts.Tally(known=[APP_ID])
    for i in range(webhook_counts.MAX_UNKNOWN_APPS + 30):
        tally.add(f"made-up-{i}", outcome="rejected", reason="unknown_app", at=NOW)
    tally.add("not an id/../", outcome="rejected", reason="unknown_app", at=NOW)
    tally.add(APP_ID, outcome="accepted", reason="", at=NOW)
    taken = tally.take()
    named = {key[0] for key in taken}
    assert len(named - {"", APP_ID}) == webhook_counts.MAX_UNKNOWN_APPS
    assert taken[("", MINUTE, "rejected", "unknown_app")] == 31
    assert taken[(APP_ID, MINUTE, "accepted", "")] == 1
    assert sum(taken.values()) == webhook_counts.MAX_UNKNOWN_APPS + 32
    assert not tally.take()


def test_processes_flushing_the_same_minutes_add_up(database_url: str, sql: Sql) -> None:
    tallies = [webhook_counts.Tally(known=[APP_ID]) for _ in range(4)]
    for n, tally in enumerate(tallies):
        for second in range(n + 1):
            at = NOW + timedelta(seconds=second)
            tally.add(APP_ID, outcome="duplicate", reason="", at=at)
            tally.add(APP_ID, outcome="rejected", reason="invalid_signature", at=at)

    async def flush_all() -> None:
        engine = db.create_engine(database_url)
        try:

            async def one(tally: webhook_counts.Tally) -> None:
                async with engine.begin() as conn:
                    await webhook_counts.flush(conn, tally.take())

            await asyncio.gather(*(one(t) for t in tallies))
        finally:
            await engine.dispose()

    asyncio.run(flush_all())
    assert stored(sql) == {
        (APP_ID, "duplicate", ""): 10,
        (APP_ID, "rejected", "invalid_signature"): 10,
    }


def test_a_failed_flush_keeps_its_counts_for_the_next(database_url: str, sql: Sql) -> None:
    tally, now = webhook_counts.Tally(known=[APP_ID]), datetime.now(UTC)
    tally.add(APP_ID, outcome="accepted", reason="", at=now)
    tally.add(APP_ID, outcome="accepted", reason="", at=now - timedelta(days=30))  # let go

    async def flush_twice() -> None:
        unreachable = db.create_engine("postgresql+psycopg://postgres@127.0.0.1:9/none")
        engine = db.create_engine(database_url)
        try:
            async with webhook_counts.flushing(tally, unreachable, interval_s=60):
                pass  # the flush at the end fails
            tally.add(APP_ID, outcome="accepted", reason="", at=now)
            async with webhook_counts.flushing(tally, engine, interval_s=60):
                pass
        finally:
            await unreachable.dispose()
            await engine.dispose()

    asyncio.run(flush_twice())
    assert stored(sql) == {(APP_ID, "accepted", ""): 2}


def test_counts_older_than_a_week_are_pruned(database_url: str, sql: Sql) -> None:
    tally = webhook_counts.Tally(known=[APP_ID])
    now = datetime.now(UTC)
    for days in (0, 7, 9):
        tally.add(APP_ID, outcome="accepted", reason="", at=now - timedelta(days=days))

    async def run() -> int:
        engine = db.create_engine(database_url)
        try:
            async with engine.begin() as conn:
                await webhook_counts.flush(conn, tally.take())
                return await webhook_counts.prune(conn, now=now)
        finally:
            await engine.dispose()

    assert asyncio.run(run()) == 1
    assert stored(sql) == {(APP_ID, "accepted", ""): 2}


def test_webhooks_are_answered_while_the_counts_table_is_locked(
    make_settings: Callable[..., config.Settings], sql: Sql
) -> None:
    settings = make_settings(WEBHOOK_COUNTS_FLUSH_S="0.05")
    with psycopg.connect(sql.url) as blocker, TestClient(create_app(settings)) as client:
        blocker.execute("LOCK TABLE webhook_count IN ACCESS EXCLUSIVE MODE")
        started = time.monotonic()
        for i in range(20):
            assert post(client, deliver(101, payload(f"a{i}"))).json() == {"status": "accepted"}
        # The flusher waits on the lock meanwhile; the webhooks do not.
        assert time.monotonic() - started < 5
        blocker.rollback()
        poll(lambda: stored(sql) == {(APP_ID, "accepted", ""): 20}, timeout=10)
