"""INTERIM: the console's own reads of errors and turn latency, until the insight API's exist.

Each function here stands in for one shared insight function (CONTRACT §6.1) and answers the
same shape, so switching is one call per page in `pages.py`:

    top_errors      GET /v1/apps/{app_id}/errors/summary   (items, most frequent first)
    turn_latency    GET /v1/apps/{app_id}/latency          (one point over the whole range)
    errors          GET /v1/errors                          (newest first, keyset pages)

They read `agent_error` and `agent_turn` through the insight indexes (revision 3c9e1f7a2d41):
`(app_id, event_at DESC, id DESC)` and `(app_id, end_at) INCLUDE (figures)`. Percentiles are
nearest-rank (`percentile_disc`: the smallest value with at least p of the turns at or below it).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any, Final

from sqlalchemy import ColumnElement, and_, func, or_, select, union_all
from sqlalchemy.ext.asyncio import AsyncConnection

from service import pcu, queries
from service.tables import agent, agent_error, agent_turn

STAGES: Final = ("asr_ttlw", "llm_ttft", "tts_ttfb")


async def top_errors(
    conn: AsyncConnection, *, app_id: str, start: datetime, end: datetime, limit: int
) -> list[dict[str, Any]]:
    """INTERIM (errors/summary): errors with `start <= event_at < end` by module and code:
    `count`, distinct `agents`, `last_at`; most frequent first (then the latest)."""
    count, last_at = func.count(), func.max(agent_error.c.event_at)
    rows = await conn.execute(
        select(
            agent_error.c.module,
            agent_error.c.code,
            count.label("count"),
            func.count(agent_error.c.agent_id.distinct()).label("agents"),
            last_at.label("last_at"),
        )
        .where(
            agent_error.c.app_id == app_id,
            agent_error.c.event_at >= start,
            agent_error.c.event_at < end,
        )
        .group_by(agent_error.c.module, agent_error.c.code)
        .order_by(count.desc(), last_at.desc(), agent_error.c.module, agent_error.c.code)
        .limit(limit)
    )
    return [
        {
            "module": row.module,
            "code": row.code,
            "count": row.count,
            "agents": row.agents,
            "last_at": queries.rfc3339(row.last_at),
        }
        for row in rows
    ]


async def turn_latency(
    conn: AsyncConnection, *, app_id: str, start: datetime, end: datetime
) -> dict[str, Any]:
    """INTERIM (latency, one bucket): the turns with `start <= end_at < end`, `e2e_ms` p50, p90,
    p99 and max, and each stage's p50 and p90 (nearest rank; None where no turn has a figure)."""

    def rank(column: Any, p: float) -> Any:
        return func.percentile_disc(p).within_group(column)

    e2e = agent_turn.c.e2e_latency_ms
    figures = [
        func.count().label("turns"),
        *(rank(e2e, p).label(f"e2e_{n}") for n, p in (("p50", 0.5), ("p90", 0.9), ("p99", 0.99))),
        func.max(e2e).label("e2e_max"),
    ]
    for stage in STAGES:
        column = agent_turn.c[stage]
        figures += [
            rank(column, 0.5).label(f"{stage}_p50"),
            rank(column, 0.9).label(f"{stage}_p90"),
        ]
    row = (
        await conn.execute(
            select(*figures).where(
                agent_turn.c.app_id == app_id,
                agent_turn.c.end_at >= start,
                agent_turn.c.end_at < end,
            )
        )
    ).one()
    return {
        "turns": row.turns,
        "e2e_ms": {k: row._mapping[f"e2e_{k}"] for k in ("p50", "p90", "p99", "max")},
        "segments": {s: {k: row._mapping[f"{s}_{k}"] for k in ("p50", "p90")} for s in STAGES},
    }


async def errors(
    conn: AsyncConnection,
    *,
    app_ids: Sequence[str],
    module: str | None,
    code: int | None,
    limit: int,
    cursor: str | None,
) -> dict[str, Any]:
    """INTERIM (GET /v1/errors): errors of `app_ids`, newest first by event time (those without
    one first, as the index orders them), then by id; `limit` per page, keyset cursor.

    One index scan per app, each stopping after `limit + 1` rows, merged here: a page costs
    the same however many errors the apps hold.
    """
    conditions = [] if cursor is None else [_after(cursor)]
    if module is not None:
        conditions.append(agent_error.c.module == module)
    if code is not None:
        conditions.append(agent_error.c.code == code)
    order = (agent_error.c.event_at.desc().nulls_first(), agent_error.c.id.desc())
    per_app = [
        select(agent_error)
        .where(agent_error.c.app_id == app_id, *conditions)
        .order_by(*order)
        .limit(limit + 1)
        for app_id in sorted(app_ids)
    ]
    if not per_app:
        return {"items": [], "next_cursor": None}
    merged = union_all(*per_app).subquery()
    named = (
        select(merged, agent.c.name)
        .join(agent, and_(agent.c.app_id == merged.c.app_id, agent.c.agent_id == merged.c.agent_id))
        .order_by(merged.c.event_at.desc().nulls_first(), merged.c.id.desc())
        .limit(limit + 1)
    )
    rows = (await conn.execute(named)).mappings().all()
    page, more = rows[:limit], len(rows) > limit
    last = page[-1] if more else None
    return {
        "items": [
            {
                "app_id": row["app_id"],
                "agent_id": row["agent_id"],
                "name": row["name"],
                "at": queries.rfc3339(row["event_at"]),
                "module": row["module"],
                "code": row["code"],
                "message": row["message"],
                "turn_id": row["turn_id"],
            }
            for row in page
        ],
        "next_cursor": queries.encode_cursor(
            [pcu.to_us(last["event_at"]) if last["event_at"] else None, last["id"]]
        )
        if last is not None
        else None,
    }


def _after(cursor: str) -> ColumnElement[bool]:
    """Rows after the cursor's (event time or None, id) in the page order."""
    at, row_id = queries.decode_cursor(cursor, kinds=(_optional_at, queries.cursor_id))
    if at is None:
        return or_(
            and_(agent_error.c.event_at.is_(None), agent_error.c.id < row_id),
            agent_error.c.event_at.is_not(None),
        )
    return or_(
        agent_error.c.event_at < at, and_(agent_error.c.event_at == at, agent_error.c.id < row_id)
    )


def _optional_at(value: Any) -> datetime | None:
    return None if value is None else queries.cursor_at(value)
