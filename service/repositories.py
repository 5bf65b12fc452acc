"""Write-side statements (and the reads reconciliation decides on: `unsettled_agents`,
`tracked_agents`, `last_alive_at`). Each takes the caller's connection first and never commits.

Dedupe and serialisation are Postgres's job: `record_and_lock` stores a delivery with an
`INSERT … ON CONFLICT DO NOTHING RETURNING`; it and `lock_agent` hold the agent's row lock until the
caller's transaction ends, so two replicas applying notifications for one agent take turns.
Several rows are written as one multi-row VALUES statement, not an executemany.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final, Literal

from sqlalchemy import RowMapping, and_, bindparam, func, literal, or_, select, text, update
from sqlalchemy.dialects.postgresql import JSONB, insert
from sqlalchemy.ext.asyncio import AsyncConnection

from service import events, jobs, lifecycle
from service.tables import (
    agent,
    agent_error,
    agent_metric,
    agent_transition,
    agent_turn,
    call_state,
    history,
    history_job,
)

Source = Literal["webhook", "reconcile"]


@dataclass(frozen=True, slots=True, kw_only=True)
class AgentRow:
    """The columns the lifecycle needs to decide, read under the row lock."""

    agent_id: str
    app_id: str
    name: str | None
    channel: str | None
    state: lifecycle.State
    state_at: datetime | None
    started_at: datetime | None
    active_from: datetime | None
    active_until: datetime | None
    last_event_at: datetime | None

    @classmethod
    def from_row(cls, row: Mapping[Any, Any]) -> AgentRow:
        return cls(
            agent_id=row["agent_id"],
            app_id=row["app_id"],
            name=row["name"],
            channel=row["channel"],
            state=lifecycle.State(row["state"]),
            state_at=row["state_at"],
            started_at=row["started_at"],
            active_from=row["active_from"],
            active_until=row["active_until"],
            last_event_at=row["last_event_at"],
        )


_AGENT_COLUMNS = (
    agent.c.agent_id,
    agent.c.app_id,
    agent.c.name,
    agent.c.channel,
    agent.c.state,
    agent.c.state_at,
    agent.c.started_at,
    agent.c.active_from,
    agent.c.active_until,
    agent.c.last_event_at,
)


_AGENT_NAMES: Final = ", ".join(c.name for c in _AGENT_COLUMNS)
_NEW_NAMES: Final = ", ".join(f"new.{c.name} AS new_{c.name}" for c in _AGENT_COLUMNS)

# One statement, one round trip: store the delivery (nothing if it is a duplicate); if it is new
# and names an agent we do not know, create the agent IDLE with its `pending` history; answer the
# stored id and the agent's row: the one just created (`new_*`, ours until we commit) or the
# existing one, locked in the lateral subquery. The sub-statements share one snapshot: an agent
# created meanwhile by a concurrent transaction is in neither, and the caller falls back to
# `lock_agent`.
_RECORD_AND_LOCK: Final = text(
    f"""
    WITH stored AS (
        INSERT INTO notification (app_id, notice_id, product_id, event_type, agent_id, outcome,
                                  event_at, notify_ms, received_at, body)
        VALUES (:app_id, :notice_id, :product_id, :event_type, :agent_id, :outcome, :event_at,
                :notify_ms, :received_at, :body)
        ON CONFLICT (app_id, notice_id) DO NOTHING
        RETURNING id
    ),
    created AS (
        INSERT INTO agent (agent_id, app_id, state)
        SELECT CAST(:agent_id AS text), :app_id, 'IDLE'
        WHERE CAST(:agent_id AS text) IS NOT NULL AND EXISTS (SELECT FROM stored)
        ON CONFLICT (agent_id) DO NOTHING
        RETURNING {_AGENT_NAMES}
    ),
    history_row AS (
        INSERT INTO history (agent_id) SELECT agent_id FROM created
        ON CONFLICT (agent_id) DO NOTHING
    )
    SELECT (SELECT id FROM stored) AS stored_id, {_NEW_NAMES}, locked.*
    FROM (SELECT 1) AS one
    LEFT JOIN created AS new ON true
    LEFT JOIN LATERAL (
        SELECT {_AGENT_NAMES} FROM agent
        WHERE agent_id = :agent_id AND EXISTS (SELECT FROM stored)
        FOR UPDATE OF agent
    ) AS locked ON true"""
).bindparams(bindparam("body", type_=JSONB))


async def record_and_lock(
    conn: AsyncConnection,
    *,
    app_id: str,
    note: events.Notification,
    received_at: datetime,
) -> tuple[bool, AgentRow | None]:
    """Store a verified delivery (dedupe on `(app_id, noticeId)`) and, for a new one about an
    agent, take the agent's row as `lock_agent` does: one round trip when the agent is known.

    Answers `(stored, row)`: `stored` is False for a duplicate (and `row` None); `row` is the
    agent's row, locked until the transaction ends and created IDLE (with its `pending` history)
    if unknown, or None when the notification names no agent.
    """
    found = (
        (
            await conn.execute(
                _RECORD_AND_LOCK,
                {
                    "app_id": app_id,
                    "notice_id": note.notice_id,
                    "product_id": note.product_id,
                    "event_type": note.event_type,
                    "agent_id": note.agent_id,
                    "outcome": "ignored" if note.ignored else "accepted",
                    "event_at": note.occurred_at,
                    "notify_ms": note.notify_ms,
                    "received_at": received_at,
                    "body": note.body,
                },
            )
        )
        .mappings()
        .one()
    )
    if found["stored_id"] is None:
        return False, None
    if note.agent_id is None:
        return True, None
    if found["new_agent_id"] is not None:
        return True, AgentRow.from_row({c.name: found[f"new_{c.name}"] for c in _AGENT_COLUMNS})
    if found["agent_id"] is not None:
        return True, AgentRow.from_row(found)
    row, _ = await lock_agent(conn, agent_id=note.agent_id, app_id=app_id)
    return True, row


async def lock_agent(conn: AsyncConnection, *, agent_id: str, app_id: str) -> tuple[AgentRow, bool]:
    """The agent's row, locked until the transaction ends, created IDLE if unknown.

    Answers `(row, created)`. A new agent also gets its `pending` history row.
    """
    locked = select(*_AGENT_COLUMNS).where(agent.c.agent_id == agent_id).with_for_update()
    row = (await conn.execute(locked)).mappings().first()
    if row is not None:
        return AgentRow.from_row(row), False
    created = (
        insert(agent)
        .values(agent_id=agent_id, app_id=app_id, state=lifecycle.State.IDLE.value)
        .on_conflict_do_nothing(index_elements=[agent.c.agent_id])
        .returning(*_AGENT_COLUMNS)
    )
    row = (await conn.execute(created)).mappings().first()
    if row is None:  # another transaction created it between our two statements
        row = (await conn.execute(locked)).mappings().one()
        return AgentRow.from_row(row), False
    await conn.execute(insert(history).values(agent_id=agent_id).on_conflict_do_nothing())
    return AgentRow.from_row(row), True


async def update_agent(
    conn: AsyncConnection,
    agent_id: str,
    values: Mapping[str, Any],
    *,
    labels: Mapping[str, Any] | None = None,
) -> None:
    """Write computed agent fields and merge `labels` in (the caller holds the row lock)."""
    extra: dict[str, Any] = {"updated_at": func.now()}
    if labels:
        extra["labels"] = agent.c.labels.op("||")(literal(dict(labels), JSONB))
    await conn.execute(update(agent).where(agent.c.agent_id == agent_id).values(**values, **extra))


async def add_transitions(
    conn: AsyncConnection,
    *,
    agent_id: str,
    steps: Sequence[lifecycle.Step],
    source: Source,
    notice_id: str | None,
    received_at: datetime,
) -> None:
    """Append one transition row per step (the log is append-only; a trigger enforces it)."""
    if not steps:
        return
    await conn.execute(
        insert(agent_transition).values(
            [
                {
                    "agent_id": agent_id,
                    "from_state": step.from_state.value,
                    "to_state": step.to_state.value,
                    "cause": step.kind.value,
                    "source": source,
                    "notice_id": notice_id,
                    "inferred": step.inferred,
                    "event_at": step.at,
                    "received_at": received_at,
                }
                for step in steps
            ]
        )
    )


async def add_errors(
    conn: AsyncConnection,
    *,
    agent_id: str,
    notice_id: str,
    items: Sequence[events.ErrorItem],
    at: datetime | None,
    received_at: datetime,
) -> None:
    if not items:
        return
    rows = [
        {
            "agent_id": agent_id,
            "notice_id": notice_id,
            "position": position,
            "module": item.module,
            "code": item.code,
            "message": item.message,
            "turn_id": item.turn_id,
            "event_at": at,
            "received_at": received_at,
        }
        for position, item in enumerate(items)
    ]
    await conn.execute(insert(agent_error).values(rows).on_conflict_do_nothing())


async def add_metrics(
    conn: AsyncConnection,
    *,
    agent_id: str,
    notice_id: str,
    items: Sequence[events.MetricItem],
    at: datetime | None,
) -> None:
    if not items:
        return
    rows = [
        {
            "agent_id": agent_id,
            "notice_id": notice_id,
            "position": position,
            "turn_id": item.turn_id,
            "asr_ttlw": _int_or_none(item.figures.get("asr_ttlw")),
            "llm_ttfb": _int_or_none(item.figures.get("llm_ttfb")),
            "llm_ttfs": _int_or_none(item.figures.get("llm_ttfs")),
            "tts_ttfb": _int_or_none(item.figures.get("tts_ttfb")),
            "figures": dict(item.figures),
            "event_at": at,
        }
        for position, item in enumerate(items)
    ]
    await conn.execute(insert(agent_metric).values(rows).on_conflict_do_nothing())


async def upsert_turns(
    conn: AsyncConnection,
    *,
    agent_id: str,
    turns: Sequence[events.Turn],
    source: Literal["webhook", "api"],
) -> None:
    """Store turns by `(agent_id, turn_id)`; a turn already stored is kept as it is."""
    if not turns:
        return
    rows = [
        {
            "agent_id": agent_id,
            "turn_id": turn.turn_id,
            "start_at": turn.start_at,
            "end_at": turn.end_at,
            "start_type": turn.start_type,
            "end_type": turn.end_type,
            "e2e_latency_ms": turn.e2e_latency_ms,
            "data": dict(turn.data),
            "source": source,
        }
        for turn in {t.turn_id: t for t in turns}.values()
    ]
    await conn.execute(insert(agent_turn).values(rows).on_conflict_do_nothing())


async def add_call_state(
    conn: AsyncConnection,
    *,
    agent_id: str,
    notice_id: str,
    event: events.CallState,
    received_at: datetime,
) -> None:
    await conn.execute(
        insert(call_state)
        .values(
            agent_id=agent_id,
            notice_id=notice_id,
            direction=event.direction,
            state=event.state,
            reported_at=event.reported_at,
            received_at=received_at,
        )
        .on_conflict_do_nothing()
    )


async def store_transcript(
    conn: AsyncConnection,
    *,
    agent_id: str,
    contents: Sequence[Mapping[str, Any]],
    source: Literal["webhook", "api"],
) -> bool:
    """Set the transcript and mark the history `complete`; True if it was written.

    A webhook (103) transcript is what Agora pushed after the stop and always wins; an API
    transcript never replaces a webhook one.
    """
    stmt = (
        update(history)
        .where(history.c.agent_id == agent_id)
        .values(
            status="complete",
            source=source,
            contents=list(contents),
            reason=None,
            transcript_at=func.now(),
            updated_at=func.now(),
        )
        .returning(history.c.agent_id)
    )
    if source == "api":
        stmt = stmt.where(history.c.source.is_distinct_from("webhook"))
    return (await conn.execute(stmt)).first() is not None


async def mark_history_unavailable(conn: AsyncConnection, *, agent_id: str, reason: str) -> bool:
    """Settle a still-`pending` history as `unavailable` with `reason`; True if it was pending.

    A transcript stored later (`store_transcript`) still makes it `complete`.
    """
    stmt = (
        update(history)
        .where(history.c.agent_id == agent_id, history.c.status == "pending")
        .values(status="unavailable", reason=reason, updated_at=func.now())
        .returning(history.c.agent_id)
    )
    return (await conn.execute(stmt)).first() is not None


async def enqueue_history_job(conn: AsyncConnection, *, agent_id: str, app_id: str) -> None:
    """Record the durable history job for a stopped agent (once per agent); if it is new,
    listening workers are notified when the caller's transaction commits.

    One statement: the notification is sent only if the job is new.
    """
    created = (
        insert(history_job)
        .values(agent_id=agent_id, app_id=app_id)
        .on_conflict_do_nothing(index_elements=[history_job.c.agent_id])
        .returning(history_job.c.agent_id)
        .cte("created")
    )
    await conn.execute(select(func.pg_notify(jobs.CHANNEL, created.c.agent_id)))


def _int_or_none(value: object) -> int | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return int(value)


@dataclass(frozen=True, slots=True, kw_only=True)
class Tracked:
    """An agent as reconciliation compares it with Agora's list (read without a lock)."""

    agent_id: str
    state: lifecycle.State
    started_at: datetime | None  # Agora's start_ts, else when it became active here


