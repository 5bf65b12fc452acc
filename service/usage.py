"""Usage per app: agent time, sessions and failures per bucket, exact, off a rollup by hour.

What an agent counts for (CONTRACT §6.1): its active interval `[active_from, active_until)`
(open while active: up to now) for `agent_seconds`, its start `active_from` for `sessions`, and,
when it ended `FAILED`, its `stopped_at` for `failed`; its `labels` say which group it is in.

The rollup (`usage_hour`) holds per app, hour and label set the microseconds of overlap of the
CLOSED intervals of at most a day (`LONG`) with the hour, the starts and the FAILED stops in it.
Longer intervals (a stuck agent, or a signed notification claiming a start years ago) are read
from the agents at read time, like the open ones: so one agent's change marks at most a day's
hours and a few more, whatever its times say. The write path marks the
hours an agent's change touches (`marks()`, old and new, written with the change into
`insight_change`); `fold()` recomputes those hours from the agents and deletes the marks it saw.
So for every hour without a mark, the rollup is what the agents say.

The same fold writes `usage_minute`: per app, hour and label set, over the minutes in which the
label set has anything, the agent time, starts and FAILED stops up to each minute, and how many
of those intervals hold each minute's first instant inside (the level). The figures of an
unmarked hour from its start to any instant t inside it (a cut, `plan()`) are then the minutes
before t's minute, plus the level at that minute's first instant M times t - M, plus the few
agents that start, end or fail in [M, t) (index probes on start, end and FAILED stop).

A read (`series()`, in one REPEATABLE READ snapshot) takes each whole unmarked hour of a bucket
from `usage_hour`, the part of an unmarked hour as the difference of two cuts (the cut at the
hour's end is its `usage_hour` row), and a marked hour's part from the agents themselves (GiST
range overlap, start and stop indexes). Agents still active are added from their own index up
to the snapshot's `now()`, and so are the closed intervals longer than a day
(`ix_agent_long_interval`).
Everything is summed in integer microseconds; `agent_seconds` is that sum
divided by 10⁶ once (the double nearest the exact figure).

Without a label key, a read needs no label sets and costs the same from any second
(`_all_agents`): agent time is the area under the app's concurrency (PCU's rollup) less the part
of each open interval after now, and starts and FAILED stops come from `usage_count` (per app and
hour, how many happened before each minute; folded with `usage_hour`) and, for the parts of
minutes at bucket edges and for marked hours, from the agents.
"""

from __future__ import annotations

import bisect
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, NamedTuple

import psycopg
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from service import concurrency, db, lifecycle, pcu
from service.record import AgentRow

HOUR_US: Final = pcu.HOUR_US
_FAILED: Final = lifecycle.State.FAILED.value
Figures = list[int]  # [agent µs, sessions, failed]
# Closed intervals longer than this are not in the rollup (see the module); as SQL and in µs.
LONG: Final = "interval '1 day'"
LONG_US: Final = 24 * HOUR_US
# Marked hours one fold recomputes at most (the oldest first), as the other insight folds.
FOLD_HOURS: Final = 168


def footprint(row: AgentRow) -> tuple[Any, ...]:
    """What usage reads of an agent: its interval, labels and FAILED stop."""
    failed = row.stopped_at if row.state is lifecycle.State.FAILED else None
    return (row.active_from, row.active_until, row.labels, failed)


def hours(row: AgentRow) -> set[int]:
    """The hours (µs) whose rollup counts the agent: its start, every hour its closed interval
    of at most a day overlaps, its FAILED stop. An open or longer interval counts in its start
    hour only (as a session)."""
    out: set[int] = set()
    if row.active_from is not None:
        start = pcu.to_us(row.active_from)
        out.add(start - start % HOUR_US)
        if row.active_until is not None and pcu.to_us(row.active_until) - start <= LONG_US:
            out.update(range(start - start % HOUR_US, pcu.to_us(row.active_until), HOUR_US))
    if row.state is lifecycle.State.FAILED and row.stopped_at is not None:
        stop = pcu.to_us(row.stopped_at)
        out.add(stop - stop % HOUR_US)
    return out


def marks(before: AgentRow, after: AgentRow) -> set[int]:
    """The hours (µs) a change of one agent from `before` to `after` changes in the rollup."""
    if footprint(before) == footprint(after):
        return set()
    return hours(before) | hours(after)


def _us(expr: str) -> str:
    """µs since the epoch of a timestamptz expression (exact: `extract` answers numeric)."""
    return f"(extract(epoch FROM {expr}) * 1000000)::bigint"


def _minute_of(at: str) -> str:
    """The minute of the piece's hour (0..59) at which the timestamptz `at` falls."""
    return f"floor(extract(epoch FROM {at} - p.s) / 60)::int"


