"""Read-side SQL for the dashboard API: plain rows turned into JSON-ready dicts.

Times are answered as RFC 3339 UTC strings (`2026-11-21T10:00:00Z`). Lists are keyset-paginated:
the opaque cursor holds the sort key of the last item answered, and the next page starts strictly
after it, so rows inserted meanwhile (new agents, new notifications) never make a page skip or
repeat one. PCU reads are in `concurrency`.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final

from sqlalchemy import ColumnElement, Table, and_, exists, func, select, tuple_
from sqlalchemy.ext.asyncio import AsyncConnection

from service import concurrency, pcu, usage
from service.errors import InvalidParameter
from service.tables import (
    agent,
    agent_error,
    agent_listed_at,
    agent_transition,
    agent_turn,
    history,
    notification,
)


@dataclass(frozen=True, slots=True, kw_only=True)
class AgentFilter:
    """`GET /v1/agents` filters; `since`/`until` bound the start time, `stopped_since`/
    `stopped_until` the stop time, each `until` exclusive."""

    app_ids: Sequence[str] = ()  # the apps to list (those the caller may see)
    states: Sequence[str] = ()
    channel: str | None = None
    labels: Mapping[str, str] = field(default_factory=dict)
    since: datetime | None = None
    until: datetime | None = None
    name: str | None = None
    has_errors: bool | None = None  # None: either
    stopped_since: datetime | None = None
    stopped_until: datetime | None = None


# What a cursor may hold: the times and ids the API gives out, never more than their types hold.
_EARLIEST_US: Final = pcu.to_us(datetime.min.replace(tzinfo=UTC))
_LATEST_US: Final = pcu.to_us(datetime.max.replace(tzinfo=UTC))
_BIGINT: Final = 2**63
HISTORY_STATUSES: Final = ("pending", "complete", "unavailable", "erased", "expired")


def storable(value: str) -> bool:
    """Whether PostgreSQL text can hold `value`: no NUL character, no unpaired surrogate.

    Nothing stored has either, so a key or filter with one can match nothing (and sent as a
    parameter, it would make the driver raise).
    """
    if "\x00" in value:
        return False
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def rfc3339(value: datetime | None) -> str | None:
    if value is None:
        return None
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")


async def agent_apps(conn: AsyncConnection, agent_id: str, *, app_ids: Sequence[str]) -> list[str]:
    """The apps among `app_ids` that hold an agent with this `agent_id` (sorted)."""
    rows = await conn.execute(
        select(agent.c.app_id)
        .where(agent.c.agent_id == agent_id, agent.c.app_id.in_(list(app_ids)))
        .order_by(agent.c.app_id)
    )
    return [row[0] for row in rows]


def _one_agent(table: Table, app_id: str, agent_id: str) -> ColumnElement[bool]:
    return and_(table.c.app_id == app_id, table.c.agent_id == agent_id)


async def agent_detail(conn: AsyncConnection, app_id: str, agent_id: str) -> dict[str, Any] | None:
    """The agent with its transitions (event order) and errors, or None if unknown."""
    row = (
        (await conn.execute(select(agent).where(_one_agent(agent, app_id, agent_id))))
        .mappings()
        .first()
    )
    if row is None:
        return None
    transitions = await conn.execute(
        select(agent_transition)
        .where(_one_agent(agent_transition, app_id, agent_id))
        .order_by(agent_transition.c.event_at, agent_transition.c.id)
    )
    errors = await conn.execute(
        select(agent_error)
        .where(_one_agent(agent_error, app_id, agent_id))
        .order_by(agent_error.c.event_at, agent_error.c.notice_id, agent_error.c.position)
    )
    return {
        **agent_summary(row),
        "warning": {"message": row["warning"], "at": rfc3339(row["warning_at"])}
        if row["warning"]
        else None,
        "transitions": [_transition(t) for t in transitions.mappings()],
        "errors": [_error(e) for e in errors.mappings()],
    }


def agent_summary(row: Any) -> dict[str, Any]:
    return {
        "agent_id": row["agent_id"],
        "app_id": row["app_id"],
        "name": row["name"],
        "channel": row["channel"],
        "labels": row["labels"],
        "state": row["state"],
        "started_at": rfc3339(row["started_at"]),
        "stopped_at": rfc3339(row["stopped_at"]),
        "stop_message": row["stop_message"],
        "last_event_at": rfc3339(row["last_event_at"]),
    }


def _transition(row: Any) -> dict[str, Any]:
    return {
        "from": row["from_state"],
        "to": row["to_state"],
        "cause": row["cause"],
        "source": row["source"],
        "inferred": row["inferred"],
        "notice_id": row["notice_id"],
        "event_at": rfc3339(row["event_at"]),
        "received_at": rfc3339(row["received_at"]),
    }


def _error(row: Any) -> dict[str, Any]:
    return {
        "module": row["module"],
        "code": row["code"],
        "message": row["message"],
        "turn_id": row["turn_id"],
        "notice_id": row["notice_id"],
        "at": rfc3339(row["event_at"]),
    }


async def agent_history(conn: AsyncConnection, app_id: str, agent_id: str) -> dict[str, Any] | None:
    """The agent's session record (CONTRACT §6), or None if the agent is unknown."""
    row = (
        (await conn.execute(select(history).where(_one_agent(history, app_id, agent_id))))
        .mappings()
        .first()
    )
    if row is None:
        return None
    turns = await conn.execute(
        select(agent_turn)
        .where(_one_agent(agent_turn, app_id, agent_id))
        .order_by(agent_turn.c.turn_id)
    )
    return {
        "agent_id": agent_id,
        "status": row["status"],
        "source": row["source"],
        "contents": [
            {"role": item.get("role"), "content": item.get("content")} for item in row["contents"]
        ],
        "turns": [_turn(t) for t in turns.mappings()],
        "reason": row["reason"],
    }


