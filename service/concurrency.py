"""Read-side SQL for PCU: the level at a moment, span summaries, series and peaks.

The arithmetic is `pcu`'s; this module only fetches what it needs. Whole minutes come from the
`pcu_minute` rollup (kept by `rollup` in the ingest transaction), partial minutes from the agents'
interval edges, and the level just before a series starts from the GiST index on the agents'
active ranges. A series of B buckets costs one statement over at most 3·B pieces, whatever the
number of agents: a month at 1-hour steps adds ~43,000 rollup rows, never ~2,000,000 edges.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from service import pcu, rollup

_LEVEL_BEFORE = text(
    """
    SELECT count(*) FROM agent
    WHERE app_id = :app AND active_from IS NOT NULL
      AND tstzrange(active_from, active_until) @> (CAST(:at AS timestamptz) - interval '1 microsecond')
    """
)

# One summary per piece: whole minutes added up from the rollup (`pcu.Span.then` in SQL), partial
# minutes summarised from the edges. `at_start`: whether the piece's first row is at its start.
_SPANS = text(
    """
    WITH piece AS (
        SELECT * FROM unnest(
            CAST(:pos AS int[]), CAST(:s AS timestamptz[]), CAST(:e AS timestamptz[]),
            CAST(:raw AS boolean[])
        ) AS p(pos, s, e, raw)
    ),
    run AS (
        SELECT p.pos, p.s, p.e, m.minute, m.delta, m.peak, m.area_us,
               coalesce(sum(m.delta) OVER (
                   PARTITION BY p.pos ORDER BY m.minute
                   ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING
               ), 0) AS before
        FROM piece AS p
        JOIN pcu_minute AS m ON m.app_id = :app AND m.minute >= p.s AND m.minute < p.e
        WHERE NOT p.raw
    ),
    edge AS (
        SELECT p.pos, a.active_from AS at, 1 AS d
        FROM piece AS p
        JOIN agent AS a ON a.app_id = :app AND a.active_from >= p.s AND a.active_from < p.e
        WHERE p.raw
        UNION ALL
        SELECT p.pos, a.active_until, -1
        FROM piece AS p
        JOIN agent AS a ON a.app_id = :app AND a.active_until >= p.s AND a.active_until < p.e
        WHERE p.raw
    ),
    point AS (
        SELECT pos, at, sum(d) AS d,
               sum(sum(d)) OVER (PARTITION BY pos ORDER BY at) AS level
        FROM edge GROUP BY pos, at
    )
    SELECT pos, sum(delta)::int AS delta, max(before + peak)::int AS peak,
           min(minute) = min(s) AS at_start,
           sum(area_us + delta * (extract(epoch FROM e - minute - interval '1 minute')
                                  * 1000000)::bigint)::bigint AS area
    FROM run GROUP BY pos
    UNION ALL
    SELECT point.pos, sum(d)::int, max(level)::int, min(at) = min(piece.s),
           sum(d * (extract(epoch FROM piece.e - at) * 1000000)::bigint)::bigint
    FROM point JOIN piece USING (pos) GROUP BY point.pos
    """
)

_FIRST_MINUTE = text(
    """
    SELECT minute, before FROM (
        SELECT minute, peak,
               coalesce(sum(delta) OVER (
                   ORDER BY minute ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING
               ), 0) AS before
        FROM pcu_minute WHERE app_id = :app AND minute >= :s AND minute < :e
    ) AS run
    WHERE :level + before + peak >= :value
    ORDER BY minute LIMIT 1
    """
)

_FIRST_ROW = text(
    "SELECT min(minute) FROM pcu_minute WHERE app_id = :app AND minute >= :s AND minute < :e"
)

_EDGES = text(
    """
    SELECT active_from AS at, 1 AS d FROM agent
    WHERE app_id = :app AND active_from >= :s AND active_from < :e
    UNION ALL
    SELECT active_until, -1 FROM agent
    WHERE app_id = :app AND active_until >= :s AND active_until < :e
    """
)


@dataclass(frozen=True, slots=True, kw_only=True)
class Peak:
    value: int
    at: int | None  # µs; None when nothing was ever active in the window


async def level_before(conn: AsyncConnection, *, app_id: str, at: int) -> int:
    """Agents holding a slot just before `at` (µs)."""
    count = await conn.scalar(_LEVEL_BEFORE, {"app": app_id, "at": pcu.from_us(at)})
    return int(count or 0)


async def spans(
    conn: AsyncConnection, *, app_id: str, parts: Sequence[pcu.Piece]
) -> dict[int, pcu.Span]:
    """Each piece's summary by its position in `parts` (pieces without edges are left out)."""
    if not parts:
        return {}
    result = await conn.execute(
        _SPANS,
        {
            "app": app_id,
            "pos": list(range(len(parts))),
            "s": [pcu.from_us(p.start) for p in parts],
            "e": [pcu.from_us(p.end) for p in parts],
            "raw": [p.raw for p in parts],
        },
    )
    out: dict[int, pcu.Span] = {}
    for pos, delta, peak, at_start, area in result.all():
        part = parts[pos]
        # The level before the first row holds at the piece's start unless a row begins there.
        high = peak if at_start else max(peak, 0)
        out[pos] = pcu.Span(part.start, part.end, delta=delta, peak=high, area=area)
    return out