def _counts(at_start: str, at_stop: str) -> str:
    """The starts and FAILED stops alone, as in `_FROM_AGENTS`, grouped by piece and the
    expressions `at_start` (of a start) and `at_stop` (of a FAILED stop)."""
    return f"""
    SELECT p.pos, a.grp, 0 AS agent_us, a.n AS sessions, 0 AS failed
    FROM piece AS p CROSS JOIN LATERAL (
        SELECT {at_start} AS grp, count(*) AS n FROM agent AS a
        WHERE a.app_id = %(app)s AND a.active_from >= p.s AND a.active_from < p.e
        GROUP BY 1
    ) AS a
    UNION ALL
    SELECT p.pos, a.grp, 0, 0, a.n
    FROM piece AS p CROSS JOIN LATERAL (
        SELECT {at_stop} AS grp, count(*) AS n FROM agent AS a
        WHERE a.app_id = %(app)s AND a.stopped_at >= p.s AND a.stopped_at < p.e
          AND a.state = '{_FAILED}'
        GROUP BY 1
    ) AS a"""


# The agents' figures over pieces [s, e) (`piece`: s, e as timestamptz, pos), grouped by
# piece and `{group}`: closed intervals' overlap (GiST on the range), starts, FAILED stops. Each
# is a LATERAL index probe per piece, aggregated there (which also keeps it one: joined plainly,
# the planner's guess for a range given as a parameter made it compare every FAILED agent with
# every piece); overlaps are summed as intervals, exact in µs, and turned into a number once.
_FROM_AGENTS: Final = f"""
    SELECT p.pos, a.grp, a.agent_us, 0 AS sessions, 0 AS failed
    FROM piece AS p CROSS JOIN LATERAL (
        SELECT {{group}} AS grp,
               {_us("sum(least(a.active_until, p.e) - greatest(a.active_from, p.s))")}
                   AS agent_us
        FROM agent AS a
        WHERE a.app_id = %(app)s AND a.active_from IS NOT NULL AND a.active_until IS NOT NULL
          AND tstzrange(a.active_from, a.active_until) && tstzrange(p.s, p.e)
          AND a.active_until - a.active_from <= {LONG}
        GROUP BY 1
    ) AS a
    UNION ALL {_counts("{group}", "{group}")}"""

# What `usage_minute` holds of the hours `piece` (s, e, pos: the hour), per label set and minute
# k of the hour: the overlap (µs) of the intervals `_FROM_AGENTS` counts with the minute, how
# many of them hold its first instant inside (started before it; their end is after it, as
# they overlap it), and its starts and FAILED stops. An interval's minutes are those from its
# clipped start's to the one holding its clipped end's last microsecond.
_BY_MINUTE: Final = f"""
    SELECT p.pos AS hour, a.labels, k.k,
           least(a.e, k.m + {pcu.GRAIN_US}) - greatest(a.s, k.m) AS agent_us,
           (a.s0 < k.m)::int AS level, 0 AS sessions, 0 AS failed
    FROM piece AS p CROSS JOIN LATERAL (
        SELECT a.labels, {_us("a.active_from")} AS s0, {_us("p.s")} AS h,
               greatest({_us("a.active_from")}, {_us("p.s")}) AS s,
               least({_us("a.active_until")}, {_us("p.e")}) AS e
        FROM agent AS a
        WHERE a.app_id = %(app)s AND a.active_from IS NOT NULL AND a.active_until IS NOT NULL
          AND tstzrange(a.active_from, a.active_until) && tstzrange(p.s, p.e)
          AND a.active_until - a.active_from <= {LONG}
    ) AS a
    CROSS JOIN LATERAL (
        SELECT k, a.h + k::bigint * {pcu.GRAIN_US} AS m
        FROM generate_series(
            ((a.s - a.h) / {pcu.GRAIN_US})::int, ((a.e - a.h - 1) / {pcu.GRAIN_US})::int
        ) AS k
    ) AS k
    UNION ALL
    SELECT p.pos, a.labels, a.k, 0, 0, a.n, 0
    FROM piece AS p CROSS JOIN LATERAL (
        SELECT a.labels, {_minute_of("a.active_from")} AS k, count(*) AS n FROM agent AS a
        WHERE a.app_id = %(app)s AND a.active_from >= p.s AND a.active_from < p.e
        GROUP BY 1, 2
    ) AS a
    UNION ALL
    SELECT p.pos, a.labels, a.k, 0, 0, 0, a.n
    FROM piece AS p CROSS JOIN LATERAL (
        SELECT a.labels, {_minute_of("a.stopped_at")} AS k, count(*) AS n FROM agent AS a
        WHERE a.app_id = %(app)s AND a.stopped_at >= p.s AND a.stopped_at < p.e
          AND a.state = '{_FAILED}'
        GROUP BY 1, 2
    ) AS a"""

