"""PCU read latency on a month of data: 1,000,000 sessions over 30 days for one app.

Starts a throw-away embedded PostgreSQL (or uses BENCH_DATABASE_URL's server), migrates a fresh
database, loads the sessions with COPY, builds the rollup, checks the 30-day series against a
brute-force sweep of every edge, starts `convoai-ledger serve` and measures over real HTTP:

- GET /v1/apps/{app}/pcu (default 24 h window, and 30 d),
- GET /v1/apps/{app}/pcu/series for 30 days in 1-hour steps (hour-aligned, and from an
  arbitrary second, where every bucket edge falls inside a minute),
- webhook ingest with the rollup upkeep, 8 senders at once: 4,000 notifications whose edges
  share a few minutes (the rollup's worst case for lock waits), and 4,000 spread over the month.

Prints p50/p95/max, notes the machine's load, and records the figures in BENCHMARKS.md.

    .venv/bin/python benchmarks/bench_pcu.py [--sessions N] [--requests N]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import os
import random
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import psycopg

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks import common  # noqa: E402
from service import concurrency, db, pcu, rollup  # noqa: E402
from tests.factories import Delivery, deliver, payload, reader_headers  # noqa: E402
from tests.processes import free_port  # noqa: E402

APP = "bench-app"
SECRET = "bench-secret"
TOKEN = "reader-token-one"
DAYS = 30


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, default=1_000_000)
    parser.add_argument("--requests", type=int, default=300)
    args = parser.parse_args()
    with common.server_url() as admin_url:
        url = common.fresh_database(admin_url, f"bench_pcu_{os.getpid()}")
        now = datetime.now(UTC).replace(microsecond=0)
        timings = prepare(url, sessions=args.sessions, now=now)
        with service(url) as base:
            lines = measure(base, now=now, requests=args.requests)
            lines += ingest_contention(base)
    report(timings + lines, sessions=args.sessions)
    return 0


def sessions(count: int, *, now: datetime) -> Iterator[tuple[datetime, datetime | None]]:
    """Start times spread over 30 days; mostly short calls, a few long ones, some still open."""
    rng = random.Random(42)
    span_us = DAYS * 86_400 * pcu.US_PER_S
    start_us = pcu.to_us(now) - span_us
    for _ in range(count):
        begin = start_us + rng.randrange(span_us)
        if rng.random() < 0.02:
            length = rng.randrange(600, 3 * 3600) * pcu.US_PER_S  # long sessions
        else:
            length = int(rng.expovariate(1 / 40) * pcu.US_PER_S) + 1  # mean ~40 s
        end = begin + length
        yield pcu.from_us(begin), None if end > pcu.to_us(now) else pcu.from_us(end)


def prepare(url: str, *, sessions: int, now: datetime) -> list[str]:
    lines = []
    with psycopg.connect(url) as conn:
        started = time.perf_counter()
        copy_sessions(conn, sessions, now=now)
        conn.commit()
        lines.append(f"seed {sessions:,} sessions (COPY): {time.perf_counter() - started:.1f} s")
        started = time.perf_counter()
        conn.execute(rollup.REBUILD_SQL)
        conn.execute(rollup.REBUILD_HOURS_SQL)
        conn.commit()
        conn.autocommit = True
        conn.execute("VACUUM ANALYZE")  # what autovacuum does to a month-old table
        conn.autocommit = False
        counts = conn.execute(
            "SELECT (SELECT count(*) FROM pcu_minute), (SELECT count(*) FROM pcu_hour)"
        ).fetchone()
        assert counts is not None
        lines.append(
            f"rollup rebuild: {time.perf_counter() - started:.1f} s,"
            f" {counts[0]:,} minute rows, {counts[1]:,} hour rows"
        )
        lines.append(check_against_sweep(conn, now=now))
    return lines


def copy_sessions(
    conn: psycopg.Connection[tuple[object, ...]], count: int, *, now: datetime
) -> None:
    columns = (
        "agent_id, app_id, name, channel, state, state_at, started_at, stopped_at,"
        " stop_status, active_from, active_until, last_event_at, first_seen_at"
    )
    with conn.cursor().copy(f"COPY agent ({columns}) FROM STDIN") as copy:
        buffer = io.StringIO()
        null = "\\N"
        for i, (begin, end) in enumerate(sessions(count, now=now)):
            first = begin.isoformat()
            if end is None:
                state, stopped, stop_status, at = "RUNNING", null, null, first
            else:
                state, stopped, stop_status, at = (
                    "STOPPED",
                    end.isoformat(),
                    "STOPPED",
                    end.isoformat(),
                )
            row = (f"agent-{i:07d}", APP, f"n{i}", f"chan-{i % 5000}", state, at, first)
            row += (stopped, stop_status, first, stopped, at, first)
            buffer.write("\t".join(row) + "\n")
            if buffer.tell() > 1 << 20:
                copy.write(buffer.getvalue())
                buffer = io.StringIO()
        copy.write(buffer.getvalue())


def check_against_sweep(conn: psycopg.Connection[tuple[object, ...]], *, now: datetime) -> str:
    """The rollup-based 30-day hourly series equals a sweep over every edge (brute force)."""
    end = pcu.to_us(now.replace(minute=0, second=0))
    start, step = end - DAYS * 86_400 * pcu.US_PER_S, 3600 * pcu.US_PER_S
    edges = conn.execute(
        "SELECT (extract(epoch FROM at) * 1000000)::bigint, d FROM ("
        " SELECT active_from AS at, 1 AS d FROM agent WHERE app_id = %(app)s"
        " UNION ALL SELECT active_until, -1 FROM agent"
        " WHERE app_id = %(app)s AND active_until IS NOT NULL) e ORDER BY 1",
        {"app": APP},
    ).fetchall()
    expected = sweep(edges, start=start, end=end, step=step)

    async def rollup_series() -> list[tuple[int, int]]:
        engine = db.create_engine(url_of(conn))
        try:
            async with engine.connect() as aconn:
                points = await concurrency.series(
                    aconn, app_id=APP, start=start, end=end, step=step
                )
        finally:
            await engine.dispose()
        return [(p.max, p.area) for p in points]

    got = asyncio.run(rollup_series())
    if got != expected:
        raise SystemExit("the rollup's series differs from the brute-force sweep")
    return f"30 d hourly series equals the brute-force sweep over {len(edges):,} edges: yes"


def url_of(conn: psycopg.Connection[tuple[object, ...]]) -> str:
    info = conn.info
    return f"postgresql+psycopg://{info.user}@{info.host}:{info.port}/{info.dbname}"


def sweep(
    edges: list[tuple[int, int]], *, start: int, end: int, step: int
) -> list[tuple[int, int]]:
    """Per bucket (max, area) by walking every edge in time order."""
    out = []
    level, index = 0, 0
    while index < len(edges) and edges[index][0] < start:
        level += edges[index][1]
        index += 1
    for bucket_start in range(start, end, step):
        bucket_end = min(bucket_start + step, end)
        at, area = bucket_start, 0
        while index < len(edges) and edges[index][0] == bucket_start:
            level += edges[index][1]
            index += 1
        high = level
        while index < len(edges) and edges[index][0] < bucket_end:
            moment = edges[index][0]
            area += level * (moment - at)
            at = moment
            while index < len(edges) and edges[index][0] == moment:
                level += edges[index][1]
                index += 1
            high = max(high, level)
        area += level * (bucket_end - at)
        out.append((high, area))
    return out


@contextlib.contextmanager
def service(url: str) -> Iterator[str]:
    port = free_port()
    env = {
        "PATH": os.environ.get("PATH", ""),
        "DATABASE_URL": url,
        "AGORA_APP_ID": APP,
        "AGORA_WEBHOOK_SECRETS": SECRET,
        "READ_API_TOKENS": TOKEN,
        "PCU_CAP": "20",
        "PORT": str(port),
        "LOG_LEVEL": "error",
    }
    process = subprocess.Popen(
        [sys.executable, "-m", "service", "serve"],
        env=env,
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{base}/readyz", timeout=1).status_code == 200:
                    break
            if time.monotonic() > deadline or process.poll() is not None:
                raise SystemExit("the service did not become ready")
            time.sleep(0.1)
        yield base
    finally:
        process.terminate()
        process.wait(timeout=30)


def percentiles(samples: list[float]) -> str:
    p50, p95 = common.percentile(samples, 0.5), common.percentile(samples, 0.95)
    return f"p50 {p50:6.1f} ms  p95 {p95:6.1f} ms  max {max(samples):6.1f} ms"


def timed(client: httpx.Client, path: str, requests: int, *, warmup: int = 20) -> list[float]:
    for _ in range(warmup):  # warm-up: connections, plans, caches
        client.get(path)
    out = []
    for _ in range(requests):
        started = time.perf_counter()
        response = client.get(path)
        out.append((time.perf_counter() - started) * 1000)
        if response.status_code != 200:
            raise SystemExit(f"{path} answered {response.status_code}: {response.text}")
    return out


def measure(base: str, *, now: datetime, requests: int) -> list[str]:
    hour = now.replace(minute=0, second=0)
    aligned = f"from={rfc(hour - timedelta(days=DAYS))}&to={rfc(hour)}&step=3600"
    odd = now - timedelta(seconds=17)
    unaligned = f"from={rfc(odd - timedelta(days=DAYS))}&to={rfc(odd)}&step=3600"
    cases: list[tuple[str, str]] = [
        ("pcu (24h window)", f"/v1/apps/{APP}/pcu"),
        ("pcu (30d window)", f"/v1/apps/{APP}/pcu?window=30d"),
        ("pcu/series 30 d x 1 h, hour-aligned", f"/v1/apps/{APP}/pcu/series?{aligned}"),
        ("pcu/series 30 d x 1 h, from any second", f"/v1/apps/{APP}/pcu/series?{unaligned}"),
    ]
    lines = []
    with httpx.Client(base_url=base, headers=reader_headers(TOKEN), timeout=30) as client:
        for label, path in cases:
            lines.append(f"{label:<42} {percentiles(timed(client, path, requests))}")
    return lines


def ingest_contention(base: str) -> list[str]:
    """Webhook ingest with the rollup upkeep, 8 senders at once: joins then leaves of 2,000
    agents whose edges share a few minutes (every transaction waits on the same minute and hour
    locks), then of 2,000 agents spread over the month (they only meet on the alarm row)."""
    now = int(time.time())
    rng = random.Random(7)
    bursty = [(f"burst-{i}", now - 300 + i % 120, 120) for i in range(2000)]
    spread = [(f"spread-{i}", now - rng.randrange(DAYS * 86_400), 40) for i in range(2000)]
    lines = []
    for label, agents in (
        ("edges in a few shared minutes", bursty),
        ("edges spread over 30 d", spread),
    ):
        rate, latencies = send_all(base, sessions_of(agents))
        lines.append(f"ingest, {label}: {rate:,.0f} webhooks/s, {percentiles(latencies)}")
    # The same path without PCU upkeep (110 errors change no interval): the baseline.
    error = [{"module": "llm", "code": 1, "message": "m"}]
    errors = [deliver(110, payload(a, errors=error), secret=SECRET) for a, _, _ in spread * 2]
    rate, latencies = send_all(base, [errors])
    lines.append(
        f"ingest, 110 errors (no PCU upkeep): {rate:,.0f} webhooks/s, {percentiles(latencies)}"
    )
    return lines


def sessions_of(agents: list[tuple[str, int, int]]) -> list[list[Delivery]]:
    """All the joins, then all the leaves."""
    joins = [deliver(101, payload(a, start_ts=at), secret=SECRET) for a, at, _ in agents]
    leaves = [
        deliver(
            102,
            payload(a, start_ts=at, stop_ts=at + length, status="STOPPED"),
            secret=SECRET,
        )
        for a, at, length in agents
    ]
    return [joins, leaves]


def send_all(base: str, waves: list[list[Delivery]]) -> tuple[float, list[float]]:
    latencies: list[float] = []
    with httpx.Client(base_url=base, timeout=30) as client:

        def send(delivery: Delivery) -> None:
            began = time.perf_counter()
            response = client.post(
                f"/v1/webhooks/agora/{APP}", content=delivery.body, headers=delivery.headers
            )
            latencies.append((time.perf_counter() - began) * 1000)
            if response.status_code != 200:
                raise SystemExit(f"webhook answered {response.status_code}")

        began = time.perf_counter()
        with ThreadPoolExecutor(max_workers=8) as pool:
            for wave in waves:
                list(pool.map(send, wave))
        elapsed = time.perf_counter() - began
    return sum(len(wave) for wave in waves) / elapsed, latencies


def rfc(value: datetime) -> str:
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def report(lines: list[str], *, sessions: int) -> None:
    note = f"{sessions:,} sessions over {DAYS} days, one app; latencies over real HTTP."
    common.record("pcu", lines, notes=[note])


if __name__ == "__main__":
    sys.exit(main())
