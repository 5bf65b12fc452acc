"""Use case: apply stored notifications that could not be applied when they arrived.

A verified notification is never lost to its content (CONTRACT §3): one without a usable agent,
or whose application failed, is stored `unapplied` with its `problem`. `run()` (behind
`convoai-ledger reapply [--app APP]`) reads each of an app's unapplied notifications again with
this release's parser, from the exact bytes when they were kept (`raw`) or else the stored JSON,
and applies what it now understands through the same decisions and writes as a webhook, one
notification per transaction: the notification becomes `accepted`. What it still cannot apply
stays listed, with the problem as this release sees it.

Notifications are taken in arrival order and locked `FOR UPDATE SKIP LOCKED`, so two runs (or a
run beside the service) never apply one twice; applying is idempotent anyway (errors, metrics and
call states are keyed by noticeId and position, turns by turn_id, the lifecycle by event time).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Final

import structlog
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from service import db, events, ingest, repositories
from service.config import Settings

log = structlog.get_logger(__name__)

BATCH_SIZE: Final = 100

_NEXT: Final = text(
    """
    SELECT id, received_at, coalesce(raw, convert_to(body::text, 'UTF8')) AS bytes
    FROM notification
    WHERE app_id = :app_id AND outcome = 'unapplied' AND id > :after
    ORDER BY id
    LIMIT 1
    FOR UPDATE SKIP LOCKED"""
)
_SETTLE: Final = text(
    """
    UPDATE notification
    SET outcome = :outcome, problem = :problem, agent_id = :agent_id, event_at = :event_at
    WHERE id = :id"""
)


class _StillUnapplied(Exception):
    """This release's decision failed too: undo what the attempt wrote."""


@dataclass(slots=True, kw_only=True)
class Summary:
    app_id: str
    applied: int = 0
    still_unapplied: int = 0

    def describe(self) -> str:
        return f"{self.app_id}: {self.applied} applied, {self.still_unapplied} still unapplied"


async def run(engine: AsyncEngine, settings: Settings, *, app_id: str) -> Summary:
    """Take up every unapplied notification of `app_id` once; answers what became of them."""
    summary = Summary(app_id=app_id)
    after = 0
    while True:
        async with engine.begin() as conn:
            found = await _take_up(conn, settings, app_id=app_id, after=after)
        if found is None:
            break
        after, applied = found
        if applied is None:
            summary.still_unapplied += 1
            continue
        summary.applied += 1
        ingest.count(applied, source="webhook")  # after the commit, as for a webhook
    log.info(
        "reapply_finished",
        app_id=app_id,
        applied=summary.applied,
        still_unapplied=summary.still_unapplied,
    )
    return summary


async def _take_up(
    conn: AsyncConnection, settings: Settings, *, app_id: str, after: int
) -> tuple[int, ingest.Applied | None] | None:
    """Lock the next unapplied notification after id `after` and apply it if this release can:
    answers its id and what was applied (None: still unapplied), or None when none is left."""
    row = (await conn.execute(_NEXT, {"app_id": app_id, "after": after})).first()
    if row is None:
        return None
    notification_id, received_at, raw = row
    note = events.parse(bytes(raw), received_at=received_at)
    structlog.contextvars.bind_contextvars(notice_id=note.notice_id, agent_id=note.agent_id)
    if note.event is None or note.agent_id is None:
        await _settle(conn, notification_id, note, outcome="unapplied", problem=note.problem)
        return notification_id, None
    try:
        async with conn.begin_nested():
            outcome = await _apply(conn, app_id=app_id, note=note, received_at=received_at)
            if outcome.status != "accepted":  # its decision failed (a bug): still unapplied
                raise _StillUnapplied
            await _settle(conn, notification_id, note, outcome="accepted", problem=note.problems)
    except _StillUnapplied:
        await _settle(conn, notification_id, note, outcome="unapplied", problem="applying failed")
        return notification_id, None
    except db.ERRORS as error:
        if db.is_unavailable(error):
            raise
        problem = f"applying failed: {type(error).__name__}"
        log.error("reapply_failed", error=type(error).__name__, exc_info=error)
        await _settle(conn, notification_id, note, outcome="unapplied", problem=problem)
        return notification_id, None
    return notification_id, outcome.applied or ingest.Applied(app_id=app_id)


async def _apply(
    conn: AsyncConnection,
    *,
    app_id: str,
    note: events.Notification,
    received_at: datetime,
) -> ingest.Outcome:
    """The stored notification's effects through the webhook's own decisions and writes."""
    raw = await db.driver_connection(conn)
    delivery = ingest.Delivery(app_id=app_id, note=note, received_at=received_at)
    assert delivery.key is not None
    plan = ingest.Plan(await repositories.lock_agents(raw, [delivery.key]))
    outcome = ingest.plan_delivery(plan, delivery)
    await repositories.write(raw, plan)
    return outcome


async def _settle(
    conn: AsyncConnection,
    notification_id: int,
    note: events.Notification,
    *,
    outcome: repositories.Outcome,
    problem: str | None,
) -> None:
    await conn.execute(
        _SETTLE,
        {
            "id": notification_id,
            "outcome": outcome,
            "problem": problem,
            "agent_id": note.agent_id,
            "event_at": note.occurred_at,
        },
    )