# One app's first `FOLD_HOURS` marked hours that have ended recomputed in ONE statement (one
# snapshot), so that a backlog (a migration marks every hour) is folded in bounded steps. The
# current hour stays marked: it changes with every start and stop, reads compute it from the
# agents, and folding it every few seconds would read its agents each time. The marks the
# statement can see of those hours are deleted (a mark committed after its snapshot stays, for
# the next fold), their hours computed from the agents by label set and written over the
# rollup's (a label set gone from an hour loses its row), their starts and FAILED stops per
# minute into `usage_count` (an hour with none loses its row), and their figures by minute per
# label set into `usage_minute` (as `usage_hour`'s rows).
FOLD_SQL: Final = f"""
    WITH first_hours AS (
        SELECT DISTINCT hour FROM insight_change
        WHERE app_id = %(app)s AND kind = 'usage' AND hour < date_trunc('hour', now(), 'UTC')
        ORDER BY hour LIMIT {FOLD_HOURS}
    ),
    taken AS (
        DELETE FROM insight_change
        WHERE app_id = %(app)s AND kind = 'usage' AND hour IN (SELECT hour FROM first_hours)
        RETURNING hour
    ),
    piece AS (
        SELECT DISTINCT hour AS s, hour + interval '1 hour' AS e, hour AS pos
        FROM taken
    ),
    computed AS (
        SELECT pos AS hour, grp AS labels, sum(agent_us)::bigint AS agent_us,
               sum(sessions)::int AS sessions, sum(failed)::int AS failed
        FROM ({_FROM_AGENTS.format(group="a.labels")}) AS f
        GROUP BY pos, grp
    ),
    written AS (
        INSERT INTO usage_hour (app_id, hour, labels, agent_us, sessions, failed)
        SELECT %(app)s, hour, labels, agent_us, sessions, failed FROM computed
        ON CONFLICT (app_id, hour, labels) DO UPDATE
        SET agent_us = excluded.agent_us, sessions = excluded.sessions, failed = excluded.failed
    ),
    cleared AS (
        DELETE FROM usage_hour AS u USING piece AS p
        WHERE u.app_id = %(app)s AND u.hour = p.s
          AND NOT EXISTS (SELECT FROM computed AS c WHERE c.hour = u.hour AND c.labels = u.labels)
    ),
    by_minute AS (
        SELECT hour, labels, k, sum(agent_us) AS agent_us, sum(level) AS level,
               sum(sessions) AS sessions, sum(failed) AS failed
        FROM ({_BY_MINUTE}) AS f
        GROUP BY 1, 2, 3
    ),
    per_minute AS (
        SELECT hour, k, sum(sessions) AS sessions, sum(failed) AS failed
        FROM by_minute WHERE sessions > 0 OR failed > 0
        GROUP BY 1, 2
    ),
    running AS (
        SELECT h.hour, k.k,
               sum(coalesce(m.sessions, 0)) OVER w AS sessions,
               sum(coalesce(m.failed, 0)) OVER w AS failed
        FROM (SELECT DISTINCT hour FROM per_minute) AS h
        CROSS JOIN generate_series(0, 59) AS k(k)
        LEFT JOIN per_minute AS m ON m.hour = h.hour AND m.k = k.k
        WINDOW w AS (PARTITION BY h.hour ORDER BY k.k)
    ),
    counted AS (
        SELECT hour, ARRAY[0] || array_agg(sessions::int ORDER BY k) AS sessions,
               ARRAY[0] || array_agg(failed::int ORDER BY k) AS failed
        FROM running GROUP BY hour
    ),
    counts_written AS (
        INSERT INTO usage_count (app_id, hour, sessions, failed)
        SELECT %(app)s, hour, sessions, failed FROM counted
        ON CONFLICT (app_id, hour) DO UPDATE
        SET sessions = excluded.sessions, failed = excluded.failed
    ),
    counts_cleared AS (
        DELETE FROM usage_count AS u USING piece AS p
        WHERE u.app_id = %(app)s AND u.hour = p.s
          AND NOT EXISTS (SELECT FROM counted AS c WHERE c.hour = u.hour)
    ),
    minute_running AS (
        SELECT s.hour, s.labels, s.first, k.k, coalesce(m.level, 0) AS level,
               sum(coalesce(m.agent_us, 0)) OVER w AS agent_us,
               sum(coalesce(m.sessions, 0)) OVER w AS sessions,
               sum(coalesce(m.failed, 0)) OVER w AS failed
        FROM (
            SELECT hour, labels, min(k) AS first, max(k) AS last FROM by_minute GROUP BY 1, 2
        ) AS s
        CROSS JOIN LATERAL generate_series(s.first, s.last) AS k(k)
        LEFT JOIN by_minute AS m ON m.hour = s.hour AND m.labels = s.labels AND m.k = k.k
        WINDOW w AS (PARTITION BY s.hour, s.labels ORDER BY k.k)
    ),
    minutes AS (
        SELECT hour, labels, first, array_agg(agent_us::bigint ORDER BY k) AS agent_us,
               array_agg(level::int ORDER BY k) AS level,
               array_agg(sessions::int ORDER BY k) AS sessions,
               array_agg(failed::int ORDER BY k) AS failed
        FROM minute_running GROUP BY hour, labels, first
    ),
    minutes_written AS (
        INSERT INTO usage_minute (app_id, hour, labels, first, agent_us, level, sessions, failed)
        SELECT %(app)s, hour, labels, first, agent_us, level, sessions, failed FROM minutes
        ON CONFLICT (app_id, hour, labels) DO UPDATE
        SET first = excluded.first, agent_us = excluded.agent_us, level = excluded.level,
            sessions = excluded.sessions, failed = excluded.failed
    ),
    minutes_cleared AS (
        DELETE FROM usage_minute AS u USING piece AS p
        WHERE u.app_id = %(app)s AND u.hour = p.s
          AND NOT EXISTS (SELECT FROM minutes AS c WHERE c.hour = u.hour AND c.labels = u.labels)
    )
    SELECT count(*) FROM taken"""

