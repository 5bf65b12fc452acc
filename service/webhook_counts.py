"""How webhooks were answered, per app: counted in memory, added to `webhook_count` in the
background, read back as the console's webhook health.

Duplicates and refusals (bad signature, bad JSON, too large, unknown app) store nothing, and
counting stored notifications would scan a day of them on every look. So each serving process
keeps a `Tally`: the webhook route adds one to a key (app, minute received, outcome, reason), an
in-memory dict operation that cannot fail or wait. `flushing()` runs beside the app and every
`WEBHOOK_COUNTS_FLUSH_S` adds what was counted to `webhook_count` in one upsert (its keys in one
sorted order, so replicas adding to the same rows never deadlock), and once more at shutdown. A
flush that fails keeps its counts for the next one; a process that dies loses at most one
interval of counts, which only these health figures ever show.

A request names its app in the path, which anyone can fill: an App ID that is not configured is
kept only when it looks like one, and only `MAX_UNKNOWN_APPS` of them per interval (the rest are
counted under ''), so a flood of invented ids costs neither memory nor rows.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections import Counter
from collections.abc import AsyncIterator, Collection, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any, Final

import structlog
from sqlalchemy import delete, func, select, text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from service import db
from service.tables import webhook_count

log = structlog.get_logger(__name__)

MAX_UNKNOWN_APPS: Final = 50
KEEP: Final = timedelta(days=8)
PRUNE_EVERY: Final = timedelta(hours=1)
_APP_ID: Final = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_UPSERT: Final = text(
    """
    INSERT INTO webhook_count (app_id, minute, outcome, reason, count)
    SELECT * FROM unnest(CAST(:apps AS text[]), CAST(:minutes AS timestamptz[]),
                         CAST(:outcomes AS text[]), CAST(:reasons AS text[]),
                         CAST(:counts AS bigint[]))
    ON CONFLICT (app_id, minute, outcome, reason)
    DO UPDATE SET count = webhook_count.count + excluded.count
    """
)

Key = tuple[str, datetime, str, str]  # app_id, minute, outcome, reason


class Tally:
    """This process's counts not yet added to `webhook_count`."""

    def __init__(self, *, known: Collection[str]) -> None:
        self._known = frozenset(known)
        self._counts: Counter[Key] = Counter()
        self._unknown: set[str] = set()

    def add(self, app_id: str | None, *, outcome: str, reason: str, at: datetime) -> None:
        """Count one answered delivery (`app_id` as the path named it, None without one)."""
        app = app_id if app_id is not None and _APP_ID.match(app_id) else ""
        if app and app not in self._known and app not in self._unknown:
            if len(self._unknown) >= MAX_UNKNOWN_APPS:
                app = ""
            else:
                self._unknown.add(app)
        minute = at.astimezone(UTC).replace(second=0, microsecond=0)
        self._counts[(app, minute, outcome, reason)] += 1

    def take(self) -> Counter[Key]:
        """Everything counted so far; the tally starts again from nothing."""
        taken, self._counts, self._unknown = self._counts, Counter(), set()
        return taken

    def give_back(self, counts: Counter[Key], *, now: datetime) -> None:
        """Counts a flush could not store, for the next one (those past `KEEP` are let go)."""
        oldest = now - KEEP
        self._counts.update({key: n for key, n in counts.items() if key[1] >= oldest})


async def flush(conn: AsyncConnection, counts: Mapping[Key, int]) -> None:
    """Add `counts` to `webhook_count` (the caller commits)."""
    if not counts:
        return
    keys = sorted(counts)
    await conn.execute(
        _UPSERT,
        {
            "apps": [k[0] for k in keys],
            "minutes": [k[1] for k in keys],
            "outcomes": [k[2] for k in keys],
            "reasons": [k[3] for k in keys],
            "counts": [counts[k] for k in keys],
        },
    )


async def prune(conn: AsyncConnection, *, now: datetime) -> int:
    """Delete the counts of minutes older than `KEEP`."""
    result = await conn.execute(delete(webhook_count).where(webhook_count.c.minute < now - KEEP))
    return result.rowcount


