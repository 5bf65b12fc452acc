"""Read-side SQL for what dashboards ask across agents (CONTRACT §6.1): apps, errors.

Errors are read from `agent_error` through `ix_agent_error_app_id_event_at` (app_id, event_at
DESC, id DESC), one app at a time: the newest of each app come straight off the index in order,
and the apps' pages are merged, so a page costs `limit` index entries per app however many
errors are stored. Errors whose notification had no usable time (`event_at` NULL) sort after
every timed one (they are the oldest we can vouch for), newest stored first. The cursor holds
the last item's (time, id); PCU figures are `queries.capacity`'s, as `GET /v1/apps/{app_id}/pcu`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from service import pcu, queries


@dataclass(frozen=True, slots=True, kw_only=True)
class ErrorFilter:
    """`GET /v1/errors` filters; `since`/`until` bound the event time, `until` exclusive."""

    app_ids: Sequence[str]
    agent_id: str | None = None
    module: str | None = None
    code: int | None = None
    since: datetime | None = None
    until: datetime | None = None


async def apps(
    conn: AsyncConnection, *, app_ids: Sequence[str], caps: dict[str, int]
) -> dict[str, Any]:
    """Each app's current PCU against its cap, by App ID."""
    return {
        "items": [
            await queries.capacity(conn, app_id=app_id, cap=caps[app_id])
            for app_id in sorted(app_ids)
        ]
    }


# One app's errors after the cursor, in answer order: timed ones off the index, then untimed
# ones by id (the index's order among NULLs: so ordered, they come off it too). `{filters}`,
# `{timed}` and `{untimed}` are fixed fragments chosen by `_errors_sql`, never request text.
_APP_ERRORS: Final = """
    (SELECT id, app_id, agent_id, event_at, module, code, message, turn_id
     FROM agent_error
     WHERE app_id = a.app_id AND event_at IS NOT NULL{filters}{timed}
     ORDER BY event_at DESC, id DESC LIMIT :n)
    UNION ALL
    (SELECT id, app_id, agent_id, event_at, module, code, message, turn_id
     FROM agent_error
     WHERE app_id = a.app_id AND event_at IS NULL{filters}{untimed}
     ORDER BY event_at DESC, id DESC LIMIT :n)
"""


def _errors_sql(
    where: ErrorFilter, *, after: tuple[datetime | None, int] | None, names: bool = False
) -> str:
    filters = "".join(
        fragment
        for fragment, given in (
            (" AND agent_id = :agent_id", where.agent_id is not None),
            (" AND module = :module", where.module is not None),
            (" AND code = :code", where.code is not None),
            (" AND event_at >= :since", where.since is not None),
            (" AND event_at < :until", where.until is not None),
        )
        if given
    )
    timed, untimed = "", ""
    if where.since is not None or where.until is not None:
        untimed = " AND false"  # an error without a time is in no range
    if after is not None and after[0] is not None:
        # The row comparison keeps to the index; `event_at <=` lets the planner bound the scan.
        timed = " AND event_at <= :after_at AND (event_at, id) < (:after_at, :after_id)"
    elif after is not None:
        timed, untimed = " AND false", untimed + " AND id < :after_id"
    per_app = _APP_ERRORS.format(filters=filters, timed=timed, untimed=untimed)
    order = " ORDER BY e.event_at DESC NULLS LAST, e.id DESC"
    page = (
        "SELECT e.* FROM unnest(CAST(:apps AS text[])) AS a(app_id)"
        f" CROSS JOIN LATERAL ({per_app} LIMIT :n) AS e{order} LIMIT :n"
    )
    if not names:
        return page
    # The page's agents' names, looked up for its rows only (the agents' primary key).
    return (
        f"SELECT e.*, g.name FROM ({page}) AS e"
        " JOIN agent AS g ON g.app_id = e.app_id AND g.agent_id = e.agent_id" + order
    )


async def list_errors(
    conn: AsyncConnection,
    *,
    where: ErrorFilter,
    limit: int,
    cursor: str | None,
    names: bool = False,
) -> dict[str, Any]:
    """Errors across agents, newest first (event time, then id), `limit` per page; with
    `names`, each item also has its agent's `name` (the console's errors page)."""
    after = _error_cursor(cursor) if cursor is not None else None
    params: dict[str, Any] = {
        "apps": list(where.app_ids),
        "n": limit + 1,
        "agent_id": where.agent_id,
        "module": where.module,
        "code": where.code,
        "since": where.since,
        "until": where.until,
        "after_at": after[0] if after else None,
        "after_id": after[1] if after else None,
    }
    sql = text(_errors_sql(where, after=after, names=names))
    rows = (await conn.execute(sql, params)).mappings().all()
    page, more = rows[:limit], len(rows) > limit
    last = page[-1] if more else None
    return {
        "items": [_error(row) | ({"name": row["name"]} if names else {}) for row in page],
        "next_cursor": queries.encode_cursor(
            [pcu.to_us(last["event_at"]) if last["event_at"] else None, last["id"]]
        )
        if last is not None
        else None,
    }


def _error_cursor(cursor: str) -> tuple[datetime | None, int]:
    at, error_id = queries.decode_cursor(
        cursor, kinds=(queries.optional(queries.cursor_at), queries.cursor_id)
    )
    return at, error_id


def _error(row: Any) -> dict[str, Any]:
    return {
        "app_id": row["app_id"],
        "agent_id": row["agent_id"],
        "at": queries.rfc3339(row["event_at"]),
        "module": row["module"],
        "code": row["code"],
        "message": row["message"],
        "turn_id": row["turn_id"],
    }
