"""Read-side SQL for PCU: series, peaks and the current count, from the rollup.

The arithmetic is `pcu`'s; this module only fetches what it needs. The rollup lags the agents
by the changes not yet folded (`rollup`): a minute that still has some is cut out of the rollup's
pieces and summarised from the agent rows themselves (`live` pieces), so every answer is exact
for what is committed. Callers read in one snapshot (REPEATABLE READ, `snapshot()`), so the
changes, the rollup and the agents agree. A series is cut into pieces
(`pcu.pieces`) and one statement summarises them all: hour prefixes and suffixes from `pcu_hour`
rows in O(1) each, whole minutes inside an hour from `pcu_minute` rows, and parts of minutes from
the edges stored in their minute row. The level just before the series comes from the GiST
index on the agents' active ranges. The cost follows the number of buckets (a month in hourly
buckets is ~2,200 pieces), never the number of agents.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from service import pcu, rollup

_LEVEL_BEFORE = text(
    """
    SELECT count(*) FROM agent
    WHERE app_id = :app AND active_from IS NOT NULL
      AND tstzrange(active_from, active_until) @> (CAST(:at AS timestamptz) - interval '1 microsecond')
    """
)

# One row per piece with edges: (position, delta, peak, at_start, area), relative to the level
# just before the piece; `at_start`: whether the peak already accounts for the piece's start.
# `row_at` is the minute (edges pieces) or hour (hour pieces) the piece lies in; `a`, `b` are µs
# offsets in the minute or minute positions in the hour. A piece that is a prefix or a suffix of
# its minute (as bucket edges make) is answered from the minute's per-edge running arrays with
# one `width_bucket` binary search (i: edges before the cut); any other part of a minute is
# unnested edge by edge.
_SPANS = text(
    f"""
    WITH piece AS (
        SELECT (o - 1)::int AS pos, kind,
               timestamptz 'epoch' + s * interval '1 microsecond' AS s,
               timestamptz 'epoch' + e * interval '1 microsecond' AS e,
               timestamptz 'epoch' + row_at * interval '1 microsecond' AS row_at, a, b
        FROM unnest(
            string_to_array(:kind, ','), string_to_array(:s, ',')::bigint[],
            string_to_array(:e, ',')::bigint[], string_to_array(:row, ',')::bigint[],
            string_to_array(:a, ',')::int[], string_to_array(:b, ',')::int[]
        ) WITH ORDINALITY AS p(kind, s, e, row_at, a, b, o)
    ),
    cut AS (
        SELECT p.pos, p.a, p.b, m.edge_at, m.edge_level, m.edge_pmax, m.edge_smax, m.edge_wsum,
               cardinality(m.edge_at) AS n,
               CASE WHEN p.a = 0 THEN 0 ELSE width_bucket(p.a - 1, m.edge_at) END AS i0,
               CASE WHEN p.b = {pcu.GRAIN_US} THEN cardinality(m.edge_at)
                    ELSE width_bucket(p.b - 1, m.edge_at) END AS i1
        FROM piece AS p
        JOIN pcu_minute AS m ON m.app_id = :app AND m.minute = p.row_at
        WHERE p.kind = 'edges' AND (p.a = 0 OR p.b = {pcu.GRAIN_US})
    ),
    edge AS (
        SELECT p.pos, p.a, p.b, e.at, e.d, e.level
        FROM piece AS p
        JOIN pcu_minute AS m ON m.app_id = :app AND m.minute = p.row_at
        CROSS JOIN LATERAL unnest(m.edge_at, m.edge_delta, m.edge_level) AS e(at, d, level)
        WHERE p.kind = 'edges' AND p.a > 0 AND p.b < {pcu.GRAIN_US} AND e.at < p.b
    ),
    run AS (
        SELECT p.pos, p.s, p.e, m.minute, m.delta, m.peak, m.area_us,
               sum(m.delta) OVER (PARTITION BY p.pos ORDER BY m.minute) - m.delta AS before
        FROM piece AS p
        JOIN pcu_minute AS m ON m.app_id = :app AND m.minute >= p.s AND m.minute < p.e
        WHERE p.kind = 'minutes'
    )
    SELECT pos, edge_level[i1] - coalesce(edge_level[i0], 0),
           CASE WHEN a = 0 THEN edge_pmax[i1] ELSE edge_smax[i0 + 1] END
               - coalesce(edge_level[i0], 0),
           edge_at[i0 + 1] = a,
           b::bigint * (edge_level[i1] - coalesce(edge_level[i0], 0))
               - (edge_wsum[i1] - coalesce(edge_wsum[i0], 0))
    FROM cut WHERE i1 > i0
    UNION ALL
    SELECT pos,
           sum(d) FILTER (WHERE at >= a)::int,
           (max(level) FILTER (WHERE at >= a) - coalesce(sum(d) FILTER (WHERE at < a), 0))::int,
           min(at) FILTER (WHERE at >= a) = min(a),
           sum(d::bigint * (b - at)) FILTER (WHERE at >= a)::bigint
    FROM edge GROUP BY pos HAVING count(*) FILTER (WHERE at >= a) > 0
    UNION ALL
    SELECT pos, sum(delta)::int, max(before + peak)::int, min(minute) = min(s),
           sum(area_us + delta * ((extract(epoch FROM e - minute) * 1000000)::bigint
                                  - {pcu.GRAIN_US}))::bigint
    FROM run GROUP BY pos
    UNION ALL
    SELECT p.pos, h.cum[p.b + 1] - h.cum[p.a + 1],
           CASE WHEN p.a = 0 THEN h.pmax[p.b + 1] ELSE h.smax[p.a + 1] END - h.cum[p.a + 1],
           true,
           h.area[p.b + 1] - h.area[p.a + 1]
               - h.cum[p.a + 1]::bigint * (p.b - p.a) * {pcu.GRAIN_US}
    FROM piece AS p JOIN pcu_hour AS h ON h.app_id = :app AND h.hour = p.row_at
    WHERE p.kind = 'hour'
    """
)

_FIRST_MINUTE = text(
    """
    SELECT minute, before, edge_at, edge_delta FROM (
        SELECT minute, peak, edge_at, edge_delta,
               sum(delta) OVER (ORDER BY minute) - delta AS before
        FROM pcu_minute WHERE app_id = :app AND minute >= :s AND minute < :e
    ) AS run
    WHERE :level + before + peak >= :value
    ORDER BY minute LIMIT 1
    """
)

_MINUTE_EDGES = text(
    "SELECT edge_at, edge_delta FROM pcu_minute WHERE app_id = :app AND minute = :minute"
)

# Minutes of `[s, e)` with changes the folder has not folded yet (µs since the epoch).
_DIRTY = text(
    """
    SELECT DISTINCT (floor(extract(epoch FROM at) / 60) * 60000000)::bigint
    FROM pcu_change WHERE app_id = :app AND at >= :s AND at < :e"""
)

# The agents' own edges in each of some minutes: the truth for minutes not folded yet.
_LIVE_EDGES = text(
    """
    SELECT e.at, e.d FROM unnest(CAST(:minutes AS timestamptz[])) AS m(minute)
    CROSS JOIN LATERAL (
        SELECT active_from AS at, 1 AS d FROM agent
        WHERE app_id = :app AND active_from >= m.minute
          AND active_from < m.minute + interval '1 minute'
        UNION ALL
        SELECT active_until, -1 FROM agent
        WHERE app_id = :app AND active_until >= m.minute
          AND active_until < m.minute + interval '1 minute'
    ) AS e"""
)


@dataclass(frozen=True, slots=True, kw_only=True)
class Peak:
    value: int
    at: int | None  # µs; None when nothing was active in the window


async def level_before(conn: AsyncConnection, *, app_id: str, at: int) -> int:
    """Agents holding a slot just before `at` (µs)."""
    count = await conn.scalar(_LEVEL_BEFORE, {"app": app_id, "at": pcu.from_us(at)})
    return int(count or 0)


def _bounds(part: pcu.Piece) -> tuple[int, int, int]:
    """The row a piece is read from, and its bounds in that row's units."""
    if part.kind == "edges":
        minute = pcu.floor_grain(part.start)
        return minute, part.start - minute, part.end - minute
    hour = part.start - part.start % pcu.HOUR_US
    return hour, (part.start - hour) // pcu.GRAIN_US, (part.end - hour) // pcu.GRAIN_US