# Spans as sent by `series()`: one comma-joined text per column (cheap to send).
_PIECES: Final = """
    piece AS (
        SELECT timestamptz 'epoch' + s * interval '1 microsecond' AS s,
               timestamptz 'epoch' + e * interval '1 microsecond' AS e, pos
        FROM unnest(string_to_array(%(s)s, ',')::bigint[], string_to_array(%(e)s, ',')::bigint[],
                    string_to_array(%(pos)s, ',')::int[]) AS p(s, e, pos)
    )"""

_READ_AGENTS: Final = f"""
    WITH {_PIECES}
    SELECT pos, grp, sum(agent_us)::bigint, sum(sessions)::int, sum(failed)::int
    FROM ({_FROM_AGENTS.format(group="a.labels ->> %(key)s::text")}) AS f
    GROUP BY pos, grp"""

# Whole unmarked hours from the rollup: (hour, pos) per hour and bucket.
_READ_ROLLUP: Final = """
    SELECT r.pos, u.labels ->> %(key)s::text, sum(u.agent_us)::bigint, sum(u.sessions)::int,
           sum(u.failed)::int
    FROM unnest(string_to_array(%(hour)s, ',')::bigint[], string_to_array(%(pos)s, ',')::int[])
        AS r(hour, pos)
    JOIN usage_hour AS u
      ON u.app_id = %(app)s AND u.hour = timestamptz 'epoch' + r.hour * interval '1 microsecond'
    GROUP BY 1, 2"""

# The figures of unmarked hours from their start to instants inside them, per cut `pos` and
# group: sent as the hour, the minute k of the instant and its µs r into that minute. From
# `usage_minute`, minutes [0, k) (the row's figures through minute k - 1: none before its
# first minute, its last ones after its last) and the intervals holding minute k's first
# instant M (each adds r; none outside the row's minutes); from the agents, the part
# [M, M + r) of the minute: a start at s there adds M + r - s (and a session), an end at e
# inside it takes M + r - e off, a FAILED stop there counts. Only the intervals `usage_hour`
# counts (closed, not empty, at most a day) add time.
_READ_CUTS: Final = f"""
    WITH sent AS (
        SELECT hour, k, r, pos, hour + k::bigint * {pcu.GRAIN_US} AS m_us
        FROM unnest(string_to_array(%(hour)s, ',')::bigint[], string_to_array(%(k)s, ',')::int[],
                    string_to_array(%(r)s, ',')::bigint[], string_to_array(%(pos)s, ',')::int[])
            AS c(hour, k, r, pos)
    ),
    cut AS (
        SELECT timestamptz 'epoch' + hour * interval '1 microsecond' AS hour, k, r, pos,
               timestamptz 'epoch' + m_us * interval '1 microsecond' AS m,
               timestamptz 'epoch' + (m_us + r) * interval '1 microsecond' AS t, m_us + r AS t_us
        FROM sent
    )
    SELECT pos, grp, sum(agent_us)::bigint, sum(sessions)::int, sum(failed)::int
    FROM (
        SELECT c.pos, u.labels ->> %(key)s::text AS grp,
               coalesce(u.agent_us[least(c.k - u.first, n.n)], 0)
                   + coalesce(u.level[c.k - u.first + 1], 0) * c.r AS agent_us,
               coalesce(u.sessions[least(c.k - u.first, n.n)], 0) AS sessions,
               coalesce(u.failed[least(c.k - u.first, n.n)], 0) AS failed
        FROM cut AS c
        JOIN usage_minute AS u ON u.app_id = %(app)s AND u.hour = c.hour
        CROSS JOIN LATERAL (SELECT cardinality(u.level) AS n) AS n
        UNION ALL
        SELECT c.pos, a.grp, a.agent_us, a.n, 0
        FROM cut AS c CROSS JOIN LATERAL (
            SELECT a.labels ->> %(key)s::text AS grp, count(*) AS n,
                   coalesce(sum(c.t_us - {_us("a.active_from")}) FILTER (
                       WHERE a.active_until > a.active_from
                         AND a.active_until - a.active_from <= {LONG}
                   ), 0) AS agent_us
            FROM agent AS a
            WHERE c.r > 0 AND a.app_id = %(app)s AND a.active_from >= c.m AND a.active_from < c.t
            GROUP BY 1
        ) AS a
        UNION ALL
        SELECT c.pos, a.grp, -a.agent_us, 0, 0
        FROM cut AS c CROSS JOIN LATERAL (
            SELECT a.labels ->> %(key)s::text AS grp,
                   sum(c.t_us - {_us("a.active_until")}) AS agent_us
            FROM agent AS a
            WHERE c.r > 0 AND a.app_id = %(app)s AND a.active_until > c.m AND a.active_until < c.t
              AND a.active_until > a.active_from AND a.active_until - a.active_from <= {LONG}
            GROUP BY 1
        ) AS a
        UNION ALL
        SELECT c.pos, a.grp, 0, 0, a.n
        FROM cut AS c CROSS JOIN LATERAL (
            SELECT a.labels ->> %(key)s::text AS grp, count(*) AS n FROM agent AS a
            WHERE c.r > 0 AND a.app_id = %(app)s AND a.stopped_at >= c.m AND a.stopped_at < c.t
              AND a.state = '{_FAILED}'
            GROUP BY 1
        ) AS a
    ) AS f
    GROUP BY pos, grp"""

