"""Turn latency per bucket: the rollups (`latency_bucket`, `latency_label_bucket`), their folder
and the series read.

A bucket's figures are the turns whose `end_at` falls in it: how many, and nearest-rank
percentiles of their `e2e_latency_ms` (p50, p90, p99, max) and of each stage of their
`segmented_latency_ms` (p50, p90). Nearest-rank is PostgreSQL's `percentile_disc`: the first value
whose position in the sorted figures reaches the fraction, rank ⌈p·n⌉. A turn without a figure
counts in `turns` and in no percentile of that figure.

The rollups hold the figures of ended UTC hours and days: `latency_bucket` over all the app's
turns, `latency_label_bucket` over the turns of the agents holding one label pair (a row per
pair: `key` and a string `value`, exactly what the filter `labels @> {"key": "value"}` selects;
a value that is not a string matches no filter, so has no row).

Every statement that adds or deletes turns marks their (app, UTC hour) in `insight_change` (kind
`latency`) in the same statement (`repositories.TURNS`, `erasure`); one that changes which label
pairs an agent holds marks the hours of that agent's turns (kind `latency_label`: the per-label
figures only), in the same statement too (`repositories`, part `label_marks`), while holding the
agent's row, as every writer of its turns does. `fold()` takes an app's marks and rewrites the
hour rows and the day rows containing them from `agent_turn` (and `agent`'s labels), in ONE
statement, so in one snapshot: a turn or label committed after it has a mark committed after it
too, which the statement cannot see, so it survives the fold and the hour is folded again. The
rollups plus the marks are therefore always what the turns and labels say: a series of whole
UTC-aligned hours or days with no label filter, or with exactly one `label.KEY=VALUE`, takes the
rollup's rows for unmarked buckets and computes the marked ones from the turns, in one statement.

An hour's row also holds its turns one by one (`by_turn`: end time and figures, in end-time
order), so a series without a label filter whose buckets cut hours (a `from` off the step, a
step other than an hour or a day, up to a day) takes every unmarked hour's turns from its row and
the marked ones from `agent_turn`, in one statement, and ranks each bucket's figures here
(`_from_hours`): a month of hourly buckets from an odd second reads 720 rows instead of every
turn of the month. Any other series (steps over a day, label filters that do not fit a rollup)
is computed by PostgreSQL from the turns (`agent_turn` by app and end time, an index-only range
scan), in one statement.
"""

from __future__ import annotations

import asyncio
import bisect
import json
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any, Final

import psycopg
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from service import db, events, pcu, queries

# What the rollups hold: hours and days, aligned on UTC (Unix time has no leap seconds).
WIDTHS: Final = (3600, 86_400)
# Hours one fold takes at most: each is an hour row and its day row rewritten, so this bounds a
# fold's statement (the first fold after the migration takes every hour turns ever touched).
FOLD_HOURS: Final = 168
_E2E: Final = ("p50", "p90", "p99", "max")
_STAGE: Final = ("p50", "p90")
_NONE_E2E: Final = (None,) * len(_E2E)
_NONE_STAGE: Final = (None,) * len(_STAGE)

# The figures of a set of turns `t` (one row per group).
_FIGURES: Final = """
    count(*)::int AS turns,
    percentile_disc('{0.5,0.9,0.99,1}'::float8[]) WITHIN GROUP (ORDER BY t.e2e_latency_ms) AS e2e,
    percentile_disc('{0.5,0.9}'::float8[]) WITHIN GROUP (ORDER BY t.asr_ttlw) AS asr_ttlw,
    percentile_disc('{0.5,0.9}'::float8[]) WITHIN GROUP (ORDER BY t.llm_ttft) AS llm_ttft,
    percentile_disc('{0.5,0.9}'::float8[]) WITHIN GROUP (ORDER BY t.tts_ttfb) AS tts_ttfb"""

# The figures of the turns ending in each of the buckets `b` (at, until), one bucket after the
# other: an index-only range scan each, its turns in end-time order, so no sort of the whole
# range (a month of turns does not fit `work_mem`). With a label filter, only the turns of the
# agents holding the labels (`chosen`, hashed once).
_LIVE: Final = f"""
    SELECT b.at, f.* FROM <buckets>
    CROSS JOIN LATERAL (
        SELECT {_FIGURES} FROM agent_turn AS t
        WHERE t.app_id = :app AND t.end_at >= b.at AND t.end_at < b.until <only>
    ) AS f
    WHERE f.turns > 0"""


