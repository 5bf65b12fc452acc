"""Read-side SQL for the dashboard API: plain rows turned into JSON-ready dicts.

Times are answered as RFC 3339 UTC strings (`2026-11-21T10:00:00Z`).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncConnection

from service.tables import agent, agent_error, agent_transition, agent_turn, history


def rfc3339(value: datetime | None) -> str | None:
    if value is None:
        return None
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")


async def agent_detail(conn: AsyncConnection, agent_id: str) -> dict[str, Any] | None:
    """The agent with its transitions (event order) and errors, or None if unknown."""
    row = (await conn.execute(select(agent).where(agent.c.agent_id == agent_id))).mappings().first()
    if row is None:
        return None
    transitions = await conn.execute(
        select(agent_transition)
        .where(agent_transition.c.agent_id == agent_id)
        .order_by(agent_transition.c.event_at, agent_transition.c.id)
    )
    errors = await conn.execute(
        select(agent_error)
        .where(agent_error.c.agent_id == agent_id)
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


async def agent_history(conn: AsyncConnection, agent_id: str) -> dict[str, Any] | None:
    """The agent's session record (CONTRACT §6), or None if the agent is unknown."""
    row = (
        (await conn.execute(select(history).where(history.c.agent_id == agent_id)))
        .mappings()
        .first()
    )
    if row is None:
        return None
    turns = await conn.execute(
        select(agent_turn).where(agent_turn.c.agent_id == agent_id).order_by(agent_turn.c.turn_id)
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
