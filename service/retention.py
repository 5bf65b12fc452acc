"""Retention: stored raw notifications older than `NOTIFICATION_RETENTION_DAYS` are deleted.

Only the `notification` table is pruned. Agents, transitions, errors, metrics, turns, call states,
histories and history jobs stay: they name notifications by `notice_id` text, never by key. What
goes is the raw body behind `GET /v1/agents/{agent_id}/events` and the dedupe memory for those
noticeIds; Agora retries for minutes, not weeks, and a redelivery after that would go through the
same idempotent lifecycle (terminal states absorb it).

The worker calls `prune()` periodically (`INTERVAL_S` is plenty: the cut-off moves by days). Rows
go in batches of `BATCH_SIZE`, each batch its own short transaction, so a large backlog (the first
run after enabling retention) never holds locks for long or builds one huge transaction. A batch
takes its rows `FOR UPDATE SKIP LOCKED`, so several workers may prune at once.
"""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta
from typing import Final

import structlog
from sqlalchemy import delete, select
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from service import tables

BATCH_SIZE: Final = 5000
INTERVAL_S: Final = 3600.0

log = structlog.get_logger(__name__)


async def prune(
    engine: AsyncEngine,
    *,
    retention_days: int,
    now: datetime,
    batch_size: int = BATCH_SIZE,
    stop: asyncio.Event | None = None,
) -> int:
    """Delete notifications received before `now - retention_days`; answer how many went.

    `retention_days` 0 keeps everything. Each batch commits on its own; `stop` is checked before
    each batch, so a shutting-down worker waits for one batch at most.
    """
    if retention_days == 0:
        return 0
    cutoff = now - timedelta(days=retention_days)
    total = 0
    while stop is None or not stop.is_set():
        async with engine.begin() as conn:
            deleted = await delete_received_before(conn, cutoff=cutoff, limit=batch_size)
        total += deleted
        if deleted < batch_size:
            break
    if total:
        log.info("notifications_pruned", count=total, cutoff=cutoff.isoformat())
    return total


async def delete_received_before(conn: AsyncConnection, *, cutoff: datetime, limit: int) -> int:
    """Delete up to `limit` notifications received before `cutoff`, skipping locked rows."""
    notification = tables.notification
    batch = (
        select(notification.c.id)
        .where(notification.c.received_at < cutoff)
        .limit(limit)
        .with_for_update(skip_locked=True)
    )
    result = await conn.execute(delete(notification).where(notification.c.id.in_(batch)))
    return result.rowcount
