"""Usage from the database against overlaps computed here, folded or not, in any arrival order."""

from __future__ import annotations

import random
from collections import defaultdict
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy.ext.asyncio import AsyncEngine

from service import concurrency, db, ingest, lifecycle, record, usage
from tests.factories import APP_ID, Sql, deliver, payload
from tests.integration.test_pcu import fold_all, ingest_all, run

S = 1_000_000
HOUR = 3600 * S
BASE_S = 1_751_400_000  # 2025-07-01T20:00:00Z, on an hour boundary
LABEL = "tier"


@dataclass(frozen=True)
class Session:
    """One agent as Agora reports it, and what its labels end as."""

    agent_id: str
    start_s: int
    stop_s: int | None  # None: still running
    failed: bool
    tier: str | None  # the label its start reports (None: no such label)
    later_tier: str | None = None  # set by a 104 after everything else (None: no 104)

    def deliveries(self) -> list[bytes]:
        labels = {} if self.tier is None else {LABEL: self.tier}
        out = [deliver(101, payload(self.agent_id, start_ts=self.start_s, labels=labels)).body]
        if self.stop_s is not None:
            status = "FAILED" if self.failed else "STOPPED"
            body = payload(self.agent_id, start_ts=self.start_s, stop_ts=self.stop_s)
            out.append(deliver(102, {**body, "status": status}).body)
        if self.later_tier is not None:
            late_ms = ((self.stop_s or self.start_s) + 5) * 1000
            body = payload(self.agent_id, labels={LABEL: self.later_tier})
            out.append(deliver(104, body, notify_ms=late_ms).body)
        return out

    @property
    def final_tier(self) -> str | None:
        return self.later_tier if self.later_tier is not None else self.tier


def expected(
    sessions: list[Session], start: int, end: int, step: int, *, grouped: bool, now: int
) -> list[tuple[int, list[tuple[str | None, int, int, int]]]]:
    """Per bucket, per group: exact µs of overlap, starts, FAILED stops (brute force)."""
    points = []
    for s in range(start, end, step):
        e = min(s + step, end)
        groups: dict[str | None, list[int]] = {}
        for session in sessions:
            a = session.start_s * S
            b = now if session.stop_s is None else session.stop_s * S
            figures = groups.setdefault(session.final_tier if grouped else None, [0, 0, 0])
            figures[0] += max(0, min(b, e) - max(a, s))
            figures[1] += s <= a < e
            figures[2] += session.failed and session.stop_s is not None and s <= b < e
        found = sorted(
            ((key, *f) for key, f in groups.items() if any(f)),
            key=lambda g: (g[0] is None, g[0] or ""),
        )
        if not grouped and not found:
            found = [(None, 0, 0, 0)]
        points.append((s, found))
    return points


async def read(
    engine: AsyncEngine, start: int, end: int, step: int, key: str | None
) -> list[tuple[int, list[tuple[str | None, int, int, int]]]]:
    async with concurrency.snapshot(engine) as conn:
        points = await usage.series(conn, app_id=APP_ID, start=start, end=end, step=step, key=key)
    return [(p.start, list(p.groups)) for p in points]


def mark(sql: Sql, hour_s: int) -> None:
    sql.execute(
        "INSERT INTO insight_change (app_id, kind, hour)"
        " VALUES (%(app)s, 'usage', to_timestamp(%(h)s))",
        app=APP_ID,
        h=hour_s,
    )


def reset(sql: Sql) -> None:
    sql.execute(
        "TRUNCATE agent, notification, agent_transition, history, history_job, pcu_minute,"
        " pcu_hour, pcu_alarm, pcu_change, insight_change, usage_hour, usage_count, usage_minute"
        " CASCADE"
    )