async def series(
    conn: AsyncConnection, *, app_id: str, start: int, end: int, step: int
) -> list[pcu.Point]:
    """Exact max and time-weighted average concurrency per `step` over `[start, end)` (µs)."""
    grid = pcu.buckets(start, end, step)
    parts = pcu.pieces(grid)
    level = await level_before(conn, app_id=app_id, at=start)
    return pcu.fold(level, grid, parts, await spans(conn, app_id=app_id, parts=parts))


async def peak(conn: AsyncConnection, *, app_id: str, start: int, end: int) -> Peak:
    """The highest concurrency over `[start, end)` and the first moment it was reached."""
    grid = [(start, end)]
    parts = pcu.pieces(grid)
    level = await level_before(conn, app_id=app_id, at=start)
    found = await spans(conn, app_id=app_id, parts=parts)
    value = pcu.fold(level, grid, parts, found)[0].max
    if value <= 0:
        return Peak(value=0, at=None)
    ordered = [found.get(i) or pcu.Span(p.start, p.end) for i, p in enumerate(parts)]
    reached = pcu.first_reach(level, ordered, value)
    assert reached is not None  # the fold above found `value` in these spans
    index, before = reached
    part = parts[index]
    if not part.raw:
        part, before = await _first_minute(
            conn, app_id=app_id, part=part, level=before, value=value
        )
    edges = await _edges(conn, app_id=app_id, start=part.start, end=part.end)
    return Peak(value=value, at=pcu.first_moment(before, edges, part.start, value))


async def _first_minute(
    conn: AsyncConnection, *, app_id: str, part: pcu.Piece, level: int, value: int
) -> tuple[pcu.Piece, int]:
    """Narrow a run of whole minutes to the minute where `value` is first reached."""
    bounds = {"app": app_id, "s": pcu.from_us(part.start), "e": pcu.from_us(part.end)}
    first_row = await conn.scalar(_FIRST_ROW, bounds)
    if level >= value and (first_row is None or pcu.to_us(first_row) > part.start):
        # Already at `value` when the run starts, with no edge at its start.
        return pcu.Piece(part.bucket, part.start, part.start + 1, raw=True), level
    row = (await conn.execute(_FIRST_MINUTE, {**bounds, "level": level, "value": value})).one()
    minute = pcu.to_us(row.minute)
    return pcu.Piece(part.bucket, minute, minute + pcu.GRAIN_US, raw=True), level + row.before


async def _edges(
    conn: AsyncConnection, *, app_id: str, start: int, end: int
) -> list[tuple[int, int]]:
    result = await conn.execute(
        _EDGES, {"app": app_id, "s": pcu.from_us(start), "e": pcu.from_us(end)}
    )
    return [(pcu.to_us(at), d) for at, d in result.all()]


async def current(conn: AsyncConnection, *, app_id: str) -> int:
    return await rollup.current_pcu(conn, app_id=app_id)


def as_datetime(at: int | None) -> datetime | None:
    return None if at is None else pcu.from_us(at)