def _turn(row: Any) -> dict[str, Any]:
    return {
        "turn_id": row["turn_id"],
        "start_at": rfc3339(row["start_at"]),
        "end_at": rfc3339(row["end_at"]),
        "start_type": row["start_type"],
        "end_type": row["end_type"],
        "e2e_latency_ms": row["e2e_latency_ms"],
        "source": row["source"],
        "data": row["data"],
    }


async def list_agents(
    conn: AsyncConnection, *, where: AgentFilter, limit: int, cursor: str | None
) -> dict[str, Any]:
    """Agents newest first (start time, else first seen), `limit` per page, keyset cursor."""
    key = agent_listed_at.label("listed_at")
    stmt = select(agent, key).where(*_agent_conditions(where))
    if cursor is not None:
        at, app_id, agent_id = decode_cursor(cursor, kinds=(cursor_at, _cursor_text, _cursor_text))
        stmt = stmt.where(
            tuple_(agent_listed_at, agent.c.app_id, agent.c.agent_id) < (at, app_id, agent_id)
        )
    stmt = stmt.order_by(
        agent_listed_at.desc(), agent.c.app_id.desc(), agent.c.agent_id.desc()
    ).limit(limit + 1)
    rows = (await conn.execute(stmt)).mappings().all()
    page, more = rows[:limit], len(rows) > limit
    last = page[-1] if more else None
    return {
        "items": [agent_summary(row) for row in page],
        "next_cursor": encode_cursor(
            [pcu.to_us(last["listed_at"]), last["app_id"], last["agent_id"]]
        )
        if last is not None
        else None,
    }


def _agent_conditions(where: AgentFilter) -> list[ColumnElement[bool]]:
    conditions: list[ColumnElement[bool]] = []
    conditions.append(agent.c.app_id.in_(list(where.app_ids)))
    if where.states:
        conditions.append(agent.c.state.in_(list(where.states)))
    if where.channel is not None:
        conditions.append(agent.c.channel == where.channel)
    for key, value in sorted(where.labels.items()):
        conditions.append(agent.c.labels[key].astext == value)
    if where.since is not None:
        conditions.append(agent.c.started_at >= where.since)
    if where.until is not None:
        conditions.append(agent.c.started_at < where.until)
    if where.name is not None:
        conditions.append(agent.c.name == where.name)
    if where.has_errors is not None:
        erred = exists().where(
            agent_error.c.app_id == agent.c.app_id, agent_error.c.agent_id == agent.c.agent_id
        )
        conditions.append(erred if where.has_errors else ~erred)
    if where.stopped_since is not None:
        conditions.append(agent.c.stopped_at >= where.stopped_since)
    if where.stopped_until is not None:
        conditions.append(agent.c.stopped_at < where.stopped_until)
    return conditions


