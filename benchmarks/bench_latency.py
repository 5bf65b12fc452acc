"""Turn latency reads on a month of data: 1,000,000 turns over 30 days for one app.

Starts a throw-away embedded PostgreSQL (or uses BENCH_DATABASE_URL's server), migrates a fresh
database, loads 20,000 agents (a tenth labelled `tier=gold`, each in one of three `region`s) and
their turns with `generate_series`, every hour marked as the migration marks stored turns, and
measures `latency.series` (what GET /v1/apps/{app}/latency runs, one statement) for 30 days,
without a label filter and with one pair (`label.tier=gold`):

- unfolded: every hour still marked, so every bucket is computed from the turns;
- folded (after `latency.fold` took every mark, building both rollups), and folded with the
  current hour marked (as under live traffic);
- from an arbitrary second and with two label pairs (always from the turns).

Each answer is checked against the unfolded one first. Prints p50/p95/max and records them in
BENCHMARKS.md.

    .venv/bin/python benchmarks/bench_latency.py [--turns N] [--requests N]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks import common  # noqa: E402
from service import db, latency  # noqa: E402

APP = "bench-app"
DAYS = 30
AGENTS = 20_000

_LOAD = """
    INSERT INTO agent (app_id, agent_id, state, labels)
    SELECT %(app)s, 'agent-' || i, 'STOPPED',
           jsonb_build_object('tier', CASE WHEN i %% 10 = 0 THEN 'gold' ELSE 'free' END,
                              'region', (ARRAY['eu', 'us', 'ap'])[i %% 3 + 1])
    FROM generate_series(0, %(agents)s - 1) AS i;
    INSERT INTO agent_turn (app_id, agent_id, turn_id, end_at, e2e_latency_ms, data, source,
                            asr_ttlw, llm_ttft, tts_ttfb)
    SELECT %(app)s, 'agent-' || (i %% %(agents)s), i / %(agents)s,
           %(start)s + random() * (%(end)s - %(start)s),
           CASE WHEN random() < 0.98 THEN 400 + (random() * 2600)::int END, '{}', 'webhook',
           CASE WHEN random() < 0.9 THEN 150 + (random() * 500)::int END,
           CASE WHEN random() < 0.9 THEN 300 + (random() * 900)::int END,
           CASE WHEN random() < 0.9 THEN 60 + (random() * 200)::int END
    FROM generate_series(0, %(turns)s - 1) AS i;
    INSERT INTO insight_change (app_id, kind, hour)
    SELECT DISTINCT app_id, 'latency', date_trunc('hour', end_at, 'UTC') FROM agent_turn;
    VACUUM (ANALYZE) agent_turn;
    VACUUM (ANALYZE) agent;
"""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--turns", type=int, default=1_000_000)
    parser.add_argument("--requests", type=int, default=100)
    args = parser.parse_args()
    with common.server_url() as admin_url:
        url = common.fresh_database(admin_url, f"bench_latency_{os.getpid()}")
        now = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
        lines = asyncio.run(run(url, turns=args.turns, requests=args.requests, now=now))
    note = (
        f"{args.turns:,} turns of {AGENTS:,} agents over {DAYS} days, one app; `latency.series`"
        " in-process (the route's one statement), each answer checked against the unfolded one."
    )
    common.record("latency", lines, notes=[note])
    return 0


async def run(url: str, *, turns: int, requests: int, now: datetime) -> list[str]:
    start = now - timedelta(days=DAYS)
    began = time.perf_counter()
    with psycopg.connect(url, autocommit=True) as conn:
        params = {"app": APP, "agents": AGENTS, "turns": turns, "start": start, "end": now}
        for statement in _LOAD.split(";"):
            if statement.strip():
                conn.execute(statement, params)  # type: ignore[call-overload]
    lines = [f"load {turns:,} turns (every hour marked): {time.perf_counter() - began:.1f} s"]
    engine = db.create_engine(
        url.replace("postgresql://", "postgresql+psycopg://", 1), pool_size=1, max_overflow=0
    )
    try:
        odd = start + timedelta(seconds=17)
        midnight = now.replace(hour=0)
        day_start = midnight - timedelta(days=DAYS)
        later = now + timedelta(minutes=40)  # the current hour (and day) cut at "now"
        gold = {"tier": "gold"}
        cases = {
            "30 d x 1 h": (start, now, 3600, {}),
            "30 d x 1 h to now": (start, later, 3600, {}),
            "30 d x 1 d": (day_start, midnight, 86_400, {}),
            "30 d x 1 d to now": (day_start, later, 86_400, {}),
            "30 d x 1 h, label.tier=gold": (start, now, 3600, gold),
            "30 d x 1 h to now, label.tier=gold": (start, later, 3600, gold),
            "30 d x 1 d, label.tier=gold": (day_start, midnight, 86_400, gold),
            "30 d x 1 d to now, label.tier=gold": (day_start, later, 86_400, gold),
        }
        truth = {label: await series(engine, *case) for label, case in cases.items()}
        for label, case in cases.items():
            lines.append(f"{label}, unfolded {await timed(engine, case, requests, truth[label])}")
        fold_s, taken = await fold_everything(url)
        lines.append(f"fold of every mark ({taken:,} marks): {fold_s:.1f} s")
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("ANALYZE latency_bucket, latency_label_bucket")
        for label, case in cases.items():
            lines.append(f"{label}, folded {await timed(engine, case, requests, truth[label])}")
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(
                "INSERT INTO insight_change (app_id, kind, hour) VALUES (%s, 'latency', %s)",
                [APP, now - timedelta(hours=1)],
            )
        for label, case in cases.items():
            timing = await timed(engine, case, requests, truth[label])
            lines.append(f"{label}, folded, last hour marked {timing}")
        two = {"tier": "gold", "region": "eu"}
        other = {
            "30 d x 1 h from any second": (odd, odd + timedelta(days=DAYS), 3600, {}),
            "30 d x 1 h, label.tier=gold&label.region=eu": (start, now, 3600, two),
            "30 d x 1 d to now, label.tier=gold&label.region=eu": (day_start, later, 86_400, two),
        }
        for label, case in other.items():
            lines.append(f"{label} {await timed(engine, case, max(10, requests // 5), None)}")
    finally:
        await engine.dispose()
    return lines


async def series(engine: Any, start: datetime, end: datetime, step: int, labels: Any) -> Any:
    async with engine.connect() as conn:
        return await latency.series(
            conn, app_id=APP, start=start, end=end, step_s=step, labels=labels
        )


async def timed(engine: Any, case: Any, requests: int, truth: Any) -> str:
    first = await series(engine, *case)
    if truth is not None and first != truth:
        raise SystemExit(f"{case}: the answer differs from the unfolded one")
    took = []
    for _ in range(requests):
        began = time.perf_counter()
        await series(engine, *case)
        took.append((time.perf_counter() - began) * 1000)
    p50, p95 = common.percentile(took, 0.5), common.percentile(took, 0.95)
    return f"p50 {p50:6.1f} ms  p95 {p95:6.1f} ms  max {max(took):6.1f} ms"


async def fold_everything(url: str) -> tuple[float, int]:
    began, taken = time.perf_counter(), 0
    async with await db.connect(url, name="bench-folder") as conn:
        while True:
            found = await latency.fold(conn, APP)
            if not found:
                break
            taken += found
    return time.perf_counter() - began, taken


if __name__ == "__main__":
    sys.exit(main())
