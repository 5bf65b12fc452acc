"""The live feed of applied transitions, behind `GET /v1/stream` and the console's live parts.

Theory of operation. The source is `agent_transition`, the append-only log that every applied
change writes (webhooks and reconciliation alike), so every replica streams every change whichever
one received it, and an event id names a row that stays. Each row carries `xid`, the id of the
transaction that wrote it. Rows become visible when their transaction commits, which is not in
xid order; so a reader only takes rows whose xid is below the oldest transaction still running
(`pg_snapshot_xmin` of its snapshot): every transaction below it has ended, so no row can later
appear before one already sent. Events go out in (xid, id) order and an event id is that pair
(`Position`), so resuming from one is a range scan on the (xid, id) index.

One task per process (`Hub`) reads the log every `POLL_S` while anyone is subscribed and hands
each event to the subscribers that may see its app, through bounded queues, never waiting on one;
ingest never waits on a reader either: nothing in the write path knows the stream exists. A new
subscriber first catches up from its position by reading the log itself, a page at a time at the
pace it writes, then joins the live feed and reads once more; events at or before its last
position are skipped, so the hand-over neither loses nor repeats one. A subscriber that falls
`QUEUE_EVENTS` behind (a burst, a slow network) leaves the live feed, its queue emptied, and
catches up the same way; one that takes nothing for `sse.SEND_TIMEOUT_S` is dropped (it may
reconnect with `Last-Event-ID` and lose nothing). So a reader holds at most one queue and one
page of events, and a slow one costs no one else anything.

PCU: a transition into or out of the active states changes its app's count. After the last such
transition of an app in a page comes a `pcu` event with the count as read then, positioned just
after that transition (`Position.kind` 1).

A write transaction left open anywhere on the server holds xmin, and so the stream, back until it
ends: `stream_held_back` is logged when committed rows wait longer than `HELD_BACK_WARN_S`. Why
the log is polled rather than announced with NOTIFY: docs/design.md, "Live stream".
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import threading
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final, Literal

import structlog
from sqlalchemy import BigInteger, Text, cast, func, select, tuple_
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from service import concurrency, db, lifecycle, queries
from service.errors import StreamFull, Unavailable
from service.tables import agent_transition

log = structlog.get_logger(__name__)

POLL_S: Final = 0.1  # how often the hub reads the log while anyone is subscribed
PAGE: Final = 500  # rows per read
QUEUE_EVENTS: Final = 1000  # live events waiting for one subscriber before it reads the log itself
HELD_BACK_WARN_S: Final = 10.0
RETRY_S: Final = 1.0  # after a failed read
_ACTIVE: Final = frozenset(state.value for state in lifecycle.ACTIVE)
_ID: Final = re.compile(r"[0-9a-f]{32}[01]")
# The oldest transaction still running when the statement's snapshot was taken.
_XMIN: Final = cast(cast(func.pg_snapshot_xmin(func.pg_current_snapshot()), Text), BigInteger)

EventName = Literal["agent", "pcu"]


@dataclass(frozen=True, slots=True, order=True)
class Position:
    """Where an event stands in the stream: its transition's (xid, id), then 0 for the
    transition's own event or 1 for the `pcu` event after it. Ordered as the stream is."""

    xid: int
    row: int
    kind: int = 0

    def encode(self) -> str:
        """The event id: fixed-width hex, so ids also compare as strings in stream order."""
        return f"{self.xid:016x}{self.row:016x}{self.kind}"


# Before every row (rows written before the xid column existed have xid 0 and id >= 1).
ORIGIN: Final = Position(0, 0, 1)


def decode(text: str) -> Position:
    """The position an event id names; `ValueError` if it is not one this service gave out."""
    if not _ID.fullmatch(text):
        raise ValueError("not an event id of this stream")
    return Position(int(text[:16], 16), int(text[16:32], 16), int(text[32]))


@dataclass(frozen=True, slots=True, kw_only=True)
class Event:
    position: Position
    name: EventName
    app_id: str
    data: Mapping[str, Any]


@dataclass(frozen=True, slots=True, kw_only=True)
class Transition:
    """One row of the log, as the stream needs it."""

    xid: int
    row: int
    app_id: str
    agent_id: str
    from_state: str
    to_state: str
    cause: str
    event_at: datetime

    @property
    def moves_slot(self) -> bool:
        """Whether the agent took or gave back a PCU slot."""
        return (self.from_state in _ACTIVE) != (self.to_state in _ACTIVE)


@dataclass(frozen=True, slots=True, kw_only=True)
class Page:
    transitions: Sequence[Transition]  # ready to send, in stream order
    more: bool  # a full page: read again at once
    waiting_since: datetime | None  # when the first committed row held back was received