async def agent_events(
    conn: AsyncConnection, app_id: str, agent_id: str, *, limit: int, cursor: str | None
) -> dict[str, Any] | None:
    """The agent's stored notifications in event order (arrival time where none), or None."""
    known = await conn.scalar(select(agent.c.agent_id).where(_one_agent(agent, app_id, agent_id)))
    if known is None:
        return None
    at = func.coalesce(notification.c.event_at, notification.c.received_at)
    stmt = select(notification, at.label("sort_at")).where(
        _one_agent(notification, app_id, agent_id)
    )
    if cursor is not None:
        after_at, after_id = decode_cursor(cursor, kinds=(cursor_at, cursor_id))
        stmt = stmt.where(tuple_(at, notification.c.id) > (after_at, after_id))
    stmt = stmt.order_by(at, notification.c.id).limit(limit + 1)
    rows = (await conn.execute(stmt)).mappings().all()
    page, more = rows[:limit], len(rows) > limit
    last = page[-1] if more else None
    return {
        "items": [_event(row) for row in page],
        "next_cursor": encode_cursor([pcu.to_us(last["sort_at"]), last["id"]])
        if last is not None
        else None,
    }


def _event(row: Any) -> dict[str, Any]:
    body = row["body"] if isinstance(row["body"], dict) else {}
    return {
        "notice_id": row["notice_id"],
        "event_type": row["event_type"],
        "event_time": rfc3339(row["event_at"]),
        "received_at": rfc3339(row["received_at"]),
        "outcome": row["outcome"],
        "problem": row["problem"],
        "payload": body.get("payload"),
    }


async def unapplied(
    conn: AsyncConnection, *, app_id: str, limit: int, cursor: str | None
) -> dict[str, Any]:
    """The app's stored notifications not yet applied, newest first (CONTRACT §6)."""
    stmt = select(notification).where(
        notification.c.app_id == app_id, notification.c.outcome == "unapplied"
    )
    if cursor is not None:
        before_at, before_id = decode_cursor(cursor, kinds=(cursor_at, cursor_id))
        stmt = stmt.where(
            tuple_(notification.c.received_at, notification.c.id) < (before_at, before_id)
        )
    stmt = stmt.order_by(notification.c.received_at.desc(), notification.c.id.desc())
    rows = (await conn.execute(stmt.limit(limit + 1))).mappings().all()
    page, more = rows[:limit], len(rows) > limit
    last = page[-1] if more else None
    return {
        "items": [
            {
                "notice_id": row["notice_id"],
                "event_type": row["event_type"],
                "received_at": rfc3339(row["received_at"]),
                "problem": row["problem"],
                "payload": row["body"].get("payload") if isinstance(row["body"], dict) else None,
            }
            for row in page
        ],
        "next_cursor": encode_cursor([pcu.to_us(last["received_at"]), last["id"]])
        if last is not None
        else None,
    }


async def unapplied_count(
    conn: AsyncConnection, *, app_ids: Sequence[str], upto: int
) -> dict[str, int]:
    """Per app, its stored notifications not yet applied, counted up to `upto` (enough to say
    "1000 or more" without counting a large backlog row by row)."""
    found = {}
    for app_id in app_ids:
        n = await conn.scalar(
            select(func.count()).select_from(
                select(notification.c.id)
                .where(notification.c.app_id == app_id, notification.c.outcome == "unapplied")
                .limit(upto)
                .subquery()
            )
        )
        found[app_id] = int(n or 0)
    return found


async def history_statuses(
    conn: AsyncConnection, *, app_ids: Sequence[str], since: datetime
) -> dict[str, dict[str, int]]:
    """Per app, the histories of the agents stopped since `since`, by status (zeros included)."""
    rows = await conn.execute(
        select(history.c.app_id, history.c.status, func.count())
        .select_from(
            agent.join(
                history,
                and_(history.c.app_id == agent.c.app_id, history.c.agent_id == agent.c.agent_id),
            )
        )
        .where(agent.c.app_id.in_(list(app_ids)), agent.c.stopped_at >= since)
        .group_by(history.c.app_id, history.c.status)
    )
    found = {a: dict.fromkeys(HISTORY_STATUSES, 0) for a in app_ids}
    for app_id, status, n in rows:
        found[app_id][status] = int(n)
    return found


