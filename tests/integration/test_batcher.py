"""Group commit: deliveries received together share a transaction; a failure stays with its own
notification; a group nobody waits for any more is not committed."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import TypeVar

import pytest
from prometheus_client import REGISTRY

from service import batcher, events, ingest
from service.errors import Unavailable
from tests.factories import APP_ID, Sql, deliver, payload

T = TypeVar("T")

REFUSE = """
CREATE FUNCTION refuse_boom() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.message = 'boom' THEN RAISE EXCEPTION 'refused for the test'; END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER refuse_boom BEFORE INSERT ON agent_error
    FOR EACH ROW EXECUTE FUNCTION refuse_boom();
CREATE FUNCTION slow_store() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.notice_id LIKE 'slow-%%' THEN PERFORM pg_sleep(1); END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER slow_store BEFORE INSERT ON notification
    FOR EACH ROW EXECUTE FUNCTION slow_store();
"""


def delivery(
    event_type: int, body: dict[str, object], notice_id: str | None = None
) -> ingest.Delivery:
    note = events.parse(deliver(event_type, body, notice_id=notice_id).body)
    return ingest.Delivery(app_id=APP_ID, note=note, received_at=datetime.now(UTC))


def with_batcher(url: str, work: Callable[[batcher.Batcher], Awaitable[T]]) -> T:
    async def main() -> T:
        group = batcher.Batcher(url, writers=1)
        await group.start()
        try:
            return await work(group)
        finally:
            await group.close()

    return asyncio.run(main())


def groups() -> tuple[float, float]:
    """(groups committed, notifications in them) in this process so far."""
    count = REGISTRY.get_sample_value("ledger_ingest_group_size_count") or 0.0
    total = REGISTRY.get_sample_value("ledger_ingest_group_size_sum") or 0.0
    return count, total


def test_deliveries_received_together_commit_together_and_a_failure_costs_only_itself(
    sql: Sql, database_url: str
) -> None:
    sql.execute(REFUSE)
    batch = [delivery(101, payload(f"a{i}", start_ts=1751400000 + i)) for i in range(20)]
    boom = delivery(110, payload("a3", errors=[{"module": "tts", "message": "boom"}]))
    fine = delivery(110, payload("a4", errors=[{"module": "tts", "message": "fine"}]))
    before = groups()

    async def work(group: batcher.Batcher) -> list[ingest.Outcome]:
        return await asyncio.gather(*(group.submit(d) for d in [*batch, boom, fine]))

    outcomes = with_batcher(database_url, work)
    assert [o.status for o in outcomes] == ["accepted"] * 20 + ["unapplied", "accepted"]
    after = groups()
    # The first group failed on the refused row and was redone one by one: every other
    # delivery was still accepted, the refused one is kept unapplied with why.
    assert after[1] - before[1] >= len(batch) + 1
    assert sql.value("SELECT count(*) FROM agent WHERE state = 'RUNNING'") == 20
    assert sql.rows("SELECT message FROM agent_error") == [{"message": "fine"}]
    assert sql.rows(
        "SELECT outcome, problem LIKE 'applying failed: %%' AS why FROM notification"
        " WHERE notice_id = %(n)s",
        n=boom.note.notice_id,
    ) == [{"outcome": "unapplied", "why": True}]


def test_a_group_nobody_waits_for_any_more_is_rolled_back(sql: Sql, database_url: str) -> None:
    sql.execute(REFUSE)
    slow = delivery(101, payload("s1", start_ts=1751400000), notice_id="slow-1")

    async def work(group: batcher.Batcher) -> None:
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(group.submit(slow), timeout=0.3)
        # The writer reads and decides (the store sleeps a second), sees no one waiting any
        # more, and rolls back instead of writing; the next group is committed as usual.
        await group.submit(delivery(101, payload("after", start_ts=1751400000)))

    with_batcher(database_url, work)
    assert (
        sql.rows(
            "SELECT notice_id FROM notification WHERE notice_id = %(n)s", n=slow.note.notice_id
        )
        == []
    )
    assert sql.rows("SELECT agent_id FROM agent") == [{"agent_id": "after"}]


def test_a_database_out_of_reach_is_unavailable_for_the_group() -> None:
    async def work(group: batcher.Batcher) -> None:
        with pytest.raises(Unavailable):
            await group.submit(delivery(101, payload("x", start_ts=1751400000)))

    with_batcher("postgresql://nobody@127.0.0.1:9/none", work)
