"""PCU upkeep inside the transaction that changes an agent's active interval.

Two things follow an agent's `[active_from, active_until)` and are written here, by the same
transaction that writes the agent row (`ingest.observe`, for webhooks and reconciliation alike):

- `pcu_minute`: one `pcu.Span` per app and minute, summarising the interval edges in that minute
  (and the edges themselves); `pcu_hour`: per app and hour, prefix and suffix summaries of its
  minutes. A moved edge rewrites its minute from the agent rows, then the minute's hour from its
  minutes, so the rollup is always what the agents say, whatever the arrival order.
- `pcu_alarm`: where the app's current PCU stands against its thresholds. An upward move is a
  crossing, reported once by the one transaction that made it.

Locks, always in this order, so no two transactions wait on each other in a cycle: the agent's
row (taken by the caller; one agent per transaction), then the touched minutes' advisory locks in
ascending key order, then the touched hours' likewise, then the app's alarm row. Transactions for
different agents of one app only wait on each other when their edges fall in the same hour (from
the rollup upkeep to their commit), or, at the very end, when both change the app's current
PCU. The read side lives in `concurrency.py`.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime
from typing import Final

from sqlalchemy import func, select, text
from sqlalchemy.dialects.postgresql.psycopg import PGDialect_psycopg
from sqlalchemy.ext.asyncio import AsyncConnection

from service import db, lifecycle, pcu
from service.tables import agent

Interval = tuple[datetime | None, datetime | None]

# Minute rows from the edges (`pcu.summarise` in SQL), plus the edges themselves (µs offset in
# the minute, net change, level after it relative to the minute's start) and, per edge, the
# highest level up to it and from it on and the running sum of change * offset, so that any
# prefix or suffix of the minute is summarised with one binary search (`width_bucket`). Times
# become integer microseconds, so every sum is exact. `point` must yield (app_id, minute, at, d)
# with one row per distinct edge time; `minute_summary` has one row per minute with edges.
_MINUTE_CTES: Final = """
    minute_running AS (
        SELECT app_id, minute, at, d,
               (extract(epoch FROM at - minute) * 1000000)::int AS off,
               sum(d) OVER (PARTITION BY app_id, minute ORDER BY at) AS level
        FROM point
    ),
    minute_ranged AS (
        SELECT *,
               max(level) OVER (PARTITION BY app_id, minute ORDER BY at) AS up_to,
               max(level) OVER (PARTITION BY app_id, minute ORDER BY at DESC) AS from_on,
               sum(d * off::bigint) OVER (PARTITION BY app_id, minute ORDER BY at) AS wsum
        FROM minute_running
    ),
    minute_summary AS (
        SELECT app_id, minute, sum(d)::int AS delta,
               greatest(max(level), CASE WHEN min(at) > minute THEN 0 END)::int AS peak,
               sum(d * (60000000 - off))::bigint AS area_us,
               array_agg(off ORDER BY at) AS edge_at,
               array_agg(d::int ORDER BY at) AS edge_delta,
               array_agg(level::int ORDER BY at) AS edge_level,
               array_agg(up_to::int ORDER BY at) AS edge_pmax,
               array_agg(from_on::int ORDER BY at) AS edge_smax,
               array_agg(wsum::bigint ORDER BY at) AS edge_wsum
        FROM minute_ranged GROUP BY app_id, minute
    )"""

# Hour rows from their minutes (`pcu.hour_prefix` in SQL). `target` must yield the (app_id,
# hour) pairs to write and `minute_now` the minutes' (app_id, minute, delta, peak, area_us) as
# they now are; an hour without minutes is deleted, the others upserted.
_HOUR_CTES: Final = """
    slot AS (
        SELECT t.app_id, t.hour, k, m.minute IS NOT NULL AS present,
               coalesce(m.delta, 0) AS delta, coalesce(m.peak, 0) AS peak,
               coalesce(m.area_us, 0) AS area
        FROM target AS t
        CROSS JOIN generate_series(0, 59) AS k
        LEFT JOIN minute_now AS m
            ON m.app_id = t.app_id AND m.minute = t.hour + k * interval '1 minute'
    ),
    hour_level AS (
        SELECT *, sum(delta) OVER (PARTITION BY app_id, hour ORDER BY k) - delta AS cum
        FROM slot
    ),
    hour_running AS (
        SELECT *,
               sum(cum::bigint * 60000000 + area) OVER (PARTITION BY app_id, hour ORDER BY k)
                   AS area_after,
               max(cum + peak) OVER (PARTITION BY app_id, hour ORDER BY k) AS pmax_after,
               max(cum + peak) OVER (PARTITION BY app_id, hour ORDER BY k DESC) AS smax_from
        FROM hour_level
    ),
    hour_summary AS (
        SELECT app_id, hour, bool_or(present) AS present,
               array_prepend(0, array_agg((cum + delta)::int ORDER BY k)) AS cum,
               array_prepend(0::bigint, array_agg(area_after::bigint ORDER BY k)) AS area,
               array_prepend(0, array_agg(pmax_after::int ORDER BY k)) AS pmax,
               array_append(array_agg(smax_from::int ORDER BY k), 0) AS smax
        FROM hour_running GROUP BY app_id, hour
    ),
    hour_cleared AS (
        DELETE FROM pcu_hour AS h USING hour_summary AS s
        WHERE h.app_id = s.app_id AND h.hour = s.hour AND NOT s.present
    )
    INSERT INTO pcu_hour (app_id, hour, cum, area, pmax, smax)
    SELECT app_id, hour, cum, area, pmax, smax FROM hour_summary WHERE present
    ON CONFLICT (app_id, hour) DO UPDATE
    SET cum = excluded.cum, area = excluded.area, pmax = excluded.pmax, smax = excluded.smax"""

_MINUTE_COLUMNS: Final = (
    "app_id, minute, delta, peak, area_us, edge_at, edge_delta, edge_level, edge_pmax,"
    " edge_smax, edge_wsum"
)

# Given minutes of one app, and their hours, rewritten in one statement: the minutes from the
# agents' edges, the hours from those new minutes and their other (committed) minutes.
_REWRITE = text(
    f"""
    WITH point AS (
        SELECT CAST(:app AS text) AS app_id, m.minute, e.at, sum(e.d) AS d
        FROM unnest(CAST(:minutes AS timestamptz[])) AS m(minute)
        CROSS JOIN LATERAL (
            SELECT active_from AS at, 1 AS d FROM agent
            WHERE app_id = :app AND active_from >= m.minute
              AND active_from < m.minute + interval '1 minute'
            UNION ALL
            SELECT active_until, -1 FROM agent
            WHERE app_id = :app AND active_until >= m.minute
              AND active_until < m.minute + interval '1 minute'
        ) AS e
        GROUP BY m.minute, e.at
    ),
    {_MINUTE_CTES},
    minute_cleared AS (
        DELETE FROM pcu_minute
        WHERE app_id = :app AND minute = ANY(CAST(:minutes AS timestamptz[]))
          AND minute NOT IN (SELECT minute FROM minute_summary)
    ),
    minute_written AS (
        INSERT INTO pcu_minute ({_MINUTE_COLUMNS})
        SELECT * FROM minute_summary
        ON CONFLICT (app_id, minute) DO UPDATE
        SET delta = excluded.delta, peak = excluded.peak, area_us = excluded.area_us,
            edge_at = excluded.edge_at, edge_delta = excluded.edge_delta,
            edge_level = excluded.edge_level, edge_pmax = excluded.edge_pmax,
            edge_smax = excluded.edge_smax, edge_wsum = excluded.edge_wsum
    ),
    target AS (
        SELECT CAST(:app AS text) AS app_id, hour
        FROM unnest(CAST(:hours AS timestamptz[])) AS h(hour)
    ),
    minute_now AS (
        SELECT app_id, minute, delta, peak, area_us FROM minute_summary
        UNION ALL
        SELECT m.app_id, m.minute, m.delta, m.peak, m.area_us
        FROM target AS t
        JOIN pcu_minute AS m ON m.app_id = t.app_id
             AND m.minute >= t.hour AND m.minute < t.hour + interval '1 hour'
        WHERE m.minute <> ALL(CAST(:minutes AS timestamptz[]))
    ),
    {_HOUR_CTES}
    """
)

# Every minute of every app from scratch (`rebuild()`; the migration's backfill is the same).
REBUILD_SQL: Final = f"""
    WITH point AS (
        SELECT app_id, to_timestamp(floor(extract(epoch FROM at) / 60) * 60) AS minute,
               at, sum(d) AS d
        FROM (
            SELECT app_id, active_from AS at, 1 AS d FROM agent WHERE active_from IS NOT NULL
            UNION ALL
            SELECT app_id, active_until, -1 FROM agent WHERE active_until IS NOT NULL
        ) AS edge
        GROUP BY 1, 2, 3
    ),
    {_MINUTE_CTES}
    INSERT INTO pcu_minute ({_MINUTE_COLUMNS})
    SELECT * FROM minute_summary