def _live(buckets: str, *, only: str = "") -> str:
    return _LIVE.replace("<buckets>", buckets).replace("<only>", only)


_GRID: Final = "unnest(CAST(:ats AS timestamptz[]), CAST(:untils AS timestamptz[])) AS b(at, until)"
_CHOSEN: Final = """
    chosen AS MATERIALIZED (
        SELECT agent_id FROM agent WHERE app_id = :app AND labels @> CAST(:labels AS jsonb)
    )"""
_IN_CHOSEN: Final = "AND t.agent_id IN (SELECT agent_id FROM chosen)"
_FROM_TURNS: Final = text(_live(_GRID))
_FROM_LABELLED_TURNS: Final = text(f"WITH {_CHOSEN}" + _live(_GRID, only=_IN_CHOSEN))

# The marks a rollup's buckets depend on: turns stored or deleted, and for the per-label rollup
# also label changes.
_APP_MARKS: Final = "('latency')"
_LABEL_MARKS: Final = "('latency', 'latency_label')"

# Whole buckets of `step` seconds (a rollup width) from `start` (aligned): the rollup's rows for
# the buckets without marks, the marked ones (and the cut last bucket `tail`) from the turns.
_FROM_ROLLUP_SQL: Final = """
    WITH dirty AS (
        SELECT DISTINCT date_bin(CAST(:step AS int) * interval '1 second', hour, :start) AS at
        FROM insight_change
        WHERE app_id = :app AND kind IN <kinds> AND hour >= :start AND hour < :end
        UNION
        SELECT CAST(:tail AS timestamptz) WHERE CAST(:tail AS timestamptz) IS NOT NULL
    ),
    marked AS (
        SELECT at, least(at + CAST(:step AS int) * interval '1 second', :end) AS until
        FROM dirty
    )<ctes>
    SELECT at, turns, e2e, asr_ttlw, llm_ttft, tts_ttfb FROM <rollup>
    WHERE app_id = :app AND width = :step <pair> AND at >= :start AND at < :end
      AND at NOT IN (SELECT at FROM dirty)
    UNION ALL"""


def _from_rollup(rollup: str, *, kinds: str, live: str, pair: str = "", ctes: str = "") -> str:
    head = _FROM_ROLLUP_SQL.replace("<rollup>", rollup).replace("<kinds>", kinds)
    return head.replace("<pair>", pair).replace("<ctes>", ctes) + live


_FROM_ROLLUP: Final = text(
    _from_rollup("latency_bucket", kinds=_APP_MARKS, live=_live("marked AS b"))
)

# With one label pair: its rows of the per-label rollup, and the marked buckets from the turns of
# the agents holding it. Those are found one of two ways, both exact: while the marked buckets
# span a day at most (the current hour; today in a daily series), each turn's agent is looked up
# by key (`LIMIT 1` keeps the planner from hashing every agent of the app instead, as it does
# for a join); when more is marked (right after the migration, or a backlog of marks), the
# agents holding the pair are hashed once (`chosen`), as for several pairs: a few thousand
# lookups cost less than reading every agent of the app, a month of them much more. The
# branch not taken reads nothing (its bucket set is empty, a one-time filter).
LOOKUP_SPAN: Final = "interval '1 day'"
_AGENT: Final = """
    SELECT a.labels FROM agent AS a
    WHERE a.app_id = t.app_id AND a.agent_id = t.agent_id LIMIT 1"""
_SPLIT: Final = f""",
    few AS (SELECT * FROM marked WHERE (SELECT sum(until - at) FROM marked) <= {LOOKUP_SPAN}),
    many AS (SELECT * FROM marked WHERE (SELECT sum(until - at) FROM marked) > {LOOKUP_SPAN}),
    {_CHOSEN.strip()}"""
_FROM_LABEL_ROLLUP: Final = text(
    _from_rollup(
        "latency_label_bucket",
        kinds=_LABEL_MARKS,
        pair="AND key = :key AND value = :value",
        ctes=_SPLIT,
        live=_live("few AS b", only=f"AND ({_AGENT}) @> CAST(:labels AS jsonb)")
        + "\n    UNION ALL"
        + _live("many AS b", only=_IN_CHOSEN),
    )
)

