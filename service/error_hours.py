"""The error summary (CONTRACT §6.1), exact, off a rollup by hour.

`GET /v1/apps/{app_id}/errors/summary` answers per (module, code) the errors with event time in
`[start, end)`, the distinct agents that had one, and the latest time. Counting distinct agents
over a month means touching every error (150,000 errors of 100,000 agents: ~150 ms of grouping
however it is indexed), so the counts come from `error_hour`: per app, UTC hour and (module,
code), the errors, the distinct agents and the latest time, and, for the agents that had the
same error in an earlier hour, how many hours back the previous one was (`gap_hours`,
`gap_agents`).

Distinct agents over whole hours `[a, b)` are then exact without naming them: an agent is
counted in every hour it had the error, less once for each of those hours whose previous hour
with it lies in `[a, b)` too, so exactly once (in its first hour in the range). Per row:
`agents - sum(gap_agents where hour - gap_hours >= a)`.

The write path marks (`insight_change`, kind `errors`) the hour of each error it stores and
that agent's next hour with the same error (`MARKS`): the only hours whose figures or gaps the
new error changes (errors are never deleted). The folder recomputes marked hours that have ended
(`fold`). A read takes, in one snapshot, the unmarked whole hours from the rollup, and the rest
(the partial hours at either end, marked hours) from the errors themselves: each agent found
there counts once, unless the rollup already counted it, which it did exactly when the agent's
first error in `[a, b)` lies in an unmarked hour (that hour's gap to the previous one reaches
before `a`, or there is none).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any, Final

import psycopg
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from service import db, queries

# A summary answers at most this many (module, code) groups, the most frequent.
MAX_GROUPS: Final = 500
# One fold recomputes at most this many marked hours of an app (a month's backfill: 5 rounds).
FOLD_HOURS: Final = 168
_HOUR: Final = timedelta(hours=1)

# Write path (`repositories`): after `errors` (the rows stored now, RETURNING), the hour of each
# and the agent's next hour with the same error, as it stood before this statement.
MARKS: Final = """
        INSERT INTO insight_change (app_id, kind, hour)
        SELECT DISTINCT e.app_id, 'errors', m.hour
        FROM errors AS e
        CROSS JOIN LATERAL (
            SELECT date_trunc('hour', e.event_at, 'UTC') AS hour
            UNION ALL
            SELECT date_trunc('hour', min(x.event_at), 'UTC') FROM agent_error AS x
            WHERE x.app_id = e.app_id AND x.agent_id = e.agent_id
              AND x.module IS NOT DISTINCT FROM e.module AND x.code IS NOT DISTINCT FROM e.code
              AND x.event_at >= date_trunc('hour', e.event_at, 'UTC') + interval '1 hour'
        ) AS m
        WHERE e.event_at IS NOT NULL AND m.hour IS NOT NULL"""

# An agent's errors like `p`'s (the unique key's index, by agent); `{app}`: the app parameter.
_SAME_ERROR: Final = """
    FROM agent_error AS x
    WHERE x.app_id = {app} AND x.agent_id = p.agent_id
      AND x.module IS NOT DISTINCT FROM p.module AND x.code IS NOT DISTINCT FROM p.code"""

# One app's first `FOLD_HOURS` marked hours that have ended, recomputed in ONE statement (one
# snapshot) from the errors: their marks deleted (a mark committed after the snapshot stays, for
# the next fold), their rows replaced. The current hour is left marked: reads compute it from the
# errors, and folding it every few seconds would only redo it.
FOLD_SQL: Final = f"""
    WITH first_hours AS (
        SELECT DISTINCT hour FROM insight_change
        WHERE app_id = %(app)s AND kind = 'errors' AND hour < date_trunc('hour', now(), 'UTC')
        ORDER BY hour LIMIT {FOLD_HOURS}
    ),
    taken AS (
        DELETE FROM insight_change
        WHERE app_id = %(app)s AND kind = 'errors' AND hour IN (SELECT hour FROM first_hours)
        RETURNING hour
    ),
    per_agent AS (
        SELECT h.hour, e.module, e.code, e.agent_id, count(*) AS errors, max(e.event_at) AS last_at
        FROM first_hours AS h
        JOIN agent_error AS e
            ON e.app_id = %(app)s AND e.event_at >= h.hour AND e.event_at < h.hour + interval '1 hour'
        GROUP BY 1, 2, 3, 4
    ),
    gap AS (
        SELECT p.hour, p.module, p.code, g.hours, count(*)::int AS agents
        FROM per_agent AS p
        CROSS JOIN LATERAL (
            SELECT (extract(epoch FROM p.hour - date_trunc('hour', max(x.event_at), 'UTC'))
                    / 3600)::int AS hours
            {_SAME_ERROR.format(app="%(app)s")} AND x.event_at < p.hour
        ) AS g
        WHERE g.hours IS NOT NULL
        GROUP BY 1, 2, 3, 4
    ),
    computed AS (
        SELECT hour, module, code, sum(errors)::bigint AS errors, count(*)::int AS agents,
               max(last_at) AS last_at
        FROM per_agent GROUP BY 1, 2, 3
    ),
    cleared AS (
        DELETE FROM error_hour AS u
        WHERE u.app_id = %(app)s AND u.hour IN (SELECT hour FROM first_hours)
    ),
    written AS (
        INSERT INTO error_hour (app_id, hour, module, code, errors, agents, last_at, gap_hours,
                                gap_agents)
        SELECT %(app)s, c.hour, c.module, c.code, c.errors, c.agents, c.last_at,
               coalesce(array_agg(g.hours ORDER BY g.hours) FILTER (WHERE g.hours IS NOT NULL),
                        '{{}}'),
               coalesce(array_agg(g.agents ORDER BY g.hours) FILTER (WHERE g.hours IS NOT NULL),
                        '{{}}')
        FROM computed AS c
        LEFT JOIN gap AS g
            ON g.hour = c.hour AND g.module IS NOT DISTINCT FROM c.module
           AND g.code IS NOT DISTINCT FROM c.code
        GROUP BY c.hour, c.module, c.code, c.errors, c.agents, c.last_at
    )
    SELECT count(*) FROM taken"""

PENDING_SQL: Final = "SELECT DISTINCT app_id FROM insight_change WHERE kind = 'errors'"

# The summary over `[start, end)` with whole hours `[a, b)` (see the module). Ties in frequency:
# module, then code, in ascending order, absent ones last.
_SUMMARY: Final = text(
    f"""
    WITH marked AS (
        SELECT DISTINCT hour FROM insight_change
        WHERE app_id = :app AND kind = 'errors' AND hour >= :a AND hour < :b
    ),
    whole AS (
        SELECT u.module, u.code, u.errors, u.last_at,
               u.agents - CASE WHEN cardinality(u.gap_hours) = 0 THEN 0 ELSE coalesce(
                   (SELECT sum(g.n) FROM unnest(u.gap_hours, u.gap_agents) AS g(h, n)
                    WHERE u.hour - g.h * interval '1 hour' >= :a), 0) END AS agents
        FROM error_hour AS u
        WHERE u.app_id = :app AND u.hour >= :a AND u.hour < :b
          AND u.hour NOT IN (SELECT hour FROM marked)
    ),
    slice AS (
        SELECT CAST(:start AS timestamptz) AS s, CAST(:a AS timestamptz) AS e
        UNION ALL SELECT :b, :end
        UNION ALL SELECT hour, hour + interval '1 hour' FROM marked
    ),
    per_agent AS (
        SELECT e.module, e.code, e.agent_id, count(*) AS errors, max(e.event_at) AS last_at
        FROM slice AS s
        JOIN agent_error AS e ON e.app_id = :app AND e.event_at >= s.s AND e.event_at < s.e
        GROUP BY 1, 2, 3
    ),
    rest AS (
        SELECT p.module, p.code, p.errors, p.last_at,
               CASE WHEN f.hour IS NOT NULL AND f.hour NOT IN (SELECT hour FROM marked)
                    THEN 0 ELSE 1 END AS agents
        FROM per_agent AS p
        CROSS JOIN LATERAL (
            SELECT date_trunc('hour', min(x.event_at), 'UTC') AS hour
            {_SAME_ERROR.format(app=":app")} AND x.event_at >= :a AND x.event_at < :b
        ) AS f
    )
    SELECT module, code, sum(errors)::bigint AS count, sum(agents)::bigint AS agents,
           max(last_at) AS last_at
    FROM (SELECT * FROM whole UNION ALL SELECT * FROM rest) AS t
    GROUP BY module, code
    ORDER BY count DESC, module ASC NULLS LAST, code ASC NULLS LAST
    LIMIT :n
    """
)


async def fold(conn: psycopg.AsyncConnection[Any], app_id: str) -> int:
    """Recompute `app_id`'s first `FOLD_HOURS` marked hours and delete their marks; answers how
    many marks went (0 also when another folder holds the app). `conn` must be in no
    transaction; this commits its own."""
    taken = await db.fold_under_lock(conn, lock=f"error_fold/{app_id}", sql=FOLD_SQL, app_id=app_id)
    return taken or 0


def whole_hours(start: datetime, end: datetime) -> tuple[datetime, datetime]:
    """The whole UTC hours `[a, b)` inside `[start, end)`; `(end, end)` when there are none."""
    start, end = start.astimezone(UTC), end.astimezone(UTC)
    floor = start.replace(minute=0, second=0, microsecond=0)
    a = floor if floor == start else floor + _HOUR
    b = end.replace(minute=0, second=0, microsecond=0)
    return (a, b) if a < b else (end, end)


async def summary(
    conn: AsyncConnection, *, app_id: str, start: datetime, end: datetime
) -> dict[str, Any]:
    """The app's errors with event time in `[start, end)` by module and code, most frequent
    first; `truncated` when there were more than `MAX_GROUPS` groups (one statement, so one
    snapshot)."""
    # JIT would compile the statement for longer than it runs (its row estimates are pessimistic).
    await conn.execute(text("SELECT set_config('jit', 'off', true)"))
    a, b = whole_hours(start, end)
    params = {"app": app_id, "start": start, "end": end, "a": a, "b": b, "n": MAX_GROUPS + 1}
    rows = (await conn.execute(_SUMMARY, params)).mappings().all()
    return {
        "app_id": app_id,
        "from": queries.rfc3339(start),
        "to": queries.rfc3339(end),
        "items": [
            {
                "module": row["module"],
                "code": row["code"],
                "count": row["count"],
                "agents": row["agents"],
                "last_at": queries.rfc3339(row["last_at"]),
            }
            for row in rows[:MAX_GROUPS]
        ],
        "truncated": len(rows) > MAX_GROUPS,
    }
