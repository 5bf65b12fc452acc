"""PCU rollup: folded from recorded changes, off the request path, by one folder per app.

The write path (`ingest`, webhooks and reconciliation alike) records what each transaction
changed about PCU as cheap rows, with no lock (`changes()` → `pcu_change`): every moved edge of an
agent's active interval, and every change of whether it holds a slot now. `fold()` turns an app's
recorded changes into the rollup, holding the app's advisory lock so that one folder works on an
app at a time, in ONE statement (so in one snapshot): it deletes the changes it can see, merges
them into the edges of the minutes they touch (`pcu_minute`: the rollup plus the changes is what
the agents say, so the merge is too) and rewrites those minutes' hours (`pcu_hour`), and answers
the changes of the current count in the order they were recorded;
`fold()` then settles the threshold alarm from them (`pcu.settle`, with hysteresis), so each
crossing is announced once, by the one folder that saw it, however many replicas run.

The rollup plus the changes not yet folded is always what the agents say: reads cut the minutes
that still have changes out of the rollup and summarise those from the agents
(`concurrency`); `current` is counted from the agents' states. Every process runs a folder
(`service/folder.py`) that folds soon after its own commits and every `FOLD_INTERVAL_S`.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final

import psycopg
from sqlalchemy import func, select, text
from sqlalchemy.ext.asyncio import AsyncConnection

from service import db, lifecycle, pcu
from service.tables import agent

Interval = tuple[datetime | None, datetime | None]
# A recorded change: (app_id, edge time or None, edge delta, live delta).
Change = tuple[str, datetime | None, int, int]

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
# they now are; an hour without minutes is deleted, the others upserted (`hour_written`).
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
    ),
    hour_written AS (
        INSERT INTO pcu_hour (app_id, hour, cum, area, pmax, smax)
        SELECT app_id, hour, cum, area, pmax, smax FROM hour_summary WHERE present
        ON CONFLICT (app_id, hour) DO UPDATE
        SET cum = excluded.cum, area = excluded.area, pmax = excluded.pmax, smax = excluded.smax
    )"""

_MINUTE_COLUMNS: Final = (
    "app_id, minute, delta, peak, area_us, edge_at, edge_delta, edge_level, edge_pmax,"
    " edge_smax, edge_wsum"
)

# One app's recorded changes folded in one statement (one snapshot): the changes it can see are
# taken and merged, time by time, into the edges their minutes hold (a time whose changes cancel
# out has no edge), so a fold costs what it takes plus the minutes' distinct times (at most 60 a
# minute with Agora's whole-second times), never a scan of the agents; the touched minutes'
# hours are rewritten from their minutes. It answers the live changes in recorded order, and
# the app's current count in the same snapshot.
FOLD_SQL: Final = f"""
    WITH taken AS (
        DELETE FROM pcu_change WHERE app_id = %(app)s RETURNING id, at, delta, live
    ),
    change AS (
        SELECT to_timestamp(floor(extract(epoch FROM at) / 60) * 60) AS minute, at,
               sum(delta) AS d
        FROM taken WHERE at IS NOT NULL
        GROUP BY 1, 2
    ),
    touched AS (
        SELECT DISTINCT minute FROM change
    ),
    kept AS (
        SELECT m.minute, m.minute + e.off * interval '1 microsecond' AS at, e.d
        FROM pcu_minute AS m
        JOIN touched AS t ON m.app_id = %(app)s AND m.minute = t.minute
        CROSS JOIN LATERAL unnest(m.edge_at, m.edge_delta) AS e(off, d)
    ),
    point AS (
        SELECT CAST(%(app)s AS text) AS app_id, minute, at, sum(d) AS d
        FROM (SELECT minute, at, d FROM kept UNION ALL SELECT minute, at, d FROM change) AS x
        GROUP BY minute, at
        HAVING sum(d) <> 0
    ),
    {_MINUTE_CTES},
    minute_cleared AS (
        DELETE FROM pcu_minute
        WHERE app_id = %(app)s AND minute IN (SELECT minute FROM touched)
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
        SELECT DISTINCT CAST(%(app)s AS text) AS app_id,
               to_timestamp(floor(extract(epoch FROM minute) / 3600) * 3600) AS hour
        FROM touched
    ),
    minute_now AS (
        SELECT app_id, minute, delta, peak, area_us FROM minute_summary
        UNION ALL
        SELECT m.app_id, m.minute, m.delta, m.peak, m.area_us
        FROM target AS t
        JOIN pcu_minute AS m ON m.app_id = t.app_id
             AND m.minute >= t.hour AND m.minute < t.hour + interval '1 hour'
        WHERE m.minute NOT IN (SELECT minute FROM touched)
    ),
    {_HOUR_CTES}
    SELECT coalesce(array_agg(live ORDER BY id) FILTER (WHERE live <> 0), '{{}}') AS lives,
           count(*) AS taken,
           (SELECT count(*) FROM agent
            WHERE app_id = %(app)s AND state = ANY(%(active)s))::int AS current
    FROM taken
"""

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
        HAVING sum(d) <> 0
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
    SELECT count(*) FROM hour_summary
