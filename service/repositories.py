"""Write-side statements (and the reads reconciliation decides on: `unsettled_agents`,
`tracked_agents`, `last_alive_at`). Each takes the caller's connection first and never commits.

An agent is `(app_id, agent_id)` in every statement. Dedupe and serialisation are Postgres's job:
`record_and_lock` stores a delivery with an `INSERT … ON CONFLICT DO NOTHING RETURNING`; it and
`lock_agent` hold the agent's row lock until the caller's transaction ends, so two replicas
applying notifications for one agent take turns.

A statement's size never depends on the payload's: the items of an array (errors, metrics, turns)
go as one JSON array parameter that the server unpacks (`jsonb_array_elements`), so a body of
tens of thousands of items is still one statement with a handful of parameters.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final, Literal

from sqlalchemy import RowMapping, and_, cast, func, literal, or_, select, text, tuple_, update
from sqlalchemy.dialects.postgresql import JSONB, insert
from sqlalchemy.ext.asyncio import AsyncConnection

from service import events, jobs, lifecycle
from service.tables import agent, agent_transition, history, history_job

Source = Literal["webhook", "reconcile"]
Outcome = Literal["accepted", "ignored", "unapplied"]


@dataclass(frozen=True, slots=True, kw_only=True)
class AgentRow:
    """The columns the lifecycle needs to decide, read under the row lock."""

    app_id: str
    agent_id: str
    name: str | None
    name_at: datetime | None
    channel: str | None
    channel_at: datetime | None
    labels: Mapping[str, Any]
    label_versions: Mapping[str, Any]
    state: lifecycle.State
    state_at: datetime | None
    started_at: datetime | None
    stopped_at: datetime | None
    stop_message: str | None
    active_from: datetime | None
    active_until: datetime | None
    warning: str | None
    warning_at: datetime | None
    last_event_at: datetime | None

    @classmethod
    def from_row(cls, row: Mapping[Any, Any]) -> AgentRow:
        return cls(
            **{name: row[name] for name in _AGENT_NAMES_LIST}, state=lifecycle.State(row["state"])
        )


_AGENT_NAMES_LIST: Final = (
    "app_id",
    "agent_id",
    "name",
    "name_at",
    "channel",
    "channel_at",
    "labels",
    "label_versions",
    "state_at",
    "started_at",
    "stopped_at",
    "stop_message",
    "active_from",
    "active_until",
    "warning",
    "warning_at",
    "last_event_at",
)
_AGENT_COLUMNS: Final = (*_AGENT_NAMES_LIST, "state")
_AGENT_NAMES: Final = ", ".join(_AGENT_COLUMNS)
_NEW_NAMES: Final = ", ".join(f"new.{c} AS new_{c}" for c in _AGENT_COLUMNS)

# One statement, one round trip: store the delivery (nothing if it is a duplicate); if it is new
# and names an agent we do not know, create the agent IDLE with its `pending` history; answer the
# stored id and the agent's row: the one just created (`new_*`, ours until we commit) or the
# existing one, locked in the lateral subquery. The sub-statements share one snapshot: an agent
# created meanwhile by a concurrent transaction is in neither, and the caller falls back to
# `lock_agent`. The body goes as JSON text, which the server parses into jsonb exactly as sent.
_RECORD_AND_LOCK: Final = text(
    f"""
    WITH stored AS (
        INSERT INTO notification (app_id, notice_id, product_id, event_type, agent_id, outcome,
                                  problem, event_at, notify_ms, received_at, body, raw)
        VALUES (:app_id, :notice_id, :product_id, :event_type, :agent_id, :outcome, :problem,
                :event_at, :notify_ms, :received_at, CAST(:body AS jsonb), :raw)
        ON CONFLICT (app_id, notice_id) DO NOTHING
        RETURNING id
    ),
    created AS (
        INSERT INTO agent (app_id, agent_id, state)
        SELECT :app_id, CAST(:agent AS text), 'IDLE'
        WHERE CAST(:agent AS text) IS NOT NULL AND EXISTS (SELECT FROM stored)
        ON CONFLICT (app_id, agent_id) DO NOTHING
        RETURNING {_AGENT_NAMES}
    ),
    history_row AS (
        INSERT INTO history (app_id, agent_id) SELECT app_id, agent_id FROM created
        ON CONFLICT (app_id, agent_id) DO NOTHING
    )
    SELECT (SELECT id FROM stored) AS stored_id, {_NEW_NAMES}, locked.*
    FROM (SELECT 1) AS one
    LEFT JOIN created AS new ON true
    LEFT JOIN LATERAL (
        SELECT {_AGENT_NAMES} FROM agent
        WHERE app_id = :app_id AND agent_id = :agent AND EXISTS (SELECT FROM stored)
        FOR UPDATE OF agent
    ) AS locked ON true"""
)


def outcome_of(note: events.Notification) -> Outcome:
    """How a delivery is stored: `ignored` (not for us), `unapplied` (no usable agent) or
    `accepted`."""
    if note.ignored is not None:
        return "ignored"
    return "unapplied" if note.unusable is not None else "accepted"


def _notification_params(
    *,
    app_id: str,
    note: events.Notification,
    received_at: datetime,
    outcome: Outcome,
    problem: str | None,
) -> dict[str, Any]:
    return {
        "app_id": app_id,
        "notice_id": note.notice_id,
        "product_id": note.product_id,
        "event_type": note.event_type,
        "agent_id": note.agent_id,
        "outcome": outcome,
        "problem": problem,
        "event_at": note.occurred_at,
        "notify_ms": note.notify_ms,
        "received_at": received_at,
        "body": note.json,
        "raw": note.raw,
    }


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
    if unknown, or None when the notification is not applied to an agent.
    """
    agent_id = note.agent_id if note.event is not None else None
    params = _notification_params(
        app_id=app_id,
        note=note,
        received_at=received_at,
        outcome=outcome_of(note),
        problem=note.problem,
    )
    found = (await conn.execute(_RECORD_AND_LOCK, {**params, "agent": agent_id})).mappings().one()
    if found["stored_id"] is None:
        return False, None
    if agent_id is None:
        return True, None
    if found["new_agent_id"] is not None:
        return True, AgentRow.from_row({c: found[f"new_{c}"] for c in _AGENT_COLUMNS})
    if found["agent_id"] is not None:
        return True, AgentRow.from_row(found)
    row, _ = await lock_agent(conn, app_id=app_id, agent_id=agent_id)
    return True, row