async def read(
    conn: AsyncConnection, *, after: Position, apps: Collection[str] | None, limit: int = PAGE
) -> Page:
    """The next transitions from `after` on (its own row included) that may be sent now."""
    t = agent_transition
    stmt = (
        select(
            t.c.xid,
            t.c.id,
            t.c.app_id,
            t.c.agent_id,
            t.c.from_state,
            t.c.to_state,
            t.c.cause,
            t.c.event_at,
            t.c.received_at,
            (t.c.xid < _XMIN).label("ready"),
        )
        .where(tuple_(t.c.xid, t.c.id) >= (after.xid, after.row))
        .order_by(t.c.xid, t.c.id)
        .limit(limit)
    )
    if apps is not None:
        stmt = stmt.where(t.c.app_id.in_(sorted(apps)))
    rows = (await conn.execute(stmt)).all()
    ready = [row for row in rows if row.ready]
    held = rows[len(ready)] if len(ready) < len(rows) else None
    return Page(
        transitions=[_transition(row) for row in ready],
        more=len(rows) == limit and held is None,
        waiting_since=held.received_at if held is not None else None,
    )


def _transition(row: Any) -> Transition:
    return Transition(
        xid=row.xid,
        row=row.id,
        app_id=row.app_id,
        agent_id=row.agent_id,
        from_state=row.from_state,
        to_state=row.to_state,
        cause=row.cause,
        event_at=row.event_at,
    )


async def head(conn: AsyncConnection) -> Position:
    """The position of the last event that may be sent now: a subscriber starting here gets
    only what happens from now on."""
    t = agent_transition
    row = (
        await conn.execute(
            select(t.c.xid, t.c.id)
            .where(t.c.xid < _XMIN)
            .order_by(t.c.xid.desc(), t.c.id.desc())
            .limit(1)
        )
    ).first()
    return ORIGIN if row is None else Position(row.xid, row.id, 1)


def build(
    transitions: Sequence[Transition],
    *,
    counts: Mapping[str, int],
    caps: Callable[[str], int],
    now: datetime,
) -> list[Event]:
    """The events of a page: each transition's `agent` event, and after the last transition of
    an app that moved a slot, a `pcu` event with that app's count from `counts`."""
    last_move = {t.app_id: i for i, t in enumerate(transitions) if t.moves_slot}
    out: list[Event] = []
    for i, t in enumerate(transitions):
        data = {
            "app_id": t.app_id,
            "agent_id": t.agent_id,
            "state": t.to_state,
            "at": queries.rfc3339(t.event_at),
            "cause": t.cause,
        }
        out.append(Event(position=Position(t.xid, t.row), name="agent", app_id=t.app_id, data=data))
        if last_move.get(t.app_id) == i:
            pcu = {
                "app_id": t.app_id,
                "current": counts[t.app_id],
                "cap": caps(t.app_id),
                "at": queries.rfc3339(now),
            }
            out.append(
                Event(position=Position(t.xid, t.row, 1), name="pcu", app_id=t.app_id, data=pcu)
            )
    return out


async def fetch(
    conn: AsyncConnection,
    *,
    after: Position,
    apps: Collection[str] | None,
    caps: Callable[[str], int],
) -> tuple[Page, list[Event]]:
    """A page of the log and its events strictly after `after`."""
    page = await read(conn, after=after, apps=apps)
    moved = sorted({t.app_id for t in page.transitions if t.moves_slot})
    counts = {app: await concurrency.current(conn, app_id=app) for app in moved}
    found = build(page.transitions, counts=counts, caps=caps, now=datetime.now(UTC))
    return page, [event for event in found if event.position > after]