# An hour's turns `t` as its row's `by_turn` holds them (`latency_ranks.decode` reads it): an
# aggregate over the turns of the hour starting at `<hour>`, each aggregate filtered by `<only>`.
# Column after column, big-endian, in end-time order:
# - a byte 2 (the format: the one before, 25 bytes a turn, began with a zero byte), and a byte of
#   flags: bit f set when figure f (e2e, then the stages) is kept in 16 bits (every value of the
#   hour in [0, 65535]), bit 4 set when some turn lacks a figure;
# - each turn's `end_at` as µs since the hour's start (uint32: an hour is 3.6·10⁹ µs; `extract`
#   answers a numeric, so exact);
# - with bit 4, a byte per turn with a bit set for each figure it lacks;
# - each figure's values, uint16 or int4 (0 where lacking; every int4 is a figure a turn can
#   hold, so none can stand for "none").
# So a turn takes 12 bytes when its hour's figures fit 16 bits and none lacks, 21 at most, and
# the length of a row says how many turns it holds.
_FIGURE_COLUMNS: Final = ("e2e_latency_ms", *events.STAGES)
# Per turn, a bit for each figure it lacks; whether a figure of the hour fits 16 bits.
_LACKS: Final = " + ".join(
    f"{1 << bit} * (t.{column} IS NULL)::int" for bit, column in enumerate(_FIGURE_COLUMNS)
)
_NARROW: Final = "coalesce(min(t.{0}) <only> >= 0 AND max(t.{0}) <only> <= 65535, true)"
_FLAGS: Final = " + ".join(
    [f"{1 << bit} * ({_NARROW.format(c)})::int" for bit, c in enumerate(_FIGURE_COLUMNS)]
    + [f"16 * coalesce(bool_or(({_LACKS}) > 0) <only>, false)::int"]
)
_IN_ORDER: Final = "'' ORDER BY t.end_at) <only>"
_PACKED: Final = (
    f"set_byte(set_byte('\\x0000'::bytea, 0, 2), 1, {_FLAGS})"
    "\n    || string_agg(substring(int8send((extract(epoch FROM t.end_at - <hour>) * 1000000)::int8)"
    f" FROM 5), {_IN_ORDER}"
    f"\n    || coalesce(CASE WHEN bool_or(({_LACKS}) > 0) <only>"
    f" THEN string_agg(set_byte('\\x00'::bytea, 0, {_LACKS}), {_IN_ORDER} END, '')"
    + "".join(
        f"\n    || CASE WHEN {_NARROW.format(column)}"
        f" THEN string_agg(substring(int4send(coalesce(t.{column}, 0)) FROM 3), {_IN_ORDER}"
        f" ELSE string_agg(int4send(coalesce(t.{column}, 0)), {_IN_ORDER} END"
        for column in _FIGURE_COLUMNS
    )
)


def packed(hour: str, *, only: str = "") -> str:
    """`_PACKED` for the hour starting at the SQL expression `hour`, each aggregate `only`."""
    return _PACKED.replace("<hour>", hour).replace("<only>", only)


# Whether a row's `by_turn` (its first two bytes `head`) holds its `turns` in this format: a row
# of the previous format, or one folded before rows held turns, is computed from the turns
# instead. (`head` is one TOAST chunk read, as `by_turn` is stored uncompressed.)
_FLAGS_OF: Final = "get_byte(head, 1)"
PACKED_WHOLE: Final = f"""CASE WHEN octet_length(head) = 2 THEN
            get_byte(head, 0) = 2
            AND octet_length(by_turn) = 2 + turns * (
                20 + ({_FLAGS_OF} >> 4 & 1)
                - 2 * (({_FLAGS_OF} & 1) + ({_FLAGS_OF} >> 1 & 1) + ({_FLAGS_OF} >> 2 & 1)
                       + ({_FLAGS_OF} >> 3 & 1)))
        END"""
# Hours fetched in one round trip (about 84 KB each for an app with a million sessions a month).
HOURS_AT_ONCE: Final = 24
HOUR_US: Final = 3_600_000_000
# The largest bucket whose turns a read gathers in memory (`_from_hours`); a wider step is
# computed by PostgreSQL from the turns.
HOURS_STEP_MAX_S: Final = 86_400