async def pcu_status(
    conn: AsyncConnection, *, app_id: str, limits: pcu.Limits, window_s: int, now: datetime
) -> dict[str, Any]:
    """Current PCU against the cap, and the peak over the last `window_s` seconds."""
    status = await capacity(conn, app_id=app_id, cap=limits.cap)
    end = pcu.to_us(now)
    high = await concurrency.peak(
        conn, app_id=app_id, start=end - window_s * pcu.US_PER_S, end=end + 1
    )
    return {
        **status,
        "utilisation": status["current"] / limits.cap,
        "peak": {"value": high.value, "at": rfc3339(concurrency.as_datetime(high.at))},
    }


async def capacity(conn: AsyncConnection, *, app_id: str, cap: int) -> dict[str, Any]:
    """The agents holding a PCU slot now against the app's cap (`GET /v1/apps` lists these)."""
    current = await concurrency.current(conn, app_id=app_id)
    return {
        "app_id": app_id,
        "cap": cap,
        "current": current,
        "available": max(cap - current, 0),
    }


async def pcu_series(
    conn: AsyncConnection, *, app_id: str, start: datetime, end: datetime, step_s: int
) -> dict[str, Any]:
    """Exact max and time-weighted average concurrency per step over `[start, end)`."""
    points = await concurrency.series(
        conn,
        app_id=app_id,
        start=pcu.to_us(start),
        end=pcu.to_us(end),
        step=step_s * pcu.US_PER_S,
    )
    return {
        "app_id": app_id,
        "from": rfc3339(start),
        "to": rfc3339(end),
        "step": step_s,
        "points": [
            {"at": rfc3339(pcu.from_us(p.start)), "max": p.max, "avg": p.avg} for p in points
        ],
    }


async def usage_series(
    conn: AsyncConnection,
    *,
    app_id: str,
    start: datetime,
    end: datetime,
    step_s: int,
    label: str | None,
) -> dict[str, Any]:
    """Agent time, sessions and FAILED stops per step over `[start, end)`, by the value of the
    label `label` (`usage.series`); `agent_seconds` is the exact µs sum over 10⁶."""
    points = await usage.series(
        conn,
        app_id=app_id,
        start=pcu.to_us(start),
        end=pcu.to_us(end),
        step=step_s * pcu.US_PER_S,
        key=label,
    )
    return {
        "app_id": app_id,
        "from": rfc3339(start),
        "to": rfc3339(end),
        "step": step_s,
        "group_by": None if label is None else f"label.{label}",
        "points": [
            {
                "at": rfc3339(pcu.from_us(p.start)),
                "groups": [
                    {
                        "key": key,
                        "agent_seconds": agent_us / pcu.US_PER_S,
                        "sessions": sessions,
                        "failed": failed,
                    }
                    for key, agent_us, sessions, failed in p.groups
                ],
            }
            for p in points
        ],
    }


def encode_cursor(key: list[Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(key).encode()).decode().rstrip("=")


def decode_cursor(cursor: str, *, kinds: tuple[Callable[[Any], Any], ...]) -> tuple[Any, ...]:
    """The sort key a cursor holds, each member read by its kind (`cursor_at`, ...).

    Anything else (not base64, not JSON, other members, values no row can have) is a 400.
    """
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        key = json.loads(raw)
        if not isinstance(key, list) or len(key) != len(kinds):
            raise TypeError(key)
        return tuple(kind(value) for kind, value in zip(kinds, key, strict=True))
    except (binascii.Error, ValueError, TypeError, RecursionError):
        raise InvalidParameter("cursor: not a cursor this API gave out") from None


def cursor_at(value: Any) -> datetime:
    """A time in µs since the epoch, within the years a datetime holds."""
    if type(value) is not int or not _EARLIEST_US <= value <= _LATEST_US:
        raise TypeError(value)
    return pcu.from_us(value)


def cursor_id(value: Any) -> int:
    """A row id: a bigint."""
    if type(value) is not int or not -_BIGINT <= value < _BIGINT:
        raise TypeError(value)
    return value


def _cursor_text(value: Any) -> str:
    if type(value) is not str or not storable(value):
        raise TypeError(value)
    return value


def optional(kind: Callable[[Any], Any]) -> Callable[[Any], Any]:
    """A cursor member of `kind`, or null (a key column that may be NULL)."""
    return lambda value: None if value is None else kind(value)
