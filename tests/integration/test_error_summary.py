"""The error summary (CONTRACT §6.1) against counts made here from the errors sent, through the
webhook write path, before and after the folder, with errors arriving out of order."""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine

from service import batcher, error_hours, events, ingest
from tests.factories import APP_ID, Sql, deliver, payload
from tests.integration.test_pcu import fold_all, run

BASE = datetime(2025, 7, 1, tzinfo=UTC)  # a UTC midnight
HOUR = timedelta(hours=1)
# Errors an agent may have: the same (module, code) again and again, absent module or code.
KINDS: list[tuple[str | None, int | None]] = [
    ("llm", 500),
    ("llm", 429),
    ("tts", 500),
    (None, 7),
    ("asr", None),
]


@dataclass(frozen=True)
class Error:
    agent_id: str
    at: datetime | None  # None: sent with no usable time
    module: str | None
    code: int | None


def random_errors(rng: random.Random, count: int, *, span: timedelta) -> list[Error]:
    """Few agents with many errors each, spread over `span` (most agents have the same error in
    many hours, some hours apart), a few untimed."""
    out = []
    for _ in range(count):
        agent = f"agent-{rng.randrange(6)}"
        module, code = KINDS[rng.randrange(len(KINDS))]
        at = None
        if rng.random() > 0.03:
            ms = rng.randrange(int(span.total_seconds() * 1000))
            at = BASE + timedelta(milliseconds=ms)
        out.append(Error(agent, at, module, code))
    return out


async def send(engine: AsyncEngine, errors: Sequence[Error]) -> None:
    """Each error as its own 110, through the webhook write path (group commit)."""
    group = batcher.Batcher(engine.url.render_as_string(hide_password=False), writers=1)
    await group.start()
    try:
        for e in errors:
            item: dict[str, Any] = {"message": "failed"}
            if e.module is not None:
                item["module"] = e.module
            if e.code is not None:
                item["code"] = e.code
            notify_ms = 1 if e.at is None else int(e.at.timestamp() * 1000)  # 1970: unusable
            note = events.parse(
                deliver(110, payload(e.agent_id, errors=[item]), notify_ms=notify_ms).body
            )
            delivery = ingest.Delivery(app_id=APP_ID, note=note, received_at=datetime.now(UTC))
            await group.submit(delivery)
    finally:
        await group.close()


def rfc(at: datetime) -> str:
    return at.isoformat().replace("+00:00", "Z")


def expected(errors: Sequence[Error], start: datetime, end: datetime) -> list[dict[str, Any]]:
    groups: dict[tuple[Any, Any], list[Error]] = {}
    for e in errors:
        if e.at is not None and start <= e.at < end:
            groups.setdefault((e.module, e.code), []).append(e)
    rows = [
        {
            "module": module,
            "code": code,
            "count": len(found),
            "agents": len({e.agent_id for e in found}),
            "last_at": rfc(max(e.at for e in found if e.at is not None)),
        }
        for (module, code), found in groups.items()
    ]

    def last(value: Any) -> tuple[bool, Any]:
        return (value is None, value if value is not None else 0)

    return sorted(rows, key=lambda r: (-r["count"], last(r["module"]), last(r["code"])))


async def read(engine: AsyncEngine, start: datetime, end: datetime) -> list[dict[str, Any]]:
    async with engine.connect() as conn:
        found = await error_hours.summary(conn, app_id=APP_ID, start=start, end=end)
    assert found["truncated"] is False
    items: list[dict[str, Any]] = found["items"]
    return items


# Whole hours, odd edges, a range inside one hour, ranges reaching past the errors.
WINDOWS = [
    (BASE, BASE + timedelta(days=3)),
    (BASE - timedelta(days=1), BASE + timedelta(days=4)),
    (BASE + 5 * HOUR, BASE + timedelta(hours=30)),
    (BASE + timedelta(minutes=17, seconds=3), BASE + timedelta(days=2, minutes=1)),
    (BASE + timedelta(hours=7, minutes=59), BASE + timedelta(hours=9, seconds=1)),
    (BASE + timedelta(hours=40, minutes=10), BASE + timedelta(hours=40, minutes=50)),
    (BASE + timedelta(hours=11), BASE + timedelta(hours=12)),
    (BASE + timedelta(hours=23, microseconds=1), BASE + timedelta(hours=71)),
]


async def check(engine: AsyncEngine, errors: Sequence[Error]) -> None:
    for start, end in WINDOWS:
        assert await read(engine, start, end) == expected(errors, start, end), (start, end)