# Every hour of `[start, end)` with turns, in order, each as its turns (`by_turn`, only those in
# `[start, end)` when computed here): the rollup's row where the hour has no mark and its row
# holds them all (a row the previous release folded has none, or fewer than its count), else
# computed from the turns. One statement, so one snapshot: the marks and the rollup agree.
_FROM_HOURS: Final = f"""
    WITH dirty AS (
        SELECT DISTINCT hour FROM insight_change
        WHERE app_id = %(app)s AND kind = 'latency' AND hour >= %(first)s AND hour < %(end)s
    ),
    kept AS MATERIALIZED (
        SELECT at, by_turn, {PACKED_WHOLE} AS whole
        FROM (
            SELECT at, by_turn, turns, substring(by_turn FROM 1 FOR 2) AS head
            FROM latency_bucket
            WHERE app_id = %(app)s AND width = 3600 AND at >= %(first)s AND at < %(end)s
              AND at NOT IN (SELECT hour FROM dirty)
        ) AS b
    ),
    live AS (
        SELECT hour AS at FROM dirty
        UNION ALL
        SELECT at FROM kept WHERE whole IS NOT TRUE
    )
    SELECT at, by_turn FROM kept WHERE whole
    UNION ALL
    SELECT l.at, p.by_turn FROM live AS l
    CROSS JOIN LATERAL (
        SELECT {packed("l.at")} AS by_turn FROM agent_turn AS t
        WHERE t.app_id = %(app)s AND t.end_at >= greatest(l.at, %(start)s)
          AND t.end_at < least(l.at + interval '1 hour', %(end)s)
    ) AS p
    WHERE p.by_turn IS NOT NULL
    ORDER BY at"""


# The label pairs of agent `a` a filter can select: its labels with a string value (`@>` with a
# string never matches a number, an array or an object); `pairs()` in Python.
_PAIRS: Final = """
    SELECT e.key, e.value #>> '{}' AS value
    FROM jsonb_each(CASE jsonb_typeof(a.labels) WHEN 'object' THEN a.labels END) AS e
    WHERE jsonb_typeof(e.value) = 'string'"""
# A figure column as the rollups store it: never NULL, an array of NULLs for no figures.
_STORED: Final = """
    turns, coalesce(e2e, '{NULL,NULL,NULL,NULL}'), coalesce(asr_ttlw, '{NULL,NULL}'),
    coalesce(llm_ttft, '{NULL,NULL}'), coalesce(tts_ttfb, '{NULL,NULL}')"""
_SET_FIGURES: Final = """
    turns = excluded.turns, e2e = excluded.e2e, asr_ttlw = excluded.asr_ttlw,
    llm_ttft = excluded.llm_ttft, tts_ttfb = excluded.tts_ttfb"""