# A read's settings (for its transaction), answering its snapshot's now(). JIT would compile its
# statements for a second on their (pessimistic) row estimates, while running them takes
# milliseconds; the default `work_mem` (4 MB) made the cuts' sort of a month of hourly buckets
# by label value spill to disk.
_SETTINGS: Final = """
    SELECT now() FROM set_config('jit', 'off', true) AS jit,
                      set_config('work_mem', '16MB', true) AS work_mem"""

# Hours of [s, e) with marks not folded yet.
_MARKED: Final = f"""
    SELECT DISTINCT {_us("hour")} FROM insight_change
    WHERE app_id = %(app)s AND kind = 'usage' AND hour >= %(s)s AND hour < %(e)s"""

# Starts and FAILED stops of pieces `(s, e, pos)` from the agents, per piece.
_READ_COUNTS: Final = f"""
    WITH {_PIECES}
    SELECT pos, sum(sessions)::int, sum(failed)::int
    FROM ({_counts("NULL::text", "NULL::text")}) AS f
    GROUP BY pos"""

# Starts and FAILED stops of runs of whole minutes [a, b) of folded hours, per bucket `pos`.
_READ_COUNT_ROLLUP: Final = """
    SELECT r.pos, sum(u.sessions[r.b + 1] - u.sessions[r.a + 1])::int,
           sum(u.failed[r.b + 1] - u.failed[r.a + 1])::int
    FROM unnest(string_to_array(%(hour)s, ',')::bigint[], string_to_array(%(a)s, ',')::int[],
                string_to_array(%(b)s, ',')::int[], string_to_array(%(pos)s, ',')::int[])
        AS r(hour, a, b, pos)
    JOIN usage_count AS u
      ON u.app_id = %(app)s AND u.hour = timestamptz 'epoch' + r.hour * interval '1 microsecond'
    GROUP BY 1"""

# The agents still holding a slot (end NULL: up to now) that start before the series' end,
# with their group.
_OPEN: Final = f"""
    SELECT a.labels ->> %(key)s::text, {_us("a.active_from")}, NULL::bigint FROM agent AS a
    WHERE a.app_id = %(app)s AND a.active_from IS NOT NULL AND a.active_until IS NULL
      AND a.active_from < %(e)s"""

# The intervals read from the agents whatever the rollup holds, with their group: the open ones
# and the closed intervals longer than a day that start before the series' end and end after
# its start.
_OUTSIDE: Final = f"""{_OPEN}
    UNION ALL
    SELECT a.labels ->> %(key)s::text, {_us("a.active_from")}, {_us("a.active_until")}
    FROM agent AS a
    WHERE a.app_id = %(app)s AND a.active_from IS NOT NULL
      AND a.active_until - a.active_from > {LONG}
      AND a.active_from < %(e)s AND a.active_until > %(s)s"""


# One group of a bucket: its key (the label's value, None without it), agent µs, sessions and
# FAILED stops. A plain tuple, as an answer holds one per bucket and group (a month by hour and
# tenant: 15,000).
Group = tuple[str | None, int, int, int]


@dataclass(frozen=True, slots=True, kw_only=True)
class Point:
    start: int  # µs
    groups: tuple[Group, ...]