_KEEP_UNAPPLIED: Final = text(
    """
    INSERT INTO notification (app_id, notice_id, product_id, event_type, agent_id, outcome,
                              problem, event_at, notify_ms, received_at, body, raw)
    VALUES (:app_id, :notice_id, :product_id, :event_type, :agent_id, :outcome, :problem,
            :event_at, :notify_ms, :received_at, CAST(:body AS jsonb), :raw)
    ON CONFLICT (app_id, notice_id) DO NOTHING
    RETURNING id"""
)


async def keep_unapplied(
    conn: AsyncConnection,
    *,
    app_id: str,
    note: events.Notification,
    received_at: datetime,
    problem: str,
) -> bool:
    """Store a delivery that could not be applied, as `unapplied` with `problem`; False if its
    noticeId was stored meanwhile."""
    params = _notification_params(
        app_id=app_id, note=note, received_at=received_at, outcome="unapplied", problem=problem
    )
    return (await conn.execute(_KEEP_UNAPPLIED, params)).first() is not None


async def lock_agent(conn: AsyncConnection, *, app_id: str, agent_id: str) -> tuple[AgentRow, bool]:
    """The agent's row, locked until the transaction ends, created IDLE if unknown.

    Answers `(row, created)`. A new agent also gets its `pending` history row.
    """
    key = {"app_id": app_id, "agent_id": agent_id}
    row = (await conn.execute(_LOCK_AGENT, key)).mappings().first()
    if row is not None:
        return AgentRow.from_row(row), False
    row = (await conn.execute(_CREATE_AGENT, key)).mappings().first()
    if row is None:  # another transaction created it between our two statements
        row = (await conn.execute(_LOCK_AGENT, key)).mappings().one()
        return AgentRow.from_row(row), False
    return AgentRow.from_row(row), True


_LOCK_AGENT: Final = text(
    f"SELECT {_AGENT_NAMES} FROM agent WHERE app_id = :app_id AND agent_id = :agent_id FOR UPDATE"
)
_CREATE_AGENT: Final = text(
    f"""
    WITH created AS (
        INSERT INTO agent (app_id, agent_id, state) VALUES (:app_id, :agent_id, 'IDLE')
        ON CONFLICT (app_id, agent_id) DO NOTHING
        RETURNING {_AGENT_NAMES}
    ),
    history_row AS (
        INSERT INTO history (app_id, agent_id) SELECT app_id, agent_id FROM created
        ON CONFLICT (app_id, agent_id) DO NOTHING
    )
    SELECT * FROM created"""
)