# One app's marks folded in one statement (one snapshot): the marks of its first `FOLD_HOURS`
# marked hours that have ended are taken, those hours and their ended days recomputed from the
# turns; a bucket left without turns is deleted. Answers the marks taken. An hour with only
# `latency_label` marks (labels changed, turns did not) has its per-label rows recomputed only.
# The current hour and day are not folded: they change with every turn, and a day's percentiles
# are a sort of the whole day, so folding them every few seconds would cost a day of turns each
# time. A day not over yet keeps a mark on its last hour instead (`day_left`, of the kinds it
# took), so reads compute its daily bucket from the turns and the folder folds the day once that
# hour has ended. Per label pair, a bucket's rows are those of the pairs its turns' agents hold
# now (`label_figure`, each turn's agent looked up by key); the rows of other pairs go.
FOLD_SQL: Final = f"""
    WITH first_hours AS (
        SELECT DISTINCT hour FROM insight_change
        WHERE app_id = %(app)s AND kind IN {_LABEL_MARKS}
          AND hour < date_trunc('hour', now(), 'UTC')
        ORDER BY hour LIMIT {FOLD_HOURS}
    ),
    taken AS (
        DELETE FROM insight_change
        WHERE app_id = %(app)s AND kind IN {_LABEL_MARKS}
          AND hour IN (SELECT hour FROM first_hours)
        RETURNING hour, date_trunc('day', hour, 'UTC') AS day, kind = 'latency' AS turned
    ),
    target AS (
        SELECT 3600 AS width, hour AS at, bool_or(turned) AS turned FROM taken GROUP BY hour
        UNION ALL
        SELECT 86400, day, bool_or(turned) FROM taken
        WHERE day + interval '1 day' <= date_trunc('hour', now(), 'UTC')
        GROUP BY day
    ),
    day_left AS (
        INSERT INTO insight_change (app_id, kind, hour)
        SELECT %(app)s, CASE WHEN bool_or(turned) THEN 'latency' ELSE 'latency_label' END,
               day + interval '23 hours'
        FROM taken
        WHERE day + interval '1 day' > date_trunc('hour', now(), 'UTC')
        GROUP BY day
    ),
    figure AS (
        SELECT g.width, g.at, f.* FROM target AS g
        CROSS JOIN LATERAL (
            SELECT {_FIGURES},
                   CASE WHEN g.width = 3600 THEN
                       {packed("g.at", only="FILTER (WHERE g.width = 3600)")}
                   END AS by_turn
            FROM agent_turn AS t
            WHERE t.app_id = %(app)s AND t.end_at >= g.at
              AND t.end_at < g.at + g.width * interval '1 second'
        ) AS f
        WHERE g.turned
    ),
    cleared AS (
        DELETE FROM latency_bucket AS b USING figure AS f
        WHERE b.app_id = %(app)s AND b.width = f.width AND b.at = f.at AND f.turns = 0
    ),
    written AS (
        INSERT INTO latency_bucket (app_id, width, at, turns, e2e, asr_ttlw, llm_ttft, tts_ttfb,
                                    by_turn)
        SELECT %(app)s, width, at, {_STORED}, by_turn FROM figure WHERE turns > 0
        ON CONFLICT (app_id, width, at) DO UPDATE SET {_SET_FIGURES}, by_turn = excluded.by_turn
    ),
    label_figure AS (
        SELECT g.width, g.at, f.* FROM target AS g
        CROSS JOIN LATERAL (
            SELECT p.key, p.value, {_FIGURES} FROM agent_turn AS t
            CROSS JOIN LATERAL ({_AGENT}) AS a
            CROSS JOIN LATERAL ({_PAIRS}) AS p
            WHERE t.app_id = %(app)s AND t.end_at >= g.at
              AND t.end_at < g.at + g.width * interval '1 second'
            GROUP BY p.key, p.value
        ) AS f
    ),
    label_gone AS (
        SELECT b.width, b.key, b.value, b.at
        FROM target AS g JOIN latency_label_bucket AS b
            ON b.app_id = %(app)s AND b.width = g.width AND b.at = g.at
        EXCEPT
        SELECT width, key, value, at FROM label_figure
    ),
    label_cleared AS (
        DELETE FROM latency_label_bucket AS b USING label_gone AS f
        WHERE b.app_id = %(app)s AND b.width = f.width AND b.key = f.key AND b.value = f.value
          AND b.at = f.at
    ),
    label_written AS (
        INSERT INTO latency_label_bucket (app_id, width, key, value, at, turns, e2e, asr_ttlw,
                                          llm_ttft, tts_ttfb)
        SELECT %(app)s, width, key, value, at, {_STORED} FROM label_figure
        ON CONFLICT (app_id, width, key, value, at) DO UPDATE SET {_SET_FIGURES}
    )
    SELECT count(*) FROM taken
"""

PENDING_SQL: Final = f"SELECT DISTINCT app_id FROM insight_change WHERE kind IN {_LABEL_MARKS}"


async def fold(conn: psycopg.AsyncConnection[Any], app_id: str) -> int | None:
    """Fold `app_id`'s latency marks (up to `FOLD_HOURS` hours of them) into the rollup and
    commit; answers the marks taken, or None when another folder holds the app.

    `conn` must be in no transaction; this commits its own.
    """
    return await db.fold_under_lock(
        conn, lock=f"latency_fold/{app_id}", sql=FOLD_SQL, app_id=app_id
    )


def pairs(labels: Mapping[str, Any]) -> set[tuple[str, str]]:
    """The label pairs that put an agent's turns in `latency_label_bucket` (as `_PAIRS`)."""
    return {(key, value) for key, value in labels.items() if isinstance(value, str)}


