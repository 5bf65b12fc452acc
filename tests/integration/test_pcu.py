"""PCU from the database against a brute-force oracle, with notifications in any order."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from service import batcher, concurrency, config, db, events, folder, ingest, pcu, rollup
from tests import pcu_oracle
from tests.factories import APP_ID, Sql, deliver, environment, payload

T = TypeVar("T")
S = pcu.US_PER_S
BASE_S = 1_751_400_000  # on a minute boundary


@dataclass(frozen=True)
class Session:
    """One agent as Agora reports it: a join, a leave, or both."""

    agent_id: str
    start_s: int
    stop_s: int | None  # None: still running
    joined: bool  # a 101 is sent (else only the 102, whose start_ts implies the join)

    def deliveries(self) -> list[bytes]:
        out = []
        if self.joined or self.stop_s is None:
            out.append(deliver(101, payload(self.agent_id, start_ts=self.start_s)).body)
        if self.stop_s is not None:
            body = payload(self.agent_id, start_ts=self.start_s, stop_ts=self.stop_s)
            out.append(deliver(102, {**body, "status": "STOPPED"}).body)
        return out

    @property
    def interval(self) -> tuple[int, int | None]:
        return self.start_s * S, None if self.stop_s is None else self.stop_s * S


def run(database_url: str, work: Callable[[AsyncEngine], Awaitable[T]]) -> T:
    async def main() -> T:
        engine = db.create_engine(database_url, pool_size=2, max_overflow=0)
        try:
            return await work(engine)
        finally:
            await engine.dispose()

    return asyncio.run(main())


async def ingest_all(engine: AsyncEngine, bodies: list[bytes]) -> None:
    """Through the webhook's write path (group commit), one delivery after the other."""
    group = batcher.Batcher(engine.url.render_as_string(hide_password=False), writers=1)
    await group.start()
    try:
        for body in bodies:
            note = events.parse(body)
            delivery = ingest.Delivery(app_id=APP_ID, note=note, received_at=datetime.now(UTC))
            await group.submit(delivery)
    finally:
        await group.close()


async def fold_all(engine: AsyncEngine) -> None:
    """What the folders would do: every recorded change folded into the rollup."""
    url = engine.url.render_as_string(hide_password=False)
    await folder.Folder(config.load(environment(url))).fold_all()


def reset(sql: Sql) -> None:
    sql.execute(
        "TRUNCATE agent, notification, agent_transition, history, history_job,"
        " pcu_minute, pcu_hour, pcu_alarm, pcu_change CASCADE"
    )


async def rollup_rows(engine: AsyncEngine) -> tuple[list[Any], list[Any]]:
    """The rollup as kept by ingest, and as rebuilt from scratch (rolled back)."""
    queries = [
        text("SELECT * FROM pcu_minute ORDER BY app_id, minute"),
        text("SELECT * FROM pcu_hour ORDER BY app_id, hour"),
    ]
    async with engine.connect() as conn:
        kept = [list((await conn.execute(query)).all()) for query in queries]
        await conn.rollback()
        await rollup.rebuild(conn)
        rebuilt = [list((await conn.execute(query)).all()) for query in queries]
        await conn.rollback()
    return kept, rebuilt


# Starts and lengths on a 10 s lattice over ~3 hours, so edges share minutes and hours and land
# on bucket, minute and hour boundaries.
starts = st.integers(min_value=0, max_value=1000).map(lambda n: BASE_S + n * 10)
sessions = st.lists(
    st.tuples(
        starts,
        st.one_of(st.none(), st.integers(0, 30), st.integers(0, 600)),
        st.booleans(),
    ),
    max_size=12,
).map(
    lambda items: [
        Session(f"agent-{i}", start, None if length is None else start + length * 10, joined)
        for i, (start, length, joined) in enumerate(items)
    ]
)
windows = st.tuples(
    st.integers(min_value=-12, max_value=2100).map(lambda n: (BASE_S + n * 5) * S),
    st.sampled_from([0, 1, 123_456]),  # µs off the lattice: partial minutes everywhere
    st.one_of(
        st.integers(min_value=1, max_value=100).map(lambda n: n * 5 * S),
        st.integers(min_value=1, max_value=16).map(lambda n: n * 900 * S),
    ),
    st.sampled_from([5, 45, 60, 90, 420, 1800, 3600, 5400]),
)