class Hub:
    """The process's reader of the log and its subscribers (see the module docstring)."""

    def __init__(
        self,
        engine: AsyncEngine,
        *,
        caps: Callable[[str], int],
        max_subscribers: int,
        draining: threading.Event,
        poll_s: float = POLL_S,
    ) -> None:
        self.engine = engine
        self.caps = caps
        self.max_subscribers = max_subscribers
        self.draining = draining
        self.poll_s = poll_s
        self._open: set[Subscription] = set()
        self._live: set[Subscription] = set()
        self._cursor = ORIGIN
        self._task: asyncio.Task[None] | None = None
        self._warned_at = 0.0

    @property
    def subscribers(self) -> int:
        return len(self._open)

    async def aclose(self) -> None:
        """End every subscription and stop the reader (the application is stopping)."""
        for subscription in list(self._open):
            subscription.end("shutdown")
        if self._task is not None and not self._task.done():
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def open(self, *, apps: frozenset[str], after: Position) -> Subscription:
        """A subscription from `after` on; `StreamFull` past the cap, `Unavailable` when the
        process is shutting down. Close it with `close`."""
        if self.draining.is_set():
            raise Unavailable("shutting down")
        if len(self._open) >= self.max_subscribers:
            raise StreamFull(f"at most {self.max_subscribers} streams per process")
        subscription = Subscription(self, apps=apps, after=after)
        self._open.add(subscription)
        return subscription

    def close(self, subscription: Subscription) -> None:
        self._open.discard(subscription)
        self._live.discard(subscription)

    def detach(self, subscription: Subscription) -> None:
        """Stop feeding `subscription` live events (it fell behind; `attach` again later)."""
        self._live.discard(subscription)

    def attach(self, subscription: Subscription) -> None:
        """Feed `subscription` every event the reader sees from now on; start the reader if it
        is not running, from the subscription's position."""
        self._live.add(subscription)
        if self._task is None or self._task.done():
            self._cursor = subscription.last
            self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        while self._live:
            if self.draining.is_set():
                for subscription in list(self._open):
                    subscription.end("shutdown")
                return
            more = await self._step()
            if not more:
                await asyncio.sleep(self.poll_s)

    async def _step(self) -> bool:
        """Read one page and hand its events out; answers whether more are waiting."""
        try:
            async with self.engine.connect() as conn:
                page, found = await fetch(conn, after=self._cursor, apps=None, caps=self.caps)
        except db.ERRORS as error:
            log.warning("stream_read_failed", error=type(error).__name__)
            await asyncio.sleep(RETRY_S)
            return False
        for event in found:
            for subscription in list(self._live):
                subscription.offer(event)
        if found:
            self._cursor = found[-1].position
        self._warn_if_held_back(page.waiting_since)
        return page.more

    def _warn_if_held_back(self, since: datetime | None) -> None:
        if since is None:
            return
        waiting = (datetime.now(UTC) - since).total_seconds()
        if waiting > HELD_BACK_WARN_S and time.monotonic() - self._warned_at > 60:
            self._warned_at = time.monotonic()
            log.warning("stream_held_back", waiting_s=round(waiting, 1))


class Subscription:
    """One reader of the stream: its position, the apps it sees, its bounded queue."""

    def __init__(self, hub: Hub, *, apps: frozenset[str], after: Position) -> None:
        self.hub = hub
        self.apps = apps
        self.last = after
        self.ended = asyncio.Event()
        self.reason: str | None = None
        # Live events; None tells the reader it fell behind and must read the log itself.
        self._queue: asyncio.Queue[Event | None] = asyncio.Queue(maxsize=QUEUE_EVENTS + 1)

    def offer(self, event: Event) -> None:
        """Queue a live event for this reader, never waiting. A reader `QUEUE_EVENTS` behind
        leaves the live feed, its queue emptied, and catches up from the log at its own pace."""
        if event.app_id not in self.apps or self.ended.is_set():
            return
        if self._queue.qsize() < QUEUE_EVENTS:
            self._queue.put_nowait(event)
            return
        self.hub.detach(self)
        while not self._queue.empty():
            self._queue.get_nowait()
        self._queue.put_nowait(None)

    def end(self, reason: str) -> None:
        if not self.ended.is_set():
            self.reason = reason
            self.ended.set()
            self.hub.close(self)

    async def items(self, *, heartbeat_s: float) -> AsyncGenerator[Event | None]:
        """Events in stream order from the subscription's position on, and None whenever
        `heartbeat_s` pass without one (time for a comment line)."""
        while not self.ended.is_set():
            async for event in self._catch_up():
                yield event
            self.hub.attach(self)
            async for event in self._catch_up():
                yield event
            async for item in self._live(heartbeat_s):
                yield item

    async def _live(self, heartbeat_s: float) -> AsyncIterator[Event | None]:
        """Queued events (and None for a heartbeat) until the reader falls behind or ends."""
        while not self.ended.is_set():
            try:
                event = await asyncio.wait_for(self._queue.get(), timeout=heartbeat_s)
            except TimeoutError:
                yield None
                continue
            if event is None:
                return  # fell behind: read the log again
            if event.position > self.last:
                self.last = event.position
                yield event

    async def _catch_up(self) -> AsyncIterator[Event]:
        """What the log holds after `last`, a page at a time (no connection held meanwhile)."""
        while not self.ended.is_set():
            async with self.hub.engine.connect() as conn:
                page, found = await fetch(conn, after=self.last, apps=self.apps, caps=self.hub.caps)
            for event in found:
                self.last = event.position
                yield event
            if not page.more:
                return