def folded(start: datetime, step_s: int, labels: Mapping[str, str]) -> bool:
    """Whether a series can take a rollup's rows: a rollup width, `start` aligned on it (UTC),
    no label filter or exactly one pair (several pairs are computed from the turns)."""
    since_epoch = start - datetime(1970, 1, 1, tzinfo=UTC)
    return step_s in WIDTHS and len(labels) <= 1 and not since_epoch % timedelta(seconds=step_s)


async def series(
    conn: AsyncConnection,
    *,
    app_id: str,
    start: datetime,
    end: datetime,
    step_s: int,
    labels: Mapping[str, str],
) -> list[dict[str, Any]]:
    """The points of `[start, end)` every `step_s` seconds (the last one cut at `end`), each
    with the figures of the turns ending in it (of the agents holding `labels`); one statement."""
    step = timedelta(seconds=step_s)
    grid = [start + i * step for i in range(-(-(end - start) // step))]
    params: dict[str, Any] = {"app": app_id, "start": start, "end": end, "step": step_s}
    if labels:
        params["labels"] = json.dumps(dict(labels))
    if folded(start, step_s, labels):
        params["tail"] = grid[-1] if end - grid[-1] < step else None
        statement = _FROM_ROLLUP
        if labels:
            [(params["key"], params["value"])] = labels.items()
            statement = _FROM_LABEL_ROLLUP
    elif not labels and step_s <= HOURS_STEP_MAX_S:
        return [_point(at, row) for at, row in await _from_hours(conn, params, grid, end)]
    else:
        # (`at + step` may lie past year 9999, where Python's datetime ends)
        untils = [at + step if end - at > step else end for at in grid]
        params |= {"ats": grid, "untils": untils}
        statement = _FROM_LABELLED_TURNS if labels else _FROM_TURNS
    found = {row.at: row for row in await conn.execute(statement, params)}
    return [_point(at, found.get(at)) for at in grid]


async def _from_hours(
    conn: AsyncConnection, params: dict[str, Any], grid: list[datetime], end: datetime
) -> list[tuple[datetime, Any]]:
    """The buckets starting at `grid` (the last one ending at `end`), each with its row of
    figures (as `_FIGURES`) or None, computed here from the turns of the hours they cover
    (`_FROM_HOURS`, read in binary a few hours at a time: only the turns of the buckets at hand
    are held; a month of an app with five million turns is 60 MB, which text would double)."""
    from service import latency_ranks  # numpy: imported on the first such read, not at start

    edges = [pcu.to_us(at) for at in grid] + [pcu.to_us(end)]
    held: list[latency_ranks.Turns] = []
    out: list[Any] = []
    raw = await db.driver_connection(conn)
    # JIT would compile the statement for most of a second on the pessimistic estimate of the
    # hours computed from the turns (usually none, or the current one).
    await raw.execute("SELECT set_config('jit', 'off', true)")
    async with raw.cursor("latency_hours", binary=True) as cursor:
        await cursor.execute(
            _FROM_HOURS, params | {"first": grid[0].replace(minute=0, second=0, microsecond=0)}
        )
        while hours := await cursor.fetchmany(HOURS_AT_ONCE):
            # The buckets ending by the end of the last hour read are complete: every later
            # row is a later hour. (In a thread: the event loop keeps serving meanwhile.)
            ready = bisect.bisect_right(edges, pcu.to_us(hours[-1][0]) + HOUR_US, lo=1) - 1
            held, answered = await asyncio.to_thread(
                latency_ranks.advance,
                held,
                [(pcu.to_us(at), turns) for at, turns in hours],
                edges[len(out) : ready + 1],
            )
            out += answered
    out += await asyncio.to_thread(latency_ranks.buckets, held, edges[len(out) :])
    return list(zip(grid, out, strict=True))


def _point(at: datetime, row: Any) -> dict[str, Any]:
    """A point from its row (at, turns, e2e, then each stage's figures), or an empty one."""
    if row is None:
        row = (at, 0, None, *(None for _ in events.STAGES))
    return {
        "at": queries.rfc3339(at),
        "turns": row[1],
        "e2e_ms": dict(zip(_E2E, row[2] or _NONE_E2E, strict=True)),
        "segments": {
            stage: dict(zip(_STAGE, figures or _NONE_STAGE, strict=True))
            for stage, figures in zip(events.STAGES, row[3:], strict=True)
        },
    }