async def spans(
    conn: AsyncConnection, *, app_id: str, parts: Sequence[pcu.Piece]
) -> dict[int, pcu.Span]:
    """Each piece's summary by its position in `parts` (pieces without edges are left out)."""
    if not parts:
        return {}
    bounds = [_bounds(part) for part in parts]

    def joined(values: Iterable[object]) -> str:
        # One text parameter per column: far cheaper to send than thousands of array elements.
        return ",".join(map(str, values))

    result = await conn.execute(
        _SPANS,
        {
            "app": app_id,
            "kind": joined(part.kind for part in parts),
            "s": joined(part.start for part in parts),
            "e": joined(part.end for part in parts),
            "row": joined(row for row, _, _ in bounds),
            "a": joined(a for _, a, _ in bounds),
            "b": joined(b for _, _, b in bounds),
        },
    )
    out: dict[int, pcu.Span] = {}
    for pos, delta, peak, at_start, area in result.all():
        part = parts[pos]
        # Unless the first edge (or row) is at the piece's start, its entry level holds there.
        high = peak if at_start else max(peak, 0)
        out[pos] = pcu.Span(part.start, part.end, delta=delta, peak=high, area=area)
    return out


async def series(
    conn: AsyncConnection, *, app_id: str, start: int, end: int, step: int
) -> list[pcu.Point]:
    """Exact max and time-weighted average concurrency per `step` over `[start, end)` (µs)."""
    grid = pcu.buckets(start, end, step)
    parts, found = await _summaries(conn, app_id=app_id, grid=grid)
    level = await level_before(conn, app_id=app_id, at=start)
    return pcu.fold(level, grid, parts, found)