async def fold(conn: psycopg.AsyncConnection[Any], app_id: str) -> int:
    """Recompute the rollup's first `FOLD_HOURS` marked hours of `app_id` and delete the marks
    seen; answers how many marks went (0 also when another folder holds the app). `conn` must be
    in no transaction; this commits its own."""
    taken = await db.fold_under_lock(conn, lock=_lock(app_id), sql=FOLD_SQL, app_id=app_id)
    return taken or 0


def _lock(app_id: str) -> str:
    return f"usage_fold/{app_id}"


def lock_key(app_id: str) -> int:
    """The app's usage folder lock (signed 64-bit advisory key, apart from PCU's)."""
    return db.lock_key(_lock(app_id))


class Plan(NamedTuple):
    """How to read each bucket grouped by a label (`plan()`): for each bucket, its rollup hours
    plus its signed cuts plus its signed agent pieces are its figures."""

    hours: list[tuple[int, int]]  # (hour, pos): a whole unmarked hour from `usage_hour`
    cuts: list[tuple[int, int, int]]  # (at, pos, sign): an unmarked hour from its start to `at`
    pieces: list[tuple[int, int, int, int]]  # (s, e, pos, sign): [s, e) from the agents


def plan(grid: Sequence[tuple[int, int]], marked: set[int]) -> Plan:
    """Each bucket's part of each hour: a marked hour's part from the agents; an unmarked hour's
    part `[a, b)` as `cut(b) - cut(a)`, where the cut at the hour's start is nothing and the one
    at its end is the hour's rollup row (`cut()` is the hour's figures from its start to an
    instant inside it: `usage_minute` and the agents of a part of a minute)."""
    hours_read: list[tuple[int, int]] = []
    cuts: list[tuple[int, int, int]] = []
    pieces: list[tuple[int, int, int, int]] = []

    for pos, (start, end) in enumerate(grid):
        for hour in range(start - start % HOUR_US, end, HOUR_US):
            a, b = max(start, hour), min(end, hour + HOUR_US)
            if hour in marked:
                _add_piece(pieces, a, b, pos, 1)
                continue
            if b == hour + HOUR_US:
                hours_read.append((hour, pos))
            else:
                cuts.append((b, pos, 1))
            if a > hour:
                cuts.append((a, pos, -1))
    return Plan(hours_read, cuts, pieces)


def _add_piece(
    pieces: list[tuple[int, int, int, int]], s: int, e: int, pos: int, sign: int
) -> None:
    """Append the signed piece `[s, e)` of bucket `pos` (nothing if empty), merged into the last
    one when it continues it for the same bucket and sign: one probe, not two."""
    if s >= e:
        return
    if pieces and pieces[-1][1] == s and pieces[-1][2:] == (pos, sign):
        pieces[-1] = (pieces[-1][0], e, pos, sign)
    else:
        pieces.append((s, e, pos, sign))


def _joined(values: Iterable[object]) -> str:
    return ",".join(map(str, values))


async def series(
    conn: AsyncConnection, *, app_id: str, start: int, end: int, step: int, key: str | None
) -> list[Point]:
    """Usage per `step` over `[start, end)` (µs), grouped by the label `key` (None: one group).

    `conn` must hold one snapshot for all its statements (`concurrency.snapshot`)."""
    now = pcu.to_us(await conn.scalar(text(_SETTINGS)))
    raw = await db.driver_connection(conn)
    grid = pcu.buckets(start, end, step)
    bounds = {"app": app_id, "s": pcu.from_us(start - start % HOUR_US), "e": pcu.from_us(end)}
    marked = {int(row[0]) for row in await (await raw.execute(_MARKED, bounds)).fetchall()}
    if key is None:
        totals = await _all_agents(
            conn, app_id=app_id, grid=grid, step=step, marked=marked, now=now
        )
        return _points(grid, totals, grouped=False)
    totals = await _figures(raw, app_id=app_id, key=key, parts=plan(grid, marked))
    outside = await raw.execute(_OUTSIDE, {"app": app_id, "key": key, **bounds})
    _add_intervals(totals, grid, await outside.fetchall(), now=now)
    return _points(grid, totals, grouped=key is not None)


