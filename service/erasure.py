"""Deleting transcripts: on request (erasure, CONTRACT §8) and by age (`HISTORY_RETENTION_DAYS`).

What goes, for each agent, in one transaction:

    history.contents          emptied; `source`, `reason`, `transcript_at` cleared; `status`
                              becomes `erased` (on request) or `expired` (by age)
    agent_turn                every row of the agent
    notification.body         `payload.contents` of its stored 103s, `payload.turns` of its 112s
    notification.raw          cleared on those rows (the exact bytes, kept when jsonb could not
                              hold a body)
    history_job               a job still queued is finished: the transcript is not fetched again

What stays: the agent (name, channel, labels, states, times), its transitions, errors, metrics and
call states, and every other notification. PCU, usage and error figures are unchanged; turn
latency is not (the hours of the deleted turns are marked for the latency folder, `latency`).

An erased history stays erased; so does an expired one (it may still become `erased` when asked).
The database holds this whoever writes later (migration 458d73fa6583): a transcript stored by a
103 or fetched from Agora changes nothing (a trigger on `history`), a turn inserted for such an
agent is deleted again by the statement that inserted it (a statement trigger on `agent_turn`),
and the write path strips the transcript or turns from a 103 or 112 it stores for such an agent
(`repositories`). Each transaction here first takes the agents' rows `FOR UPDATE`, as the write
path and the history worker take them before they write about an agent: a write racing an
erasure either waits for it and then finds the history erased, or holds it back until the write
commits, so the erasure's deletes see what it wrote.

Erasure by label and retention go in batches of `BATCH_SIZE` agents, each its own transaction,
taking their rows `SKIP LOCKED` so they never wait while holding other rows (no deadlock with a
webhook, several workers may expire at once); a row skipped is taken by a later batch.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Final, Literal

import structlog
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from service.errors import Unavailable

BATCH_SIZE: Final = 500
INTERVAL_S: Final = 3600.0
# How long an erasure by label waits for rows held by webhooks in flight before answering 503.
LOCKED_PATIENCE_S: Final = 10.0

Status = Literal["erased", "expired"]
Key = tuple[str, str]  # (app_id, agent_id)

log = structlog.get_logger(__name__)


@dataclass(frozen=True, slots=True, kw_only=True)
class Erased:
    agents: int
    turns: int
    bodies: int


async def erase_agent(engine: AsyncEngine, *, app_id: str, agent_id: str, who: str) -> bool:
    """Erase one agent's transcript, turns and raw transcript; False if the agent is unknown."""
    async with engine.begin() as conn:
        locked = await conn.scalar(_LOCK_ONE, {"app_id": app_id, "agent_id": agent_id})
        if locked is None:
            return False
        erased = await _erase(conn, keys=[(app_id, agent_id)], status="erased")
    _logged(app_id=app_id, agent_ids=[agent_id], erased=erased, who=who)
    return True


async def erase_by_label(
    engine: AsyncEngine,
    *,
    app_id: str,
    key: str,
    value: str,
    who: str,
    batch_size: int = BATCH_SIZE,
) -> int:
    """Erase every agent of `app_id` whose labels hold `key` = `value`; answers how many agents
    hold it (all erased now, including any erased before). 503 `Unavailable` if some stay locked
    by writes in flight for longer than `LOCKED_PATIENCE_S`."""
    pair = json.dumps({key: value})
    params = {"app_id": app_id, "pair": pair, "limit": batch_size}
    give_up_at = time.monotonic() + LOCKED_PATIENCE_S
    while True:
        async with engine.begin() as conn:
            keys = [(row[0], row[1]) for row in await conn.execute(_LABEL_BATCH, params)]
            erased = await _erase(conn, keys=keys, status="erased")
        if keys:
            _logged(app_id=app_id, agent_ids=[k[1] for k in keys], erased=erased, who=who)
            continue
        async with engine.connect() as conn:
            left = await conn.scalar(_LABEL_LEFT, params)
            matched = await conn.scalar(_LABEL_COUNT, params)
        if not left:
            return int(matched or 0)
        if time.monotonic() > give_up_at:
            raise Unavailable("agents of this label are being written to; retry")
        await asyncio.sleep(0.05)


async def expire(
    engine: AsyncEngine,
    *,
    retention_days: int,
    now: datetime,
    batch_size: int = BATCH_SIZE,
    stop: asyncio.Event | None = None,
) -> int:
    """Expire the histories of agents stopped before `now - retention_days`; answers how many.

    `retention_days` 0 keeps everything. An agent never stopped counts when it is IDLE (seen only
    through events that set no state) and its last event is that old. `stop` is checked before
    each batch.
    """
    if retention_days == 0:
        return 0
    cutoff = now - timedelta(days=retention_days)
    total = 0
    while stop is None or not stop.is_set():
        async with engine.begin() as conn:
            rows = await conn.execute(_EXPIRED_BATCH, {"cutoff": cutoff, "limit": batch_size})
            keys = [(row[0], row[1]) for row in rows]
            await _erase(conn, keys=keys, status="expired")
        total += len(keys)
        if len(keys) < batch_size:
            break
    if total:
        log.info("histories_expired", count=total, cutoff=cutoff.isoformat())
    return total