async def _summaries(
    conn: AsyncConnection, *, app_id: str, grid: Sequence[tuple[int, int]]
) -> tuple[list[pcu.Piece], dict[int, pcu.Span]]:
    """The grid's pieces (minutes not folded yet cut out) and their summaries."""
    dirty = await dirty_minutes(conn, app_id=app_id, start=grid[0][0], end=grid[-1][1])
    parts = pcu.pieces(grid, dirty=dirty)
    found = await spans(conn, app_id=app_id, parts=parts)
    live = [(i, part) for i, part in enumerate(parts) if part.kind == "live"]
    if live:
        edges = await live_edges(conn, app_id=app_id, minutes=dirty)
        for position, part in live:
            found[position] = pcu.summarise(edges, part.start, part.end)
    return parts, found


async def dirty_minutes(conn: AsyncConnection, *, app_id: str, start: int, end: int) -> list[int]:
    """Minutes overlapping `[start, end)` (µs) with changes not folded into the rollup yet."""
    bounds = {"app": app_id, "s": pcu.from_us(pcu.floor_grain(start)), "e": pcu.from_us(end)}
    return sorted(int(row[0]) for row in await conn.execute(_DIRTY, bounds))


async def live_edges(
    conn: AsyncConnection, *, app_id: str, minutes: Sequence[int]
) -> list[tuple[int, int]]:
    """The agents' `(at, delta)` edges inside these minutes (µs), read from the agent rows."""
    rows = await conn.execute(
        _LIVE_EDGES, {"app": app_id, "minutes": [pcu.from_us(m) for m in minutes]}
    )
    return [(pcu.to_us(at), int(d)) for at, d in rows]


async def peak(conn: AsyncConnection, *, app_id: str, start: int, end: int) -> Peak:
    """The highest concurrency over `[start, end)` and the first moment it was reached.

    Read as one bucket, whose pieces are at most an hour each; the first piece reaching the
    peak is then searched minute row by minute row, and that minute edge by edge.
    """
    grid = [(start, end)]
    parts, found = await _summaries(conn, app_id=app_id, grid=grid)
    level = await level_before(conn, app_id=app_id, at=start)
    value = max(point.max for point in pcu.fold(level, grid, parts, found))
    if value <= 0:
        return Peak(value=0, at=None)
    reached = pcu.first_reach(level, parts, found, value)
    assert reached is not None  # the fold above found `value` in these pieces
    position, before = reached
    part = parts[position]
    if part.kind in ("edges", "live"):
        minute = pcu.floor_grain(part.start)
        edges = (
            await live_edges(conn, app_id=app_id, minutes=[minute])
            if part.kind == "live"
            else await _minute_edges(conn, app_id=app_id, minute=minute)
        )
        inside = [(at, d) for at, d in edges if part.start <= at < part.end]
        return Peak(value=value, at=pcu.first_moment(before, inside, part.start, value))
    return Peak(value=value, at=await _first_in_minutes(conn, app_id, part, before, value))


async def _first_in_minutes(
    conn: AsyncConnection, app_id: str, part: pcu.Piece, level: int, value: int
) -> int:
    """The first moment in a run of whole minutes at which the level reaches `value`."""
    if level >= value:
        at_start = [
            d
            for at, d in await _minute_edges(conn, app_id=app_id, minute=part.start)
            if at == part.start
        ]
        if level + sum(at_start) >= value:
            return part.start  # already there as the run starts
    bounds = {"app": app_id, "s": pcu.from_us(part.start), "e": pcu.from_us(part.end)}
    row = (await conn.execute(_FIRST_MINUTE, {**bounds, "level": level, "value": value})).first()
    assert row is not None  # the piece's summary says `value` is reached inside it
    minute = pcu.to_us(row.minute)
    edges = _edges_of(minute, row.edge_at, row.edge_delta)
    return pcu.first_moment(level + row.before, edges, minute, value)


async def _minute_edges(
    conn: AsyncConnection, *, app_id: str, minute: int
) -> list[tuple[int, int]]:
    row = (
        await conn.execute(_MINUTE_EDGES, {"app": app_id, "minute": pcu.from_us(minute)})
    ).first()
    return [] if row is None else _edges_of(minute, row.edge_at, row.edge_delta)


def _edges_of(minute: int, offsets: Sequence[Any], deltas: Sequence[Any]) -> list[tuple[int, int]]:
    return [(minute + int(at), int(d)) for at, d in zip(offsets, deltas, strict=True)]


async def current(conn: AsyncConnection, *, app_id: str) -> int:
    return await rollup.current_pcu(conn, app_id=app_id)


@contextlib.asynccontextmanager
async def snapshot(engine: AsyncEngine) -> AsyncIterator[AsyncConnection]:
    """A read-only connection whose statements share one snapshot (REPEATABLE READ), so the
    changes not yet folded, the rollup and the agents agree."""
    async with engine.connect() as conn:
        await conn.execution_options(isolation_level="REPEATABLE READ")
        yield conn


def as_datetime(at: int | None) -> datetime | None:
    return None if at is None else pcu.from_us(at)