"""

_ALARM_SQL: Final = """
    WITH created AS (
        INSERT INTO pcu_alarm (app_id) VALUES (%(app)s) ON CONFLICT DO NOTHING
        RETURNING level, current
    )
    SELECT level, current FROM created
    UNION ALL
    SELECT level, current FROM pcu_alarm WHERE app_id = %(app)s"""
_SETTLED_SQL: Final = """
    UPDATE pcu_alarm SET level = %(level)s, current = %(current)s,
           changed_at = CASE WHEN level <> %(level)s THEN now() ELSE changed_at END
    WHERE app_id = %(app)s"""
_ACTIVE: Final = [state.value for state in lifecycle.ACTIVE]


@dataclass(frozen=True, slots=True, kw_only=True)
class Crossing:
    """An upward crossing of a threshold, seen by the folder that folded it."""

    app_id: str
    threshold: pcu.Threshold
    current: int
    cap: int


@dataclass(frozen=True, slots=True, kw_only=True)
class Folded:
    """What one fold did: how many changes it took, the count it left, the crossings."""

    app_id: str
    taken: int
    current: int
    crossings: tuple[Crossing, ...] = ()


def changes(
    app_id: str,
    *,
    before: Interval,
    after: Interval,
    was_active: bool,
    is_active: bool,
) -> list[Change]:
    """The rows a transaction records for one agent whose interval went from `before` to
    `after` and whose holding a slot went from `was_active` to `is_active` (none: no change).

    An edge that moved is two rows: the old one removed (its delta negated), the new one added.
    """
    out: list[Change] = [
        (app_id, at, -delta, 0) for at, delta in set(_edges(before)) - set(_edges(after))
    ]
    out += [(app_id, at, delta, 0) for at, delta in set(_edges(after)) - set(_edges(before))]
    if was_active != is_active:
        out.append((app_id, None, 0, 1 if is_active else -1))
    return out


async def fold(
    conn: psycopg.AsyncConnection[Any], *, app_id: str, limits: pcu.Limits
) -> Folded | None:
    """Fold `app_id`'s recorded changes into the rollup and settle its alarm, then commit;
    None when another folder holds the app (it will fold what is there).

    `conn` must be in no transaction; this commits its own.
    """
    async with conn.transaction():
        if not await db.try_xact_lock(conn, lock_key(app_id)):
            return None
        row = await (await conn.execute(FOLD_SQL, {"app": app_id, "active": _ACTIVE})).fetchone()
        assert row is not None
        lives, taken, current = list(row[0]), int(row[1]), int(row[2])
        alarm = await (await conn.execute(_ALARM_SQL, {"app": app_id})).fetchone()
        assert alarm is not None
        level, count = pcu.Threshold(alarm[0]), int(alarm[1])
        crossed: list[Crossing] = []
        for live in lives:
            count += live
            settled = pcu.settle(level, count, limits)
            crossed += [
                Crossing(app_id=app_id, threshold=t, current=count, cap=limits.cap)
                for t in pcu.crossings(level, settled)
            ]
            level = settled
        if count != current:  # cannot happen while every change records its live row
            level = pcu.settle(level, current, limits)
        await conn.execute(_SETTLED_SQL, {"app": app_id, "level": level.value, "current": current})
    return Folded(app_id=app_id, taken=taken, current=current, crossings=tuple(crossed))


def lock_key(app_id: str) -> int:
    """The app's folder lock: a signed 64-bit advisory lock key."""
    return db.lock_key(f"pcu_fold/{app_id}")


async def current_pcu(conn: AsyncConnection, *, app_id: str) -> int:
    """Agents of the app in an active state now."""
    count = await conn.scalar(
        select(func.count())
        .select_from(agent)
        .where(agent.c.app_id == app_id, agent.c.state.in_(_ACTIVE))
    )
    return int(count or 0)


async def rebuild(conn: AsyncConnection) -> int:
    """Recompute the whole rollup from the agent rows (after a bulk load); answers its rows.

    Every recorded change is then folded (deleted), and each alarm's count set to the agents'.
    Takes exclusive locks on the rollup for the transaction: folders wait meanwhile.
    """
    await conn.execute(text("LOCK TABLE pcu_minute, pcu_hour, pcu_change IN EXCLUSIVE MODE"))
    await conn.execute(text("DELETE FROM pcu_change"))
    await conn.execute(text("DELETE FROM pcu_hour"))
    await conn.execute(text("DELETE FROM pcu_minute"))
    result = await conn.execute(text(REBUILD_SQL))
    await conn.execute(text(REBUILD_HOURS_SQL))
    await conn.execute(
        text(
            "UPDATE pcu_alarm AS a SET current = (SELECT count(*) FROM agent"
            " WHERE agent.app_id = a.app_id AND state = ANY(:active))"
        ),
        {"active": _ACTIVE},
    )
    return result.rowcount


def _edges(interval: Interval) -> list[tuple[datetime, int]]:
    active_from, active_until = interval
    out = [] if active_from is None else [(active_from, 1)]
    if active_until is not None:
        out.append((active_until, -1))
    return out
