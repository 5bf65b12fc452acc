"""PCU upkeep inside the transaction that changes an agent's active interval.

Two things follow an agent's `[active_from, active_until)` and are written here, by the same
transaction that writes the agent row (`ingest.observe`, for webhooks and reconciliation alike):

- `pcu_minute`: one `pcu.Span` per app and minute, summarising the interval edges in that minute.
  A moved edge rewrites its minute from the agent rows, so the rollup is always what the agents
  say, whatever the arrival order.
- `pcu_alarm`: where the app's current PCU stands against its thresholds. An upward move is a
  crossing, reported once by the one transaction that made it.

Locks, always in this order, so no two transactions wait on each other in a cycle: the agent's
row (taken by the caller; one agent per transaction), then the touched minutes' advisory locks in
ascending key order, then the app's alarm row. Transactions for different agents of one app only
wait on each other when their edges fall in the same minute, or, at the very end, when both
change the app's current PCU. The read side lives in `concurrency.py`.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime
from typing import Final

from sqlalchemy import func, select, text, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncConnection

from service import lifecycle, pcu
from service.tables import agent, pcu_alarm

Interval = tuple[datetime | None, datetime | None]

# The summary of the agents' edges inside [s, e) for one app: `pcu.summarise` in SQL. Times are
# turned into integer microseconds so sums are exact. Used by the upkeep below and by reads of
# partial minutes (`concurrency.py`), with `:app` bound and `s`, `e` supplied by the caller.
EDGE_SPAN_SQL: Final = """
    SELECT sum(d)::int AS delta,
           greatest(max(level), CASE WHEN min(at) > {s} THEN 0 END)::int AS peak,
           coalesce(sum(d * (extract(epoch FROM {e} - at) * 1000000)::bigint), 0)::bigint AS area
    FROM (
        SELECT at, d, sum(d) OVER (ORDER BY at) AS level
        FROM (
            SELECT at, sum(d) AS d
            FROM (
                SELECT active_from AS at, 1 AS d FROM agent
                WHERE app_id = :app AND active_from >= {s} AND active_from < {e}
                UNION ALL
                SELECT active_until AS at, -1 AS d FROM agent
                WHERE app_id = :app AND active_until >= {s} AND active_until < {e}
            ) AS edge
            GROUP BY at
        ) AS point
    ) AS running
"""

_REWRITE = text(
    f"""
    WITH summary AS (
        SELECT m.minute, s.delta, s.peak, s.area
        FROM unnest(CAST(:minutes AS timestamptz[])) AS m(minute)
        CROSS JOIN LATERAL ({EDGE_SPAN_SQL.format(s="m.minute", e="m.minute + interval '1 minute'")}) AS s
    ),
    cleared AS (
        DELETE FROM pcu_minute
        WHERE app_id = :app AND minute IN (SELECT minute FROM summary WHERE delta IS NULL)
    )
    INSERT INTO pcu_minute (app_id, minute, delta, peak, area_us)
    SELECT :app, minute, delta, peak, area FROM summary WHERE delta IS NOT NULL
    ON CONFLICT (app_id, minute) DO UPDATE
    SET delta = excluded.delta, peak = excluded.peak, area_us = excluded.area_us
    """
)

# Every minute from scratch, for every app: the migration's backfill and `rebuild()`.
REBUILD_SQL: Final = """
    INSERT INTO pcu_minute (app_id, minute, delta, peak, area_us)
    SELECT app_id, minute, sum(d)::int,
           greatest(max(level), CASE WHEN min(at) > minute THEN 0 END)::int,
           sum(d * (extract(epoch FROM minute + interval '1 minute' - at) * 1000000)::bigint)
    FROM (
        SELECT app_id, minute, at, d,
               sum(d) OVER (PARTITION BY app_id, minute ORDER BY at) AS level
        FROM (
            SELECT app_id, to_timestamp(floor(extract(epoch FROM at) / 60) * 60) AS minute,
                   at, sum(d) AS d
            FROM (
                SELECT app_id, active_from AS at, 1 AS d FROM agent
                WHERE active_from IS NOT NULL
                UNION ALL
                SELECT app_id, active_until, -1 FROM agent WHERE active_until IS NOT NULL
            ) AS edge
            GROUP BY app_id, minute, at
        ) AS point
    ) AS running
    GROUP BY app_id, minute