async def _erase(conn: AsyncConnection, *, keys: Sequence[Key], status: Status) -> Erased:
    """Delete what CONTRACT §8 names for `keys`, whose history rows the caller has locked."""
    if not keys:
        return Erased(agents=0, turns=0, bodies=0)
    params = {
        "app_ids": [key[0] for key in keys],
        "agent_ids": [key[1] for key in keys],
        "status": status,
    }
    row = (await conn.execute(_ERASE, params)).one()
    if status == "erased":
        await conn.execute(_FINISH_QUEUED_JOBS, params)
    return Erased(agents=len(keys), turns=row.turns, bodies=row.bodies)


def _logged(*, app_id: str, agent_ids: list[str], erased: Erased, who: str) -> None:
    log.info(
        "history_erased",
        app_id=app_id,
        agent_ids=agent_ids,
        by=who,
        turns=erased.turns,
        bodies=erased.bodies,
    )


_LOCK_ONE: Final = text(
    "SELECT h.status FROM agent AS a"
    " JOIN history AS h ON h.app_id = a.app_id AND h.agent_id = a.agent_id"
    " WHERE a.app_id = :app_id AND a.agent_id = :agent_id FOR UPDATE OF a, h"
)

_TARGET: Final = (
    "SELECT * FROM unnest(CAST(:app_ids AS text[]), CAST(:agent_ids AS text[]))"
    " AS t(app_id, agent_id)"
)

_ERASE: Final = text(
    f"""
    WITH target AS ({_TARGET}),
    histories AS (
        UPDATE history AS h
        SET status = :status, contents = CAST('[]' AS jsonb), source = NULL, reason = NULL,
            transcript_at = NULL, updated_at = now()
        FROM target
        WHERE h.app_id = target.app_id AND h.agent_id = target.agent_id
        RETURNING 1
    ),
    turns AS (
        DELETE FROM agent_turn AS t
        USING target
        WHERE t.app_id = target.app_id AND t.agent_id = target.agent_id
        RETURNING t.app_id, t.end_at
    ),
    turn_marks AS (
        INSERT INTO insight_change (app_id, kind, hour)
        SELECT DISTINCT app_id, 'latency', date_trunc('hour', end_at, 'UTC')
        FROM turns WHERE end_at IS NOT NULL
    ),
    bodies AS (
        UPDATE notification AS n
        SET body = n.body #- CASE n.event_type
                WHEN 103 THEN CAST('{{payload,contents}}' AS text[])
                ELSE CAST('{{payload,turns}}' AS text[])
            END,
            raw = NULL
        FROM target
        WHERE n.app_id = target.app_id AND n.agent_id = target.agent_id
          AND n.event_type IN (103, 112)
          AND (n.raw IS NOT NULL OR (n.body -> 'payload') ?| CAST('{{contents,turns}}' AS text[]))
        RETURNING 1
    )
    SELECT (SELECT count(*) FROM histories) AS histories,
           (SELECT count(*) FROM turns) AS turns,
           (SELECT count(*) FROM bodies) AS bodies
    """
)

_FINISH_QUEUED_JOBS: Final = text(
    f"""
    UPDATE history_job AS j SET status = 'done', finished_at = now(), last_error = 'erased'
    FROM (
        SELECT q.app_id, q.agent_id FROM history_job AS q
        JOIN ({_TARGET}) AS target ON q.app_id = target.app_id AND q.agent_id = target.agent_id
        WHERE q.status = 'queued'
        FOR UPDATE OF q SKIP LOCKED
    ) AS queued
    WHERE j.app_id = queued.app_id AND j.agent_id = queued.agent_id
    """
)

_LABEL_MATCH: Final = "a.app_id = :app_id AND a.labels @> CAST(:pair AS jsonb)"

_LABEL_BATCH: Final = text(
    f"""
    SELECT h.app_id, h.agent_id FROM agent AS a
    JOIN history AS h ON h.app_id = a.app_id AND h.agent_id = a.agent_id
    WHERE {_LABEL_MATCH} AND h.status <> 'erased'
    ORDER BY a.app_id, a.agent_id
    LIMIT :limit
    FOR UPDATE OF a, h SKIP LOCKED
    """
)

_LABEL_LEFT: Final = text(
    f"""
    SELECT count(*) FROM agent AS a
    JOIN history AS h ON h.app_id = a.app_id AND h.agent_id = a.agent_id
    WHERE {_LABEL_MATCH} AND h.status <> 'erased'
    """
)

_LABEL_COUNT: Final = text(f"SELECT count(*) FROM agent AS a WHERE {_LABEL_MATCH}")

# Stopped before the cut-off; or never stopped, IDLE (only events that set no state) and
# silent since before it.
_EXPIRED_BATCH: Final = text(
    """
    SELECT h.app_id, h.agent_id FROM history AS h
    JOIN agent AS a ON a.app_id = h.app_id AND a.agent_id = h.agent_id
    WHERE h.status NOT IN ('erased', 'expired')
      AND (a.stopped_at < :cutoff
           OR (a.stopped_at IS NULL AND a.state = 'IDLE'
               AND coalesce(a.last_event_at, a.first_seen_at) < :cutoff))
    ORDER BY a.app_id, a.agent_id
    LIMIT :limit
    FOR UPDATE OF a, h SKIP LOCKED
    """
)