def test_figures_are_exact_folded_or_not_with_late_errors(database_url: str, sql: Sql) -> None:
    rng = random.Random(5)
    first = random_errors(rng, 300, span=timedelta(days=3))
    late = random_errors(rng, 120, span=timedelta(days=3))

    async def work(engine: AsyncEngine) -> None:
        await send(engine, first)
        assert sql.value("SELECT count(*) FROM insight_change WHERE kind = 'errors'") > 0
        await check(engine, first)  # nothing folded: every hour from the errors
        await fold_all(engine)
        assert sql.value("SELECT count(*) FROM insight_change WHERE kind = 'errors'") == 0
        assert sql.value("SELECT count(*) FROM error_hour") > 0
        await check(engine, first)  # whole hours from the rollup
        # Errors arriving late, into hours already folded and between an agent's errors.
        await send(engine, late)
        await check(engine, [*first, *late])
        await fold_all(engine)
        await check(engine, [*first, *late])

    run(sql.url, work)


def test_an_aligned_read_takes_whole_hours_from_the_rollup(database_url: str, sql: Sql) -> None:
    errors = [Error("a1", BASE + timedelta(minutes=m), "llm", 500) for m in (5, 70, 130)]

    async def work(engine: AsyncEngine) -> None:
        await send(engine, errors)
        await fold_all(engine)
        assert await read(engine, BASE, BASE + 3 * HOUR) == expected(errors, BASE, BASE + 3 * HOUR)
        sql.execute("UPDATE error_hour SET errors = 1000 WHERE hour = %(at)s", at=BASE + HOUR)
        (row,) = await read(engine, BASE, BASE + 3 * HOUR)
        assert (row["count"], row["agents"]) == (1002, 1)

    run(sql.url, work)


def test_an_error_between_folded_hours_marks_its_hour_and_the_agents_next_one(
    database_url: str, sql: Sql
) -> None:
    """The agent's next hour with the same error is counted from a new previous hour, so it is
    marked too; another agent's hours, another error's and earlier ones are not."""
    first = [
        Error("a1", BASE + timedelta(minutes=10), "llm", 500),
        Error("a1", BASE + timedelta(hours=5, minutes=10), "llm", 500),
        Error("a1", BASE + timedelta(hours=7, minutes=10), "llm", 500),
        Error("a1", BASE + timedelta(hours=6, minutes=10), "tts", 500),
        Error("a2", BASE + timedelta(hours=5, minutes=20), "llm", 500),
    ]
    late = [Error("a1", BASE + timedelta(hours=2, minutes=30), "llm", 500)]

    async def work(engine: AsyncEngine) -> None:
        await send(engine, first)
        await fold_all(engine)
        await send(engine, late)
        marked = sql.rows(
            "SELECT DISTINCT hour FROM insight_change WHERE kind = 'errors' ORDER BY hour"
        )
        assert [row["hour"] for row in marked] == [BASE + 2 * HOUR, BASE + 5 * HOUR]
        for start, end in [(BASE, BASE + 8 * HOUR), (BASE + 3 * HOUR, BASE + 8 * HOUR)]:
            assert await read(engine, start, end) == expected([*first, *late], start, end)
        await fold_all(engine)
        gaps = sql.rows(
            "SELECT hour, gap_hours, gap_agents FROM error_hour WHERE module = 'llm' ORDER BY hour"
        )
        assert [(r["hour"], r["gap_hours"], r["gap_agents"]) for r in gaps] == [
            (BASE, [], []),
            (BASE + 2 * HOUR, [2], [1]),
            (BASE + 5 * HOUR, [3], [1]),  # a1 three hours back; a2 had none before
            (BASE + 7 * HOUR, [2], [1]),
        ]
        for start, end in WINDOWS:
            assert await read(engine, start, end) == expected([*first, *late], start, end)

    run(sql.url, work)


def test_whole_hours_of_a_range() -> None:
    at = BASE + timedelta(hours=3)
    assert error_hours.whole_hours(at, at + 2 * HOUR) == (at, at + 2 * HOUR)
    odd = at + timedelta(seconds=1)
    assert error_hours.whole_hours(odd, odd + 2 * HOUR) == (at + HOUR, at + 2 * HOUR)
    assert error_hours.whole_hours(odd, odd + HOUR) == (odd + HOUR, odd + HOUR)  # none
    # An offset other than UTC: the hours are UTC's.
    india = timezone(timedelta(hours=5, minutes=30))
    start = datetime(2025, 7, 1, 10, 0, tzinfo=india)  # 04:30 UTC
    assert error_hours.whole_hours(start, start + 3 * HOUR) == (
        datetime(2025, 7, 1, 5, tzinfo=UTC),
        datetime(2025, 7, 1, 7, tzinfo=UTC),
    )
