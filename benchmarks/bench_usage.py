"""Usage read latency on a month of data: 1,000,000 sessions over 30 days for one app.

Migrates a fresh database (embedded PostgreSQL, or BENCH_DATABASE_URL's server), generates the
sessions in SQL (`generate_series`: starts spread over 30 days, mean ~3 min, 2 % up to 3 h, a
few hundred still running, 5 % FAILED, labels `tier` (3 values, 10 % absent) and `region`
(5 values)) plus 200,000 of another app, rebuilds the PCU rollup (series without a label take
agent time from it), marks every hour and folds them (the backfill), checks
30-day series against a brute-force SQL sum over the agents, starts `convoai-ledger serve` and
measures GET /v1/apps/{app}/usage over real HTTP: 30 days hourly and daily, hour-aligned and
from an odd second, with and without `group_by`; and in-process, the same with the last six
hours marked (not folded).

    .venv/bin/python benchmarks/bench_usage.py [--sessions N] [--requests N]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import psycopg

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks import bench_pcu, common  # noqa: E402
from service import concurrency, db, pcu, rollup, usage  # noqa: E402
from tests.factories import reader_headers  # noqa: E402

APP = bench_pcu.APP
DAYS = 30

# Sessions of `app` over the 30 days before `now`, from a fixed seed, stored in start order (as
# the service stores agents: when first seen).
_SEED = """
    INSERT INTO agent (app_id, agent_id, labels, state, state_at, started_at, stopped_at,
                       stop_status, active_from, active_until, last_event_at)
    SELECT %(app)s, 'agent-' || i, labels,
           CASE WHEN until > %(now)s THEN 'RUNNING' WHEN failed THEN 'FAILED' ELSE 'STOPPED' END,
           least(until, %(now)s), since,
           CASE WHEN until <= %(now)s THEN until END,
           CASE WHEN until > %(now)s THEN NULL WHEN failed THEN 'FAILED' ELSE 'STOPPED' END,
           since, CASE WHEN until <= %(now)s THEN until END, least(until, %(now)s)
    FROM (
        SELECT i, since, since + length AS until, random() < 0.05 AS failed,
               jsonb_strip_nulls(jsonb_build_object(
                   'tier', CASE WHEN r1 < 0.1 THEN NULL WHEN r1 < 0.5 THEN 'gold'
                                WHEN r1 < 0.8 THEN 'silver' ELSE 'bronze' END,
                   'region', 'r' || (i %% 5))) AS labels
        FROM (
            SELECT i, random() AS r1,
                   %(now)s - interval '30 days' * random() AS since,
                   CASE WHEN random() < 0.02 THEN interval '1 second' * (600 + random() * 10200)
                        ELSE interval '1 microsecond' * floor(-ln(1 - random()) * 180000000)
                   END AS length
            FROM generate_series(1, %(n)s) AS i
        ) AS drawn
    ) AS s
    ORDER BY since"""

# Every hour an agent touches, marked as the migration marks stored agents.
_MARK_ALL = """
    INSERT INTO insight_change (app_id, kind, hour)
    SELECT DISTINCT app_id, 'usage', h
    FROM agent, LATERAL generate_series(date_trunc('hour', active_from),
                                        date_trunc('hour', coalesce(active_until, active_from)),
                                        interval '1 hour') AS h
    WHERE active_from IS NOT NULL
    UNION
    SELECT DISTINCT app_id, 'usage', date_trunc('hour', stopped_at)
    FROM agent WHERE state = 'FAILED' AND stopped_at IS NOT NULL"""

# The brute force: every agent against each bucket it touches, from the agent rows alone.
_BRUTE = """
    WITH x AS (
        SELECT a.labels ->> %(key)s::text AS k, a.active_from AS af,
               coalesce(a.active_until, %(now)s) AS au, a.stopped_at,
               a.state = 'FAILED' AND a.stopped_at IS NOT NULL AS failed
        FROM agent AS a WHERE a.app_id = %(app)s AND a.active_from IS NOT NULL
    )
    SELECT n, k,
           sum(greatest(0, (extract(epoch FROM least(au, be)) - extract(epoch FROM greatest(af, bs)))
                           * 1000000))::bigint,
           count(*) FILTER (WHERE af >= bs AND af < be),
           count(*) FILTER (WHERE failed AND stopped_at >= bs AND stopped_at < be)
    FROM x,
         LATERAL generate_series(
             greatest(0, floor(extract(epoch FROM af - %(start)s) / %(step)s))::int,
             least(%(buckets)s - 1,
                   floor(extract(epoch FROM greatest(au, coalesce(stopped_at, au)) - %(start)s)
                         / %(step)s))::int) AS n,
         LATERAL (SELECT %(start)s + n * %(step)s * interval '1 second' AS bs,
                         least(%(start)s + (n + 1) * %(step)s * interval '1 second', %(end)s)
                             AS be) AS b
    GROUP BY 1, 2"""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, default=1_000_000)
    parser.add_argument("--requests", type=int, default=100)
    args = parser.parse_args()
    with common.server_url() as admin_url:
        url = common.fresh_database(admin_url, f"bench_usage_{os.getpid()}")
        now = datetime.now(UTC).replace(microsecond=0)
        lines = prepare(url, sessions=args.sessions, now=now)
        lines += asyncio.run(check_and_time_marked(url, now=now))
        with bench_pcu.service(url) as base:
            lines += measure(base, now=now, requests=args.requests)
    common.record("usage", lines, notes=[f"{args.sessions:,} sessions over {DAYS} days."])
    return 0


def prepare(url: str, *, sessions: int, now: datetime) -> list[str]:
    lines = []
    with psycopg.connect(url) as conn:
        started = time.perf_counter()
        conn.execute("SELECT setseed(0.42)")
        conn.execute(_SEED, {"app": APP, "now": now, "n": sessions})
        conn.execute(_SEED, {"app": "other-app", "now": now, "n": sessions // 5})
        conn.execute(_MARK_ALL)
        conn.commit()
        lines.append(f"seed {sessions:,} + {sessions // 5:,} sessions: {_since(started)}")
        # The PCU rollup, as the write path would have kept it: usage without a label reads
        # agent time from it.
        started = time.perf_counter()
        conn.execute(rollup.REBUILD_SQL)
        conn.execute(rollup.REBUILD_HOURS_SQL)
        conn.commit()
        lines.append(f"PCU rollup rebuild: {_since(started)}")
        conn.autocommit = True
        conn.execute("VACUUM ANALYZE")
    started = time.perf_counter()
    asyncio.run(_fold(url))
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("VACUUM ANALYZE")
        rows = conn.execute(
            "SELECT (SELECT count(*) FROM usage_hour), pg_total_relation_size('usage_hour'),"
            " pg_total_relation_size('usage_minute')"
        ).fetchone()
        running = conn.execute(
            "SELECT count(*) FROM agent WHERE app_id = %s AND active_until IS NULL", [APP]
        ).fetchone()
    assert rows is not None and running is not None
    lines.append(
        f"fold of every marked hour (backfill): {_since(started)}, {rows[0]:,} usage_hour rows"
        f" ({rows[1] / 2**20:,.1f} MiB; usage_minute {rows[2] / 2**20:,.1f} MiB),"
        f" {running[0]} agents still running"
    )
    return lines


async def _fold(url: str) -> None:
    async with await db.connect(url) as conn:
        for app_id in (APP, "other-app"):
            while await usage.fold(conn, app_id):  # a bounded number of hours per fold
                pass


def _since(started: float) -> str:
    return f"{time.perf_counter() - started:.1f} s"


async def check_and_time_marked(url: str, *, now: datetime) -> list[str]:
    """Series equal the brute force (folded, then with the last six hours marked), and the
    in-process time of the marked reads."""
    engine = db.create_engine(url, pool_size=2, max_overflow=0)
    hour = now.replace(minute=0, second=0)
    odd = now - timedelta(seconds=17)
    cases = [
        (hour - timedelta(days=DAYS), 3600, None),
        (hour - timedelta(days=DAYS), 86_400, "tier"),
        (odd - timedelta(days=DAYS), 3600, "tier"),
    ]
    lines = []
    try:
        for marked in (False, True):
            if marked:
                with psycopg.connect(url) as conn:
                    conn.execute(
                        "INSERT INTO insight_change (app_id, kind, hour)"
                        " SELECT %s, 'usage', h FROM generate_series("
                        " date_trunc('hour', now()) - interval '5 hours',"
                        " date_trunc('hour', now()), interval '1 hour') AS h",
                        [APP],
                    )
            for start, step, key in cases:
                runs = 5 if start.second else 20  # from an odd second, hourly: seconds each
                answer, times = await _series(engine, start, now, step, key, runs)
                assert answer == _brute(url, start, now, step, key), (start, step, key)
                if marked:
                    label = f"30 d x {step} s from {start:%H:%M:%S}, group_by {key}, 6 h marked"
                    lines.append(f"in-process {label:<58} {common.percentiles(times)}")
        lines.append("checked: 3 series equal the brute force, folded and with marks")
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("DELETE FROM insight_change")
    finally:
        await engine.dispose()
    return lines


async def _series(
    engine: object, start: datetime, end: datetime, step: int, key: str | None, runs: int
) -> tuple[dict[tuple[int, str | None], tuple[int, int, int]], list[float]]:
    times = []
    answer: dict[tuple[int, str | None], tuple[int, int, int]] = {}
    for _ in range(runs):
        started = time.perf_counter()
        async with concurrency.snapshot(engine) as conn:  # type: ignore[arg-type]
            points = await usage.series(
                conn,
                app_id=APP,
                start=pcu.to_us(start),
                end=pcu.to_us(end),
                step=step * pcu.US_PER_S,
                key=key,
            )
        times.append((time.perf_counter() - started) * 1000)
    for n, point in enumerate(points):
        for g in point.groups:
            if g.agent_us or g.sessions or g.failed:
                answer[(n, g.key)] = (g.agent_us, g.sessions, g.failed)
    return answer, times


def _brute(
    url: str, start: datetime, end: datetime, step: int, key: str | None
) -> dict[tuple[int, str | None], tuple[int, int, int]]:
    """Every bucket ends by `end` (the series' last one is cut there: so is `now` here)."""
    buckets = -(-int((end - start).total_seconds()) // step)
    with psycopg.connect(url) as conn:
        row = conn.execute("SELECT now()").fetchone()
        assert row is not None
        params = {"app": APP, "key": key, "start": start, "end": end, "step": step}
        params["buckets"] = buckets
        rows = conn.execute(_BRUTE, {**params, "now": min(end, row[0])}).fetchall()
    return {(n, k): (us, s, f) for n, k, us, s, f in rows if us or s or f}


def measure(base: str, *, now: datetime, requests: int) -> list[str]:
    hour = now.replace(minute=0, second=0)
    odd = now - timedelta(seconds=17)
    aligned = f"from={common.rfc(hour - timedelta(days=DAYS))}&to={common.rfc(hour)}"
    unaligned = f"from={common.rfc(odd - timedelta(days=DAYS))}&to={common.rfc(odd)}"
    cases = [
        ("30 d x 1 h, hour-aligned", f"{aligned}&step=3600", requests),
        ("30 d x 1 h, hour-aligned, by tier", f"{aligned}&step=3600&group_by=label.tier", requests),
        (
            "30 d x 1 h, hour-aligned, by region",
            f"{aligned}&step=3600&group_by=label.region",
            requests,
        ),
        ("30 d x 1 d, hour-aligned", f"{aligned}&step=86400", requests),
        (
            "30 d x 1 d, hour-aligned, by tier",
            f"{aligned}&step=86400&group_by=label.tier",
            requests,
        ),
        ("30 d x 1 d, odd second", f"{unaligned}&step=86400", requests),
        (
            "30 d x 1 d, odd second, by tier",
            f"{unaligned}&step=86400&group_by=label.tier",
            requests,
        ),
        # Every bucket edge inside an hour: about half the month's agents are read.
        ("30 d x 1 h, odd second", f"{unaligned}&step=3600", 5),
        ("30 d x 1 h, odd second, by tier", f"{unaligned}&step=3600&group_by=label.tier", 5),
    ]
    lines = []
    with httpx.Client(
        base_url=base, headers=reader_headers(bench_pcu.TOKEN), timeout=120
    ) as client:
        for label, query, count in cases:
            # Three warm-up requests: the slow cases take a second each.
            times = common.timed(client, f"/v1/apps/{APP}/usage?{query}", count, warmup=3)
            lines.append(f"usage {label:<38} {common.percentiles(times)}")
    return lines


if __name__ == "__main__":
    raise SystemExit(main())