_TRACKED_COLUMNS = (
    agent.c.agent_id,
    agent.c.state,
    func.coalesce(agent.c.started_at, agent.c.active_from).label("started_at"),
)
_ACTIVE_STATES = [state.value for state in lifecycle.ACTIVE]


def _tracked(row: RowMapping) -> Tracked:
    return Tracked(
        agent_id=row["agent_id"],
        state=lifecycle.State(row["state"]),
        started_at=row["started_at"],
    )


async def unsettled_agents(
    conn: AsyncConnection, *, app_id: str, idle_since: datetime
) -> list[Tracked]:
    """The agents of `app_id` that Agora may still have to settle: every active one (holding a
    PCU slot), and every IDLE one first seen since `idle_since`."""
    stmt = select(*_TRACKED_COLUMNS).where(
        agent.c.app_id == app_id,
        or_(
            agent.c.state.in_(_ACTIVE_STATES),
            and_(
                agent.c.state == lifecycle.State.IDLE.value,
                agent.c.first_seen_at >= idle_since,
            ),
        ),
    )
    return [_tracked(row) for row in (await conn.execute(stmt)).mappings()]


async def tracked_agents(conn: AsyncConnection, *, agent_ids: Sequence[str]) -> list[Tracked]:
    """The agents among `agent_ids` that we know, in any state."""
    if not agent_ids:
        return []
    stmt = select(*_TRACKED_COLUMNS).where(agent.c.agent_id.in_(agent_ids))
    return [_tracked(row) for row in (await conn.execute(stmt)).mappings()]