"""


@dataclass(frozen=True, slots=True, kw_only=True)
class Crossing:
    """An upward crossing of a threshold, committed with the transaction that made it."""

    app_id: str
    threshold: pcu.Threshold
    current: int
    cap: int


async def move(conn: AsyncConnection, *, app_id: str, before: Interval, after: Interval) -> None:
    """Rewrite the rollup minutes of every edge that differs between `before` and `after`.

    Call after the agent row holds `after`, in the same transaction, with the agent row locked.
    """
    changed = set(_edges(before)) ^ set(_edges(after))
    if not changed:
        return
    minutes = sorted({pcu.floor_grain(pcu.to_us(at)) for at, _ in changed})
    # Sorted by the lock key: every transaction takes its minute locks in one global order.
    keys = sorted(_minute_key(app_id, minute) for minute in minutes)
    for key in keys:
        await conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": key})
    # A new statement takes a new snapshot: it sees every edge committed by earlier lock holders.
    await conn.execute(_REWRITE, {"app": app_id, "minutes": [pcu.from_us(m) for m in minutes]})


async def settle_threshold(
    conn: AsyncConnection, *, app_id: str, limits: pcu.Limits
) -> list[Crossing]:
    """Re-read the app's current PCU under its alarm row lock; answer the upward crossings.

    Call in every transaction that makes an agent active or inactive, after the agent row is
    written. The lock makes these transactions count one after another, in commit order, so each
    crossing is seen by exactly one of them, however many replicas run.
    """
    await conn.execute(pg_insert(pcu_alarm).values(app_id=app_id).on_conflict_do_nothing())
    stored = pcu.Threshold(
        (
            await conn.execute(
                select(pcu_alarm.c.level).where(pcu_alarm.c.app_id == app_id).with_for_update()
            )
        ).scalar_one()
    )
    current = await current_pcu(conn, app_id=app_id)
    level = pcu.threshold(current, cap=limits.cap, warn_fraction=limits.warn_fraction)
    if level == stored:
        return []
    await conn.execute(
        update(pcu_alarm)
        .where(pcu_alarm.c.app_id == app_id)
        .values(level=level.value, changed_at=func.now())
    )
    return [
        Crossing(app_id=app_id, threshold=crossed, current=current, cap=limits.cap)
        for crossed in pcu.crossings(stored, level)
    ]


async def current_pcu(conn: AsyncConnection, *, app_id: str) -> int:
    """Agents of the app in an active state now."""
    count = await conn.scalar(
        select(func.count())
        .select_from(agent)
        .where(agent.c.app_id == app_id, agent.c.state.in_([s.value for s in lifecycle.ACTIVE]))
    )
    return int(count or 0)


async def rebuild(conn: AsyncConnection) -> int:
    """Recompute the whole rollup from the agent rows (after a bulk load); answers its rows.

    Takes an exclusive lock on `pcu_minute` for the transaction: ingest waits meanwhile.
    """
    await conn.execute(text("LOCK TABLE pcu_minute IN EXCLUSIVE MODE"))
    await conn.execute(text("DELETE FROM pcu_minute"))
    result = await conn.execute(text(REBUILD_SQL))
    return result.rowcount


def _edges(interval: Interval) -> list[tuple[datetime, int]]:
    active_from, active_until = interval
    out = [] if active_from is None else [(active_from, 1)]
    if active_until is not None:
        out.append((active_until, -1))
    return out


def _minute_key(app_id: str, minute: int) -> int:
    """A signed 64-bit advisory lock key for one app's minute (collisions only cost waiting)."""
    digest = hashlib.blake2b(f"pcu_minute/{app_id}/{minute}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)