@contextlib.asynccontextmanager
async def flushing(
    tally: Tally, engine: AsyncEngine, *, interval_s: float, timeout_s: float = 5.0
) -> AsyncIterator[None]:
    """Flush `tally` every `interval_s` while the block runs, and once more when it ends; a flush
    the database has not taken within `timeout_s` is given up (and its counts kept)."""
    stop = asyncio.Event()
    task = asyncio.create_task(
        _run(tally, engine, interval_s=interval_s, timeout_s=timeout_s, stop=stop)
    )
    try:
        yield
    finally:
        stop.set()
        await task


async def _run(
    tally: Tally, engine: AsyncEngine, *, interval_s: float, timeout_s: float, stop: asyncio.Event
) -> None:
    pruned_at: datetime | None = None
    while True:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=interval_s)
        now = datetime.now(UTC)
        prune_now = pruned_at is None or now - pruned_at >= PRUNE_EVERY
        stored = await _flush_once(tally, engine, now=now, prune_too=prune_now, timeout_s=timeout_s)
        if stored and prune_now:
            pruned_at = now
        if stop.is_set():  # that was the last flush
            return


async def _flush_once(
    tally: Tally, engine: AsyncEngine, *, now: datetime, prune_too: bool, timeout_s: float
) -> bool:
    counts = tally.take()

    async def store() -> None:
        async with engine.begin() as conn:
            await flush(conn, counts)
            if prune_too:
                await prune(conn, now=now)

    try:
        await db.within(store(), timeout_s=timeout_s)
    except Exception as error:  # never fatal: the counts wait for the next flush
        tally.give_back(counts, now=now)
        log.warning("webhook_counts_flush_failed", error=type(error).__name__, keys=len(counts))
        return False
    return True


async def totals(
    conn: AsyncConnection, *, app_ids: Collection[str], since: datetime
) -> dict[str, dict[str, Any]]:
    """Per app: `outcomes` {outcome: count} and `rejected` {reason: count}, over the minutes from
    the one holding `since` on; apps without deliveries answer zeros."""
    minute = since.astimezone(UTC).replace(second=0, microsecond=0)
    rows = await conn.execute(
        select(
            webhook_count.c.app_id,
            webhook_count.c.outcome,
            webhook_count.c.reason,
            func.sum(webhook_count.c.count).label("n"),
        )
        .where(webhook_count.c.app_id.in_(sorted(app_ids)), webhook_count.c.minute >= minute)
        .group_by(webhook_count.c.app_id, webhook_count.c.outcome, webhook_count.c.reason)
    )
    found: dict[str, dict[str, Any]] = {a: _empty() for a in app_ids}
    for app_id, outcome, reason, n in rows:
        entry = found[app_id]
        entry["outcomes"][outcome] = entry["outcomes"].get(outcome, 0) + int(n)
        if outcome == "rejected":
            entry["rejected"][reason] = int(n)
    return found


async def unknown_apps(
    conn: AsyncConnection, *, known: Collection[str], since: datetime, limit: int = 10
) -> list[tuple[str, int]]:
    """Deliveries refused as `unknown_app` since `since`, by the App ID they named (most first);
    '' stands for a path without a plain App ID, and for ids past `MAX_UNKNOWN_APPS`."""
    minute = since.astimezone(UTC).replace(second=0, microsecond=0)
    n = func.sum(webhook_count.c.count)
    rows = await conn.execute(
        select(webhook_count.c.app_id, n)
        .where(
            webhook_count.c.minute >= minute,
            webhook_count.c.outcome == "rejected",
            webhook_count.c.reason == "unknown_app",
            webhook_count.c.app_id.not_in(sorted(known)),
        )
        .group_by(webhook_count.c.app_id)
        .order_by(n.desc(), webhook_count.c.app_id)
        .limit(limit)
    )
    return [(app_id, int(count)) for app_id, count in rows]


def _empty() -> dict[str, Any]:
    return {"outcomes": {}, "rejected": {}}