async def mark_seen_live(conn: AsyncConnection, *, agent_ids: Sequence[str], at: datetime) -> int:
    """Record that Agora listed or reported these agents live at `at`; answers the rows moved.

    Only active agents are touched, and `seen_live_at` only moves forward.
    """
    if not agent_ids:
        return 0
    stmt = (
        update(agent)
        .where(
            agent.c.agent_id.in_(agent_ids),
            agent.c.state.in_(_ACTIVE_STATES),
            or_(agent.c.seen_live_at.is_(None), agent.c.seen_live_at < at),
        )
        .values(seen_live_at=at)
    )
    return (await conn.execute(stmt)).rowcount


async def last_alive_at(conn: AsyncConnection, *, agent_id: str) -> datetime | None:
    """The latest time anything we hold says the agent was alive.

    The greatest of: a reconciliation pass seeing it live, its latest event time, the time its
    current state was set, its start. (Greatest ignores NULLs.)
    """
    stmt = select(
        func.greatest(
            agent.c.seen_live_at,
            agent.c.last_event_at,
            agent.c.state_at,
            agent.c.active_from,
            agent.c.started_at,
        )
    ).where(agent.c.agent_id == agent_id)
    value: datetime | None = (await conn.execute(stmt)).scalar_one_or_none()
    return value