@settings(
    max_examples=30,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(sessions=sessions, window=windows, seed=st.integers(0, 2**16))
def test_series_and_peak_equal_brute_force_whatever_the_arrival_order(
    database_url: str,
    sql: Sql,
    sessions: list[Session],
    window: tuple[int, int, int, int],
    seed: int,
) -> None:
    reset(sql)
    bodies = [body for session in sessions for body in session.deliveries()]
    bodies += random.Random(seed).sample(bodies, k=len(bodies) // 3)  # NCS redundancy
    random.Random(seed).shuffle(bodies)
    start, jitter, length, step_s = window
    start += jitter
    end = start + length
    intervals = [session.interval for session in sessions]

    async def read(engine: AsyncEngine) -> tuple[list[pcu.Point], concurrency.Peak]:
        async with concurrency.snapshot(engine) as conn:
            points = await concurrency.series(
                conn, app_id=APP_ID, start=start, end=end, step=step_s * S
            )
            return points, await concurrency.peak(conn, app_id=APP_ID, start=start, end=end)

    async def work(engine: AsyncEngine) -> Any:
        await ingest_all(engine, bodies)
        unfolded = await read(engine)  # every change still recorded, none folded
        await fold_all(engine)
        return unfolded, await read(engine), await rollup_rows(engine)

    unfolded, folded, (kept, rebuilt) = run(sql.url, work)
    expected = pcu_oracle.series(intervals, start, end, step_s * S)
    for points, high in (unfolded, folded):
        assert [(p.start, p.max, p.area) for p in points] == expected
        assert (high.value, high.at) == pcu_oracle.peak(intervals, start, end)
    assert kept == rebuilt
    assert sql.count("pcu_change") == 0


def test_a_late_stop_changes_the_series_the_next_time_it_is_asked(sql: Sql) -> None:
    running = Session("late", BASE_S + 30, BASE_S + 90, joined=True)
    join, leave = running.deliveries()

    async def work(engine: AsyncEngine) -> tuple[list[int], list[int]]:
        async def maxima() -> list[int]:
            async with engine.connect() as conn:
                points = await concurrency.series(
                    conn, app_id=APP_ID, start=BASE_S * S, end=(BASE_S + 180) * S, step=60 * S
                )
            return [p.max for p in points]

        await ingest_all(engine, [join])
        before = await maxima()
        await ingest_all(engine, [leave])
        return before, await maxima()

    before, after = run(sql.url, work)
    assert before == [1, 1, 1]
    assert after == [1, 1, 0]


def test_a_peak_shorter_than_a_second_is_not_missed(sql: Sql) -> None:
    """Two agents overlapping for 1 ms inside an hour bucket: the hour's max is 2."""
    base_ms = BASE_S * 1000
    bodies = []
    for agent_id, start_ms, stop_ms in (
        ("a", base_ms + 1_000, base_ms + 2_000),
        ("b", base_ms + 1_999, base_ms + 3_000),
    ):
        bodies.append(
            deliver(
                102,
                payload(agent_id, start_ts=start_ms, stop_ts=stop_ms, status="STOPPED"),
            ).body
        )

    async def work(engine: AsyncEngine) -> list[pcu.Point]:
        await ingest_all(engine, bodies)
        async with engine.connect() as conn:
            return await concurrency.series(
                conn, app_id=APP_ID, start=BASE_S * S, end=(BASE_S + 3600) * S, step=3600 * S
            )

    [point] = run(sql.url, work)
    assert point.max == 2
    assert point.area == (1_000 + 1_001) * 1000  # 1 s and 1.001 s of agents, in level·µs