def count_plan(
    grid: Sequence[tuple[int, int]], marked: set[int]
) -> tuple[list[tuple[int, int, int, int]], list[tuple[int, int, int, int]]]:
    """How to count each bucket's starts and FAILED stops: runs of whole minutes `[a, b)` of
    unmarked hours `(hour, a, b, pos)` from `usage_count`, and signed pieces `(s, e, pos, sign)`
    from the agents, so that for each bucket the runs plus the signed pieces are its counts.

    A bucket edge inside a minute of an unmarked hour costs one piece, from the minute's start to
    the edge: added to the bucket that ends there, and taken from the next one, which counts
    that whole minute from its run. A marked hour's part is a piece of its own."""
    runs: list[tuple[int, int, int, int]] = []
    pieces: list[tuple[int, int, int, int]] = []

    for pos, (start, end) in enumerate(grid):
        for hour in range(start - start % HOUR_US, end, HOUR_US):
            a, b = max(start, hour), min(end, hour + HOUR_US)
            first, last = pcu.floor_grain(a), pcu.floor_grain(b)
            if hour in marked or first == last:  # marked, or inside one minute
                _add_piece(pieces, a, b, pos, 1)
                continue
            runs.append((hour, (first - hour) // pcu.GRAIN_US, (last - hour) // pcu.GRAIN_US, pos))
            _add_piece(pieces, first, a, pos, -1)
            _add_piece(pieces, last, b, pos, 1)
    return runs, pieces


async def _all_agents(
    conn: AsyncConnection,
    *,
    app_id: str,
    grid: Sequence[tuple[int, int]],
    step: int,
    marked: set[int],
    now: int,
) -> dict[tuple[int, str | None], Figures]:
    """Per bucket, the figures of all the app's agents (one group, None).

    Agent time is the area under the app's concurrency (`concurrency.series`, exact and fast
    from any second), which counts the same intervals except that an open one goes on past
    now: each open interval's part from `max(start, now)` on is taken off. Starts and FAILED
    stops come from `usage_count` by whole minutes and from the agents for the rest
    (`count_plan`)."""
    totals: dict[tuple[int, str | None], Figures] = defaultdict(lambda: [0, 0, 0])
    if not grid:
        return totals
    start, end = grid[0][0], grid[-1][1]
    for pos, point in enumerate(
        await concurrency.series(conn, app_id=app_id, start=start, end=end, step=step)
    ):
        totals[(pos, None)][0] = point.area
    raw = await db.driver_connection(conn)
    cursor = await raw.execute(_OPEN, {"app": app_id, "key": None, "e": pcu.from_us(end)})
    after_now = (max(int(at), now) for _, at, _ in await cursor.fetchall())
    ahead = [(None, at, end) for at in after_now if at < end]
    future: dict[tuple[int, str | None], Figures] = defaultdict(lambda: [0, 0, 0])
    _add_intervals(future, grid, ahead, now=now)
    for (pos, _), (agent_us, _, _) in future.items():
        totals[(pos, None)][0] -= agent_us
    runs, pieces = count_plan(grid, marked)
    run_columns = {
        "hour": (r[0] for r in runs),
        "a": (r[1] for r in runs),
        "b": (r[2] for r in runs),
        "pos": (r[3] for r in runs),
    }
    for pos, sessions, failed in await _fetch(
        raw, _READ_COUNT_ROLLUP, app_id=app_id, key=None, columns=run_columns
    ):
        figures = totals[(pos, None)]
        figures[1] += sessions
        figures[2] += failed
    # A piece may serve two buckets (see `count_plan`).
    serves, span_columns = _distinct_spans(pieces)
    for index, sessions, failed in await _fetch(
        raw, _READ_COUNTS, app_id=app_id, key=None, columns=span_columns
    ):
        for pos, sign in serves[index]:
            figures = totals[(pos, None)]
            figures[1] += sign * sessions
            figures[2] += sign * failed
    return totals


async def _figures(
    raw: psycopg.AsyncConnection[Any], *, app_id: str, key: str | None, parts: Plan
) -> dict[tuple[int, str | None], Figures]:
    """Per (bucket, group) the figures of `plan()`'s parts: rollup hours, cuts, agent pieces."""
    totals: dict[tuple[int, str | None], Figures] = defaultdict(lambda: [0, 0, 0])
    rollup_columns = {"hour": (h for h, _ in parts.hours), "pos": (p for _, p in parts.hours)}
    rows = await _fetch(raw, _READ_ROLLUP, app_id=app_id, key=key, columns=rollup_columns)
    # Grouped by bucket and group in SQL: each row is the first figures of its pair.
    totals.update(
        ((pos, group), [agent_us, sessions, failed])
        for pos, group, agent_us, sessions, failed in rows
    )
    # A cut serves the bucket ending there and the one starting there; a span may serve several
    # buckets too.
    cut_serves: dict[int, list[tuple[int, int]]] = defaultdict(list)
    for at, pos, sign in parts.cuts:
        cut_serves[at].append((pos, sign))
    cut_at = list(cut_serves)
    cut_columns: dict[str, Iterable[object]] = {
        "hour": (at - at % HOUR_US for at in cut_at),
        "k": (at % HOUR_US // pcu.GRAIN_US for at in cut_at),
        "r": (at % pcu.GRAIN_US for at in cut_at),
        "pos": range(len(cut_at)),
    }
    serves, span_columns = _distinct_spans(parts.pieces)
    for query, columns, served in (
        (_READ_CUTS, cut_columns, list(cut_serves.values())),
        (_READ_AGENTS, span_columns, serves),
    ):
        for index, group, agent_us, sessions, failed in await _fetch(
            raw, query, app_id=app_id, key=key, columns=columns
        ):
            for pos, sign in served[index]:
                figures = totals[(pos, group)]
                figures[0] += sign * agent_us
                figures[1] += sign * sessions
                figures[2] += sign * failed
    return totals


def _distinct_spans(
    pieces: Iterable[tuple[int, int, int, int]],
) -> tuple[list[list[tuple[int, int]]], dict[str, Iterable[object]]]:
    """Each distinct span `[s, e)` of signed pieces `(s, e, pos, sign)` once: the `(pos, sign)`
    pairs it serves, by its index, and the columns that send the spans (`pos` its index)."""
    spans: dict[tuple[int, int], list[tuple[int, int]]] = defaultdict(list)
    for s, e, pos, sign in pieces:
        spans[(s, e)].append((pos, sign))
    columns: dict[str, Iterable[object]] = {
        "s": (s for s, _ in spans),
        "e": (e for _, e in spans),
        "pos": range(len(spans)),
    }
    return list(spans.values()), columns


async def _fetch(
    raw: psycopg.AsyncConnection[Any],
    query: str,
    *,
    app_id: str,
    key: str | None,
    columns: Mapping[str, Iterable[object]],
) -> list[Any]:
    """The rows `query` answers for rows sent as comma-joined columns (none sent: none)."""
    joined = {name: _joined(values) for name, values in columns.items()}
    if not all(joined.values()):
        return []
    cursor = await raw.execute(query, {"app": app_id, "key": key, **joined})
    return await cursor.fetchall()


def _add_intervals(
    totals: dict[tuple[int, str | None], Figures],
    grid: Sequence[tuple[int, int]],
    intervals: Sequence[tuple[str | None, int, int | None]],
    *,
    now: int,
) -> None:
    """Add the intervals `[start, end)` (end None: open, up to now) of each group to each
    bucket. With `G(t)`, the time the group's intervals spent before t, a bucket `[s, e)` gets
    `G(e) - G(s)`; `G(t) = H(starts, t) - H(ends, t)` where `H(xs, t) = sum of t - x over x < t`,
    from the sorted values and their prefix sums: O((intervals + buckets) log intervals)."""
    starts: dict[str | None, list[int]] = defaultdict(list)
    ends: dict[str | None, list[int]] = defaultdict(list)
    for group, start, end in intervals:
        begin = int(start)
        starts[group].append(begin)
        ends[group].append(max(begin, now) if end is None else int(end))
    if not grid:
        return
    edges = [e for _, e in grid]
    for group, values in starts.items():
        before_s, before_e = _spent(values), _spent(ends[group])
        # G is 0 up to the first start and constant from the last end (both lists sorted by
        # `_spent`): only the buckets ending from the first start to the last end change.
        first = bisect.bisect_right(edges, values[0])
        last = bisect.bisect_left(edges, ends[group][-1])
        t = grid[0][0] if first == 0 else edges[first - 1]
        previous = before_s(t) - before_e(t)
        for pos in range(first, min(last + 1, len(grid))):
            e = edges[pos]
            spent = before_s(e) - before_e(e)
            if spent != previous:
                totals[(pos, group)][0] += spent - previous
            previous = spent


def _spent(values: list[int]) -> Callable[[int], int]:
    """`t -> sum of t - x over the x in values below t` (values sorted here)."""
    values.sort()
    prefix = [0]
    for value in values:
        prefix.append(prefix[-1] + value)

    def below(t: int) -> int:
        n = bisect.bisect_left(values, t)
        return n * t - prefix[n]

    return below


def _by_key(key: str | None) -> tuple[bool, str]:
    return (key is None, key or "")


def _points(
    grid: Sequence[tuple[int, int]],
    totals: dict[tuple[int, str | None], Figures],
    *,
    grouped: bool,
) -> list[Point]:
    """One point per bucket: with a label key, its groups with anything to show, by key (null
    last); without, its one group (zeros included)."""
    # Each key's place among the keys (by key, null last), then each bucket's groups sorted by
    # place: comparing integers, no key function called per group.
    place = {key: i for i, key in enumerate(sorted({g for _, g in totals}, key=_by_key))}
    found: list[list[tuple[int, str | None, int, int, int]]] = [[] for _ in grid]
    for (pos, group), (agent_us, sessions, failed) in totals.items():
        if agent_us or sessions or failed:
            found[pos].append((place[group], group, agent_us, sessions, failed))
    none: tuple[Group, ...] = () if grouped else ((None, 0, 0, 0),)
    points = []
    for (start, _), groups in zip(grid, found, strict=True):
        groups.sort()
        points.append(Point(start=start, groups=tuple(g[1:] for g in groups) or none))
    return points