"""

# Every hour of every app from its minutes, after `REBUILD_SQL`.
REBUILD_HOURS_SQL: Final = f"""
    WITH target AS (
        SELECT DISTINCT app_id,
               to_timestamp(floor(extract(epoch FROM minute) / 3600) * 3600) AS hour
        FROM pcu_minute
    ),
    minute_now AS (SELECT app_id, minute, delta, peak, area_us FROM pcu_minute),
    {_HOUR_CTES}
"""

_LOCK = text("SELECT pg_advisory_xact_lock(key) FROM unnest(CAST(:keys AS bigint[])) AS key")


@dataclass(frozen=True, slots=True, kw_only=True)
class Crossing:
    """An upward crossing of a threshold, committed with the transaction that made it."""

    app_id: str
    threshold: pcu.Threshold
    current: int
    cap: int


# The same statements in psycopg's own form, for `upkeep()`'s pipeline.
_PSYCOPG: Final = PGDialect_psycopg()  # type: ignore[no-untyped-call]
_LOCK_SQL: Final = str(_LOCK.compile(dialect=_PSYCOPG))
_REWRITE_SQL: Final = str(_REWRITE.compile(dialect=_PSYCOPG))
_ALARM_ROW_SQL: Final = "INSERT INTO pcu_alarm (app_id) VALUES (%(app)s) ON CONFLICT DO NOTHING"
_ALARM_LOCK_SQL: Final = "SELECT level FROM pcu_alarm WHERE app_id = %(app)s FOR UPDATE"
# Under the alarm row lock, in a statement of its own (so its snapshot sees every transaction
# that held the lock before): count the app's active agents, store the level that puts it at
# (`pcu.threshold` in SQL, so that the commit can follow in the same round trip) and answer the
# level stored before.
_SETTLE_SQL: Final = """
    WITH current AS (
        SELECT count(*)::int AS n FROM agent
        WHERE app_id = %(app)s AND state = ANY(%(active)s)
    ),
    reached AS (
        SELECT n, CASE WHEN n >= %(cap)s THEN 'cap'
                       WHEN n >= %(warn_at)s THEN 'warning'
                       ELSE 'normal' END AS level
        FROM current
    ),
    stored AS (
        SELECT level FROM pcu_alarm WHERE app_id = %(app)s
    ),
    changed AS (
        UPDATE pcu_alarm SET level = reached.level, changed_at = now() FROM reached
        WHERE pcu_alarm.app_id = %(app)s AND pcu_alarm.level <> reached.level
    )
    SELECT stored.level AS stored, reached.level AS level, reached.n AS current
    FROM stored, reached"""
_ACTIVE: Final = [state.value for state in lifecycle.ACTIVE]


async def upkeep(
    conn: AsyncConnection,
    *,
    app_id: str,
    before: Interval,
    after: Interval,
    limits: pcu.Limits,
    commit: bool = False,
) -> list[Crossing]:
    """Rewrite the rollup minutes (and hours) of every edge that differs between `before` and
    `after`; if the agent became active or inactive, settle the app's threshold alarm. Answers
    the upward crossings.

    Call after the agent row holds `after`, in the same transaction, with the agent row locked.
    The statements go in one round trip (psycopg's pipeline mode): the minute and hour advisory
    locks; the rewrite (a new statement, so a new snapshot: it sees every edge committed by
    earlier lock holders, who held these locks until their commit); then the alarm row lock and,
    in the next statement, the recount and the level it puts the app at.

    With `commit`, the same round trip ends with `COMMIT` when there was anything to do: the
    app's locks are released as soon as the server has committed,
    not whenever this process's event loop gets back to it, which under load is what one app's
    starts and stops would wait for. Nothing may run on the connection after a commit (a
    statement would open a new transaction); the caller's own commit then finds nothing to do.
    """
    changed = set(_edges(before)) ^ set(_edges(after))
    if not changed:
        return []
    minutes = sorted({pcu.floor_grain(pcu.to_us(at)) for at, _ in changed})
    hours = sorted({minute - minute % pcu.HOUR_US for minute in minutes})
    # Minute locks, then hour locks, each set in key order: one global order for everyone.
    minute_keys = sorted(_key("minute", app_id, minute) for minute in minutes)
    hour_keys = sorted(_key("hour", app_id, hour) for hour in hours)
    settle = _is_active(before) != _is_active(after)
    params = {
        "app": app_id,
        "keys": [*minute_keys, *hour_keys],
        "minutes": [pcu.from_us(minute) for minute in minutes],
        "hours": [pcu.from_us(hour) for hour in hours],
        "active": _ACTIVE,
        "cap": limits.cap,
        "warn_at": limits.warn_fraction * limits.cap,
    }
    raw = await db.driver_connection(conn)
    async with raw.pipeline():
        await raw.execute(_LOCK_SQL, params)  # taken one by one, in the array's order
        await raw.execute(_REWRITE_SQL, params)
        if settle:
            await raw.execute(_ALARM_ROW_SQL, params)  # the app's first activity creates it
            await raw.execute(_ALARM_LOCK_SQL, params)
            settled = await raw.execute(_SETTLE_SQL, params)
        if commit:
            await raw.execute("COMMIT")
    if not settle:
        return []
    row = await settled.fetchone()
    assert row is not None
    stored, level, current = pcu.Threshold(row[0]), pcu.Threshold(row[1]), int(row[2])
    return [
        Crossing(app_id=app_id, threshold=crossed, current=current, cap=limits.cap)
        for crossed in pcu.crossings(stored, level)
    ]


def _is_active(interval: Interval) -> bool:
    return interval[0] is not None and interval[1] is None


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
    await conn.execute(text("LOCK TABLE pcu_minute, pcu_hour IN EXCLUSIVE MODE"))
    await conn.execute(text("DELETE FROM pcu_hour"))
    await conn.execute(text("DELETE FROM pcu_minute"))
    result = await conn.execute(text(REBUILD_SQL))
    await conn.execute(text(REBUILD_HOURS_SQL))
    return result.rowcount


def _edges(interval: Interval) -> list[tuple[datetime, int]]:
    active_from, active_until = interval
    out = [] if active_from is None else [(active_from, 1)]
    if active_until is not None:
        out.append((active_until, -1))
    return out


def _key(grain: str, app_id: str, at: int) -> int:
    """A signed 64-bit advisory lock key for one app's minute or hour (collisions only cost
    waiting)."""
    digest = hashlib.blake2b(f"pcu_{grain}/{app_id}/{at}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)