# Starts on a 10 s lattice over ~3 hours; lengths up to ~2.5 h, so intervals cross hours.
sessions = st.lists(
    st.tuples(
        st.integers(min_value=0, max_value=1000).map(lambda n: BASE_S + n * 10),
        st.one_of(st.none(), st.integers(0, 30), st.integers(0, 900)),
        st.booleans(),
        st.sampled_from([None, "gold", "silver"]),
        st.sampled_from([None, None, "gold", "bronze"]),
    ),
    max_size=10,
).map(
    lambda items: [
        Session(f"agent-{i}", start, None if n is None else start + n * 10, failed, tier, late)
        for i, (start, n, failed, tier, late) in enumerate(items)
    ]
)
windows = st.tuples(
    st.integers(min_value=-720, max_value=2000).map(lambda n: (BASE_S + n * 5) * S),
    st.sampled_from([0, 1 * S, 123_456]),  # off the hour: partial hours at every bucket edge
    st.integers(min_value=1, max_value=12).map(lambda n: n * 1800 * S),
    st.sampled_from([60, 1800, 3600, 5400, 86_400]),
    st.booleans(),
)


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(sessions=sessions, window=windows, seed=st.integers(0, 2**16))
def test_usage_equals_the_overlaps_folded_or_not_whatever_the_arrival_order(
    sql: Sql, sessions: list[Session], window: tuple[int, int, int, int, bool], seed: int
) -> None:
    reset(sql)
    bodies = [body for session in sessions for body in session.deliveries()]
    bodies += random.Random(seed).sample(bodies, k=len(bodies) // 3)  # NCS redundancy
    random.Random(seed).shuffle(bodies)
    start, jitter, length, step_s, grouped = window
    start += jitter
    end = start + length
    key = LABEL if grouped else None
    half = len(bodies) // 2

    async def work(engine: AsyncEngine) -> list[Any]:
        await ingest_all(engine, bodies[:half])
        await fold_all(engine)
        await ingest_all(engine, bodies[half:])
        answers = [await read(engine, start, end, step_s * S, key)]  # partly folded
        await fold_all(engine)
        return [*answers, await read(engine, start, end, step_s * S, key)]

    # Every window ends long before now: a running agent covers each bucket to its end.
    want = expected(sessions, start, end, step_s * S, grouped=grouped, now=end)
    for answer in run(sql.url, work):
        assert answer == want
    assert sql.count("insight_change") == 0


def test_the_rollup_equals_a_fold_from_scratch(sql: Sql) -> None:
    reset(sql)
    items = [
        Session("a", BASE_S + 10, BASE_S + 7300, False, "gold"),
        Session("b", BASE_S + 3590, BASE_S + 3610, True, None, "silver"),
        Session("c", BASE_S + 100, None, False, "gold"),
    ]
    bodies = [body for session in items for body in session.deliveries()]

    rollups = (
        "SELECT hour, labels, agent_us, sessions, failed FROM usage_hour ORDER BY 1, 2::text",
        "SELECT hour, sessions, failed FROM usage_count ORDER BY 1",
        "SELECT hour, labels, first, agent_us, level, sessions, failed FROM usage_minute"
        " ORDER BY 1, 2::text",
    )

    async def work(engine: AsyncEngine) -> tuple[list[Any], list[Any]]:
        await ingest_all(engine, bodies)
        await fold_all(engine)
        kept = [sql.rows(query) for query in rollups]
        sql.execute("DELETE FROM usage_hour")
        sql.execute("DELETE FROM usage_count")
        sql.execute("DELETE FROM usage_minute")
        sql.execute(
            "INSERT INTO insight_change (app_id, kind, hour)"
            " SELECT app_id, 'usage', h FROM agent,"
            " generate_series(date_trunc('hour', active_from),"
            " date_trunc('hour', coalesce(active_until, active_from)), interval '1 hour') AS h"
        )
        await fold_all(engine)
        return kept, [sql.rows(query) for query in rollups]

    kept, rebuilt = run(sql.url, work)
    assert kept == rebuilt
    by_hour = {(row["hour"].timestamp(), row["labels"].get(LABEL)): row for row in kept[0]}
    # a: 3590 s in the first hour, 3600 s in the second, 100 s in the third; c (running) is
    # only a session in the rollup; b is a FAILED stop in the second hour, under silver.
    assert by_hour[(BASE_S, "gold")]["agent_us"] == 3590 * S
    assert by_hour[(BASE_S, "gold")]["sessions"] == 2
    assert by_hour[(BASE_S + 3600, "gold")]["agent_us"] == 3600 * S
    assert by_hour[(BASE_S + 7200, "gold")]["agent_us"] == 100 * S
    assert by_hour[(BASE_S + 3600, "silver")]["failed"] == 1
    # Starts before each minute of the first hour: a in minute 0, c in minute 1, b in minute 59;
    # b's FAILED stop in minute 0 of the second hour.
    counts = {row["hour"].timestamp(): row for row in kept[1]}
    assert counts[BASE_S]["sessions"] == [0, 1] + [2] * 58 + [3]
    assert counts[BASE_S + 3600]["failed"] == [0] + [1] * 60
    assert counts[BASE_S + 3600]["sessions"] == [0] * 61


@pytest.mark.parametrize("offset", [37, 20 * 60 + 37])  # edges in an hour's first minute or not
def test_starts_and_failed_stops_beside_bucket_edges_inside_a_minute_count_once(
    sql: Sql, offset: int
) -> None:
    """Buckets from an odd second: starts and FAILED stops just before, at and just after each
    edge (inside the minute it cuts) fall in the right bucket, folded or not, with or without
    a label."""
    reset(sql)
    edge = BASE_S + 3600 + offset  # hourly buckets from `offset` s past an hour
    items = [
        Session("before", edge - 30, edge + 1, True, "gold"),
        Session("just-before", edge - 1, edge + 600, False, None),
        Session("at", edge, edge + 3600 - offset, True, "gold"),  # stops at a full hour
        Session("after", edge + 20, edge + 3600 - 1, True, "silver"),  # FAILED just before edge
        Session("next", edge + 3600, edge + 3600 + 22, True, None),  # FAILED in the edge's minute
    ]
    bodies = [body for session in items for body in session.deliveries()]
    start, end = edge - 3600, edge + 2 * 3600

    async def work(engine: AsyncEngine) -> list[Any]:
        await ingest_all(engine, bodies)
        answers = []
        for key in (None, LABEL):
            answers.append(await read(engine, start * S, end * S, HOUR, key))  # from the agents
        await fold_all(engine)
        for key in (None, LABEL):
            answers.append(await read(engine, start * S, end * S, HOUR, key))  # from the rollup
        return answers

    plain = expected(items, start * S, end * S, HOUR, grouped=False, now=end * S)
    grouped = expected(items, start * S, end * S, HOUR, grouped=True, now=end * S)
    assert run(sql.url, work) == [plain, grouped, plain, grouped]
    assert [point[1][0][2:] for point in plain] == [(2, 0), (2, 3), (1, 1)]  # sessions, failed


@pytest.mark.parametrize("offset", [37, 20 * 60, 20 * 60 + 37])  # first minute, on a minute, not
def test_agent_time_by_label_beside_bucket_edges_inside_a_minute(sql: Sql, offset: int) -> None:
    """Grouped by a label from an odd second, each bucket edge cuts a folded hour inside a
    minute: intervals starting, ending or empty at that minute's first instant, ending or held
    inside the part before the edge, held from the hour before, longer than a day or running,
    or in a label set whose minutes all come before or after the edge's, each count their exact
    overlap with the buckets on either side, folded or not."""
    reset(sql)
    edge = BASE_S + 3600 + offset  # hourly buckets from `offset` s past an hour
    minute = edge - offset % 60  # the first instant of the minute the edge cuts
    items = [
        Session("from-minute", minute, minute + 100, False, "gold"),
        Session("empty", minute, minute, True, "gold"),
        Session("from-last-hour", minute - 3000, minute + offset % 60 // 2, False, "silver"),
        Session("ends-at-minute", minute - 50, minute, True, "silver"),
        Session("inside", minute + 1, minute + 1 + offset % 60 // 2, False, None),
        Session("empty-inside", minute + 2, minute + 2, True, "silver"),
        Session("longer-than-a-day", minute - 2 * 86_400, minute + 20, False, "gold"),
        Session("starts-a-day", minute + 3, minute + 3 + 86_400 + 60, False, "silver"),
        Session("early", edge - offset + 60, edge - offset + 600, True, "bronze"),  # minutes 1-9
        Session("running", minute - 10, None, False, "silver"),
    ]
    bodies = [body for session in items for body in session.deliveries()]
    start, end = edge - 3600, edge + 2 * 3600

    async def work(engine: AsyncEngine) -> list[Any]:
        await ingest_all(engine, bodies)
        answers = [await read(engine, start * S, end * S, HOUR, LABEL)]  # from the agents
        await fold_all(engine)
        answers.append(await read(engine, start * S, end * S, HOUR, LABEL))  # folded
        assert sql.count("usage_minute") > 0
        return answers

    grouped = expected(items, start * S, end * S, HOUR, grouped=True, now=end * S)
    assert run(sql.url, work) == [grouped, grouped]


def test_a_mark_committed_after_the_folds_snapshot_survives_it(sql: Sql) -> None:
    """The fold deletes the marks its statement sees, not those committed meanwhile."""
    reset(sql)
    mark(sql, BASE_S)

    async def work(engine: AsyncEngine) -> int:
        url = engine.url.render_as_string(hide_password=False)
        async with (
            await db.connect(url, name="test") as late,
            await db.connect(url, name="t2") as conn,
        ):
            # A writer's transaction that marks an hour and commits while the fold runs: it
            # holds a row lock the fold's DELETE does not wait for (the row is not in its
            # snapshot), so committing it after the fold's snapshot leaves it in place.
            await late.execute(
                "INSERT INTO insight_change (app_id, kind, hour)"
                " VALUES (%s, 'usage', to_timestamp(%s))",
                [APP_ID, BASE_S + 3600],
            )
            taken = await usage.fold(conn, APP_ID)
            await late.commit()
        return taken

    assert run(sql.url, work) == 1
    assert sql.count("insight_change") == 1


def test_a_backlog_of_marks_is_folded_oldest_first_a_bounded_number_of_hours_at_a_time(
    sql: Sql,
) -> None:
    reset(sql)
    hours = usage.FOLD_HOURS + 2
    newest_s = BASE_S + (hours - 1) * 3600
    first = Session("first", BASE_S + 5, BASE_S + 65, True, "gold")
    last = Session("last", newest_s + 5, newest_s + 7, False, None)
    bodies = [body for session in (first, last) for body in session.deliveries()]
    end = (BASE_S + hours * 3600) * S

    async def work(engine: AsyncEngine) -> list[Any]:
        await ingest_all(engine, bodies)
        sql.execute(
            "INSERT INTO insight_change (app_id, kind, hour) SELECT %(app)s, 'usage',"
            " to_timestamp(%(s)s) + n * interval '1 hour' FROM generate_series(0, %(n)s) AS n",
            app=APP_ID,
            s=BASE_S,
            n=hours - 1,
        )
        url = engine.url.render_as_string(hide_password=False)
        steps = []
        async with await db.connect(url, name="fold") as conn:
            for _ in range(3):
                await usage.fold(conn, APP_ID)
                left = sql.rows("SELECT DISTINCT hour FROM insight_change ORDER BY 1")
                steps.append(([row["hour"].timestamp() for row in left], sql.count("usage_count")))
                steps.append(await read(engine, BASE_S * S, end, HOUR * 24, None))
        return steps

    want = expected([first, last], BASE_S * S, end, HOUR * 24, grouped=False, now=end)
    newest = [float(BASE_S + h * 3600) for h in range(usage.FOLD_HOURS, hours)]
    assert run(sql.url, work) == [(newest, 1), want, ([], 2), want, ([], 2), want]


def test_a_fold_skips_an_app_another_folder_holds(sql: Sql) -> None:
    reset(sql)
    mark(sql, BASE_S)

    async def work(engine: AsyncEngine) -> int:
        url = engine.url.render_as_string(hide_password=False)
        async with (
            await db.connect(url, name="a") as holder,
            await db.connect(url, name="b") as conn,
        ):
            await holder.execute("SELECT pg_advisory_xact_lock(%s)", [usage.lock_key(APP_ID)])
            taken = await usage.fold(conn, APP_ID)
            await holder.rollback()
        return taken

    assert run(sql.url, work) == 0
    assert sql.count("insight_change") == 1


def test_only_changes_of_what_usage_reads_are_marked(sql: Sql) -> None:
    reset(sql)
    start = BASE_S + 1800
    bodies = [
        deliver(101, payload("m", start_ts=start)).body,
        deliver(110, payload("m", errors=[])).body,  # no usage change: no mark
        deliver(
            102, {**payload("m", start_ts=start, stop_ts=start + 7200), "status": "FAILED"}
        ).body,
    ]
    run(sql.url, lambda engine: ingest_all(engine, bodies))
    hours = [
        row["h"]
        for row in sql.rows(
            "SELECT extract(epoch FROM hour)::bigint AS h FROM insight_change ORDER BY id"
        )
    ]
    # the start's hour (101); then every hour of the closed interval and the FAILED stop's.
    assert sorted(set(hours)) == [BASE_S, BASE_S + 3600, BASE_S + 7200]
    assert len(hours) == 4


def test_a_failure_reconciliation_observes_is_marked_and_counted_folded_or_not(sql: Sql) -> None:
    """Reconciliation writes through the same plan: its stop moves usage like a 102."""
    reset(sql)
    join = deliver(101, payload("rec", start_ts=BASE_S + 600, labels={LABEL: "gold"})).body
    stop = datetime.fromtimestamp(BASE_S + 4200, UTC)
    failed = record.Observation(
        kind=lifecycle.Kind.OBSERVED_FAILED,
        at=stop,
        stopped_at=stop,
        stop_status="FAILED",
    )
    start, end = BASE_S * S, (BASE_S + 7200) * S

    async def work(engine: AsyncEngine) -> list[Any]:
        await ingest_all(engine, [join])
        await fold_all(engine)
        url = engine.url.render_as_string(hide_password=False)
        async with await db.connect(url) as conn:
            await ingest.observe_agents(
                conn, APP_ID, [("rec", failed)], source="reconcile", received_at=stop
            )
            await conn.commit()
        answers = [sql.count("insight_change"), await read(engine, start, end, HOUR, LABEL)]
        await fold_all(engine)
        return [*answers, await read(engine, start, end, HOUR, LABEL)]

    marks, unfolded, folded = run(sql.url, work)
    assert marks == 2  # both hours of the closed interval (the FAILED stop is in the second)
    want = [
        (BASE_S * S, [("gold", 3000 * S, 1, 0)]),
        ((BASE_S + 3600) * S, [("gold", 600 * S, 0, 1)]),
    ]
    assert unfolded == folded == want


@settings(max_examples=200, deadline=None)
@given(
    intervals=st.lists(
        st.tuples(
            st.sampled_from(["a", "b", None]),
            st.integers(0, 40),
            st.one_of(st.none(), st.integers(0, 40)),
        ),
        max_size=8,
    ),
    start=st.integers(0, 40),
    length=st.integers(1, 40),
    step=st.integers(1, 15),
    now=st.integers(0, 50),
)
def test_intervals_read_from_the_agents_add_their_overlap_with_each_bucket(
    intervals: list[tuple[str | None, int, int | None]],
    start: int,
    length: int,
    step: int,
    now: int,
) -> None:
    """Intervals before, across and after the buckets, open ones up to `now` (no database)."""
    rows = [(g, a, None if n is None else a + n) for g, a, n in intervals]
    grid = [(s, min(s + step, start + length)) for s in range(start, start + length, step)]
    totals: defaultdict[tuple[int, str | None], list[int]] = defaultdict(lambda: [0, 0, 0])
    usage._add_intervals(totals, grid, rows, now=now)
    want: dict[tuple[int, str | None], int] = defaultdict(int)
    for pos, (s, e) in enumerate(grid):
        for group, a, b in rows:
            want[(pos, group)] += max(0, min(max(a, now) if b is None else b, e) - max(a, s))
    assert {k: v[0] for k, v in totals.items() if v[0]} == {k: v for k, v in want.items() if v}