async def update_agent(
    conn: AsyncConnection, *, app_id: str, agent_id: str, values: Mapping[str, Any]
) -> None:
    """Write computed agent fields (the caller holds the row lock)."""
    await conn.execute(
        update(agent)
        .where(agent.c.app_id == app_id, agent.c.agent_id == agent_id)
        .values(**values, updated_at=func.now())
    )


async def add_transitions(
    conn: AsyncConnection,
    *,
    app_id: str,
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
                    "app_id": app_id,
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


_ADD_ERRORS: Final = text(
    """
    INSERT INTO agent_error (app_id, agent_id, notice_id, position, module, code, message,
                             turn_id, event_at, received_at)
    SELECT :app_id, :agent_id, :notice_id, (o - 1)::int, e->>0, (e->>1)::bigint, e->>2, e->>3,
           :at, :received_at
    FROM jsonb_array_elements(CAST(:items AS jsonb)) WITH ORDINALITY AS u(e, o)
    ON CONFLICT DO NOTHING"""
)


async def add_errors(
    conn: AsyncConnection,
    *,
    app_id: str,
    agent_id: str,
    notice_id: str,
    items: Sequence[events.ErrorItem],
    at: datetime | None,
    received_at: datetime,
) -> None:
    """Record a 110's errors, by position in the notification (a redelivery adds nothing)."""
    if not items:
        return
    rows = json.dumps([[e.module, e.code, e.message, e.turn_id] for e in items])
    await conn.execute(
        _ADD_ERRORS,
        {
            "app_id": app_id,
            "agent_id": agent_id,
            "notice_id": notice_id,
            "items": rows,
            "at": at,
            "received_at": received_at,
        },
    )


_ADD_METRICS: Final = text(
    """
    INSERT INTO agent_metric (app_id, agent_id, notice_id, position, turn_id, asr_ttlw,
                              llm_ttfb, llm_ttfs, tts_ttfb, figures, event_at)
    SELECT :app_id, :agent_id, :notice_id, (o - 1)::int, m->>'turn_id',
           (m->'figures'->>'asr_ttlw')::int, (m->'figures'->>'llm_ttfb')::int,
           (m->'figures'->>'llm_ttfs')::int, (m->'figures'->>'tts_ttfb')::int,
           m->'figures', :at
    FROM jsonb_array_elements(CAST(:items AS jsonb)) WITH ORDINALITY AS u(m, o)
    ON CONFLICT DO NOTHING"""
)


async def add_metrics(
    conn: AsyncConnection,
    *,
    app_id: str,
    agent_id: str,
    notice_id: str,
    items: Sequence[events.MetricItem],
    at: datetime | None,
) -> None:
    """Record a 111's per-turn figures, by position (a redelivery adds nothing)."""
    if not items:
        return
    rows = json.dumps([{"turn_id": m.turn_id, "figures": m.figures} for m in items])
    await conn.execute(
        _ADD_METRICS,
        {"app_id": app_id, "agent_id": agent_id, "notice_id": notice_id, "items": rows, "at": at},
    )


_UPSERT_TURNS: Final = text(
    """
    INSERT INTO agent_turn (app_id, agent_id, turn_id, start_at, end_at, start_type, end_type,
                            e2e_latency_ms, data, source)
    SELECT :app_id, :agent_id, (t->>0)::int, (t->>1)::timestamptz, (t->>2)::timestamptz,
           t->>3, t->>4, (t->>5)::int, t->6, :source
    FROM jsonb_array_elements(CAST(:items AS jsonb)) AS u(t)
    ON CONFLICT DO NOTHING"""
)


async def upsert_turns(
    conn: AsyncConnection,
    *,
    app_id: str,
    agent_id: str,
    turns: Sequence[events.Turn],
    source: Literal["webhook", "api"],
) -> None:
    """Store turns by `(app_id, agent_id, turn_id)`; a turn already stored is kept as it is."""
    if not turns:
        return
    rows = json.dumps(
        [
            [
                turn.turn_id,
                _iso(turn.start_at),
                _iso(turn.end_at),
                turn.start_type,
                turn.end_type,
                turn.e2e_latency_ms,
                turn.data,
            ]
            for turn in {t.turn_id: t for t in turns}.values()
        ],
        ensure_ascii=False,
    )
    await conn.execute(
        _UPSERT_TURNS, {"app_id": app_id, "agent_id": agent_id, "items": rows, "source": source}
    )


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


_ADD_CALL_STATE: Final = text(
    """
    INSERT INTO call_state (app_id, agent_id, notice_id, direction, state, reported_at, received_at)
    VALUES (:app_id, :agent_id, :notice_id, :direction, :state, :reported_at, :received_at)
    ON CONFLICT DO NOTHING"""
)


async def add_call_state(
    conn: AsyncConnection,
    *,
    app_id: str,
    agent_id: str,
    notice_id: str,
    event: events.CallState,
    received_at: datetime,
) -> None:
    if event.state is None:
        return
    await conn.execute(
        _ADD_CALL_STATE,
        {
            "app_id": app_id,
            "agent_id": agent_id,
            "notice_id": notice_id,
            "direction": event.direction,
            "state": event.state,
            "reported_at": event.reported_at,
            "received_at": received_at,
        },
    )


async def store_transcript(
    conn: AsyncConnection,
    *,
    app_id: str,
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
        .where(history.c.app_id == app_id, history.c.agent_id == agent_id)
        .values(
            status="complete",
            source=source,
            contents=cast(literal(json.dumps(list(contents), ensure_ascii=False)), JSONB),
            reason=None,
            transcript_at=func.now(),
            updated_at=func.now(),
        )
        .returning(history.c.agent_id)
    )
    if source == "api":
        stmt = stmt.where(history.c.source.is_distinct_from("webhook"))
    return (await conn.execute(stmt)).first() is not None


async def mark_history_unavailable(
    conn: AsyncConnection, *, app_id: str, agent_id: str, reason: str
) -> bool:
    """Settle a still-`pending` history as `unavailable` with `reason`; True if it was pending.

    A transcript stored later (`store_transcript`) still makes it `complete`.
    """
    stmt = (
        update(history)
        .where(
            history.c.app_id == app_id,
            history.c.agent_id == agent_id,
            history.c.status == "pending",
        )
        .values(status="unavailable", reason=reason, updated_at=func.now())
        .returning(history.c.agent_id)
    )
    return (await conn.execute(stmt)).first() is not None


async def enqueue_history_job(conn: AsyncConnection, *, app_id: str, agent_id: str) -> None:
    """Record the durable history job for a stopped agent (once per agent); if it is new,
    listening workers are notified when the caller's transaction commits.

    One statement: the notification is sent only if the job is new.
    """
    created = (
        insert(history_job)
        .values(app_id=app_id, agent_id=agent_id)
        .on_conflict_do_nothing(index_elements=[history_job.c.app_id, history_job.c.agent_id])
        .returning(history_job.c.app_id, history_job.c.agent_id)
        .cte("created")
    )
    await conn.execute(select(func.pg_notify(jobs.CHANNEL, created.c.agent_id)))


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


async def tracked_agents(
    conn: AsyncConnection, *, app_id: str, agent_ids: Sequence[str]
) -> list[Tracked]:
    """The agents of `app_id` among `agent_ids` that we know, in any state."""
    if not agent_ids:
        return []
    stmt = select(*_TRACKED_COLUMNS).where(
        agent.c.app_id == app_id, agent.c.agent_id.in_(agent_ids)
    )
    return [_tracked(row) for row in (await conn.execute(stmt)).mappings()]


async def mark_seen_live(
    conn: AsyncConnection, *, app_id: str, agent_ids: Sequence[str], at: datetime
) -> int:
    """Record that Agora listed or reported these agents of `app_id` live at `at`; answers the
    rows moved. Only active agents are touched, and `seen_live_at` only moves forward.
    """
    if not agent_ids:
        return 0
    stmt = (
        update(agent)
        .where(
            agent.c.app_id == app_id,
            agent.c.agent_id.in_(agent_ids),
            agent.c.state.in_(_ACTIVE_STATES),
            or_(agent.c.seen_live_at.is_(None), agent.c.seen_live_at < at),
        )
        .values(seen_live_at=at)
    )
    return (await conn.execute(stmt)).rowcount


async def last_alive_at(conn: AsyncConnection, *, app_id: str, agent_id: str) -> datetime | None:
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
    ).where(tuple_(agent.c.app_id, agent.c.agent_id) == (app_id, agent_id))
    value: datetime | None = (await conn.execute(stmt)).scalar_one_or_none()
    return value
