"""Group commit: the deliveries a process receives at the same time share one transaction.

`Batcher.submit(delivery)` queues a verified delivery and waits for the commit of the group that
holds it; the webhook answers 200 only then. A writer task (`writers`, one by default, each with
its own PostgreSQL connection) takes whatever is queued, up to `max_group`, and applies it as one
transaction (`ingest.apply_deliveries`: three round trips whatever the group's size, the commit's
WAL flush shared by all). While one group commits, the next one gathers, so under load groups
grow by themselves and a lone delivery is never kept waiting for company. One writer per process
makes the largest groups: against two, the same rate at a quarter less CPU per notification
(and with two processes, each with one, both rate and CPU do better than with two each).

Failures stay with their notification:

- a decision that fails (a bug) costs only that notification, stored `unapplied` in the group's
  own transaction (`ingest.plan_delivery`);
- a statement that fails (a constraint) aborts the group: each delivery is then retried once in
  a transaction of its own, and one that fails again is stored `unapplied` (`keep_unapplied`);
- a database that cannot be reached fails the group with `Unavailable` (503: Agora retries), and
  the writer reconnects for the next group.

A group whose every submitter has given up (`DATABASE_TIMEOUT_S`, see `db.within`) is rolled back
instead of committed: what was answered 503 is not stored behind its sender's back.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

import psycopg
import structlog

from service import db, ingest, metrics, repositories
from service.errors import Unavailable

log = structlog.get_logger(__name__)

WRITERS: Final = 1
MAX_GROUP: Final = 256


@dataclass(slots=True)
class _Waiting:
    delivery: ingest.Delivery
    future: asyncio.Future[ingest.Outcome] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )


class Batcher:
    """Group commit over `writers` connections of its own (see the module)."""

    def __init__(
        self,
        url: str,
        *,
        writers: int = WRITERS,
        max_group: int = MAX_GROUP,
        on_commit: Callable[[Sequence[ingest.Delivery]], None] | None = None,
    ) -> None:
        self._url, self._writers, self._max_group = db.libpq_url(url), writers, max_group
        self._on_commit = on_commit
        self._queue: asyncio.Queue[_Waiting] = asyncio.Queue()
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        self._tasks = [asyncio.create_task(self._write()) for _ in range(self._writers)]

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        while not self._queue.empty():
            waiting = self._queue.get_nowait()
            if not waiting.future.done():
                waiting.future.set_exception(Unavailable("shutting down"))

    async def submit(self, delivery: ingest.Delivery) -> ingest.Outcome:
        """Store and apply `delivery`; answers once its group has committed."""
        waiting = _Waiting(delivery)
        self._queue.put_nowait(waiting)
        return await waiting.future

    async def _write(self) -> None:
        conn: psycopg.AsyncConnection[Any] | None = None
        try:
            while True:
                group = await self._gather()
                conn = await self._commit(conn, group)
        finally:
            if conn is not None:
                await conn.close()

    async def _gather(self) -> list[_Waiting]:
        group = [await self._queue.get()]
        while len(group) < self._max_group and not self._queue.empty():
            group.append(self._queue.get_nowait())
        return [w for w in group if not w.future.done()]

    async def _commit(
        self, conn: psycopg.AsyncConnection[Any] | None, group: list[_Waiting]
    ) -> psycopg.AsyncConnection[Any] | None:
        """Apply `group` and settle its futures; answers the connection to use next (None after
        the database failed). A connection found broken (the server restarted since its last
        group) is replaced once before the group is failed."""
        if not group:
            return conn
        outcomes: list[ingest.Outcome | None] | None = None
        for attempt in (1, 2):
            fresh = conn is None
            try:
                conn = conn or await db.connect(
                    self._url, options=db.KEYED_PLANS, name="convoai-ledger-writer"
                )
                outcomes = await _together(conn, group)
                break
            except Exception as error:
                if not _unavailable(error, conn):
                    assert conn is not None
                    outcomes = await self._one_by_one(conn, group, error)
                    break
                await _discard(conn)
                conn = None
                if fresh or attempt == 2:
                    _fail(group, db.unavailable_from(error))
                    return None
        if outcomes is None:  # the database went away while redoing the group one by one
            return None
        for waiting, outcome in zip(group, outcomes, strict=True):
            if outcome is not None and not waiting.future.done():
                waiting.future.set_result(outcome)
        if self._on_commit is not None:
            self._on_commit([w.delivery for w in group])
        return conn

    async def _one_by_one(
        self, conn: psycopg.AsyncConnection[Any], group: list[_Waiting], error: Exception
    ) -> list[ingest.Outcome | None] | None:
        """The group failed for one of its notifications: each in a transaction of its own."""
        log.warning("group_failed", size=len(group), error=type(error).__name__)
        try:
            return [await _alone(conn, waiting) for waiting in group]
        except Exception as failed:
            _fail(group, db.unavailable_from(failed))
            await _discard(conn)
            return None


async def _together(
    conn: psycopg.AsyncConnection[Any], group: list[_Waiting]
) -> list[ingest.Outcome | None]:
    """The group in one transaction; rolled back when nobody waits for it any more."""
    deliveries = [w.delivery for w in group]
    try:
        outcomes = await ingest.apply_deliveries(
            conn, deliveries, wanted=lambda: not all(w.future.done() for w in group)
        )
    except BaseException:
        if not conn.closed:
            with contextlib.suppress(Exception):
                await conn.rollback()
        raise
    if outcomes is None:
        await conn.rollback()
        return [None] * len(group)
    metrics.group_committed(len(group))
    ingest.report(outcomes, deliveries)
    return list(outcomes)


async def _alone(conn: psycopg.AsyncConnection[Any], waiting: _Waiting) -> ingest.Outcome | None:
    """One delivery of a failed group, in its own transaction; kept `unapplied` if it fails."""
    try:
        [outcome] = await _together(conn, [waiting])
        return outcome
    except Exception as error:
        if _unavailable(error, conn):
            raise
        log.error(
            "notification_unapplied",
            app_id=waiting.delivery.app_id,
            agent_id=waiting.delivery.note.agent_id,
            notice_id=waiting.delivery.note.notice_id,
            error=type(error).__name__,
        )
        return await _keep(conn, waiting.delivery, f"applying failed: {type(error).__name__}")


async def _keep(
    conn: psycopg.AsyncConnection[Any], delivery: ingest.Delivery, problem: str
) -> ingest.Outcome:
    """The second transaction: keep the notification, and why; its exact bytes under a
    placeholder if even its JSON cannot be stored."""
    try:
        async with conn.transaction():
            stored = await repositories.keep_unapplied(conn, delivery=delivery, problem=problem)
    except db.RAW_ERRORS as error:
        if db.is_unavailable(error):
            raise
        note = delivery.note
        exact = note.raw if note.raw is not None else note.json.encode("utf-8", "surrogatepass")
        async with conn.transaction():
            stored = await repositories.keep_unapplied(
                conn, delivery=delivery, problem=problem, raw=exact
            )
    return ingest.Outcome(
        status="unapplied" if stored else "duplicate", agent_id=delivery.note.agent_id
    )


def _unavailable(error: Exception, conn: psycopg.AsyncConnection[Any] | None) -> bool:
    """Whether `error` means the database is out of reach (rather than this group's fault)."""
    if isinstance(error, db.RAW_ERRORS) and db.is_unavailable(error):
        return True
    return conn is None or conn.closed


def _fail(group: list[_Waiting], error: Exception) -> None:
    for waiting in group:
        if not waiting.future.done():
            waiting.future.set_exception(error)


async def _discard(conn: psycopg.AsyncConnection[Any] | None) -> None:
    if conn is not None:
        with contextlib.suppress(Exception):
            await conn.close()
