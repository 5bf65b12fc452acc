"""The folder of one process: recorded PCU changes and latency marks into their rollups, off the
request path (`rollup.fold`, `latency.fold`).

Every `serve` process and every `worker` runs one (`Folder.run`). It folds an app
(`rollup.fold`) soon after this process committed changes for it (`poke`, after a short pause
that lets a burst pile up) and, every `FOLD_INTERVAL_S`, every app that has changes left (another
replica's, or a fold that lost a race). Folders of several processes compete through the app's
advisory lock: one folds, the others skip, so each threshold crossing is announced once, by the
folder that folded it, within about `FOLD_INTERVAL_S` of the commit that made it. Reads never
wait for a folder: they add what it has not folded yet (`concurrency`).

The same round folds the insight marks the write path left: usage and error-summary hours
(`usage.fold`, `error_hours.fold`, every `USAGE_INTERVAL_S` at most) and turn latency hours
(`latency.fold`, every `LATENCY_FOLD_INTERVAL_S` at most). Nothing is announced from them, and reads compute marked
hours from the agents and turns meanwhile, so folding more often would only recompute the
current hour again and again.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, Final

import psycopg
import structlog

from service import db, error_hours, latency, metrics, rollup, usage
from service.config import Settings

log = structlog.get_logger(__name__)

FOLD_INTERVAL_S: Final = 0.5
# After a poke, how long more changes may pile up before folding: a fold costs a few round trips
# and a rewrite per minute and hour it touches, so under load fewer, larger folds are cheaper.
SETTLE_S: Final = 0.2
USAGE_INTERVAL_S: Final = 5.0
_PENDING: Final = "SELECT DISTINCT app_id FROM pcu_change"
# Latency marks are folded at most this often: a fold rewrites the day around each marked hour
# (a day of turns read again), and reads compute marked buckets from the turns meanwhile.
LATENCY_FOLD_INTERVAL_S: Final = 2.0
_USAGE_PENDING: Final = "SELECT DISTINCT app_id FROM insight_change WHERE kind = 'usage'"


class Folder:
    """Folds recorded PCU changes for every app, on its own connection (see the module)."""

    def __init__(self, settings: Settings, *, interval_s: float = FOLD_INTERVAL_S) -> None:
        self._settings, self._interval_s = settings, interval_s
        self._poked: set[str] = set()
        self._wake = asyncio.Event()
        self._conn: psycopg.AsyncConnection[Any] | None = None
        self._latency_due = 0.0  # monotonic time of the next latency fold
        self._usage_due = 0.0  # monotonic time of the next usage fold

    def poke(self, app_ids: Iterable[str]) -> None:
        """Changes for these apps were just committed here: fold them soon."""
        self._poked.update(app_ids)
        self._wake.set()

    async def run(self, stop: asyncio.Event) -> None:
        """Fold until `stop` is set, and once more then, so that a process shutting down leaves
        nothing of its own unfolded; a failing database is retried, never fatal."""
        try:
            while not stop.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), timeout=self._interval_s)
                if self._wake.is_set() and not stop.is_set():
                    await asyncio.sleep(SETTLE_S)
                await self._round()
            await self._round()
        finally:
            await self._close()

    async def fold_all(self) -> list[rollup.Folded]:
        """Fold every app with changes now, then close the connection (tests, maintenance)."""
        try:
            return await self._round(insight_now=True)
        finally:
            await self._close()

    async def _round(self, *, insight_now: bool = False) -> list[rollup.Folded]:
        self._wake.clear()
        self._poked.clear()
        try:
            conn = await self._connection()
            pending = [row[0] for row in await (await conn.execute(_PENDING)).fetchall()]
            await conn.commit()
            done = [await self._fold(conn, app_id) for app_id in pending]
            if insight_now or time.monotonic() >= self._latency_due:
                self._latency_due = time.monotonic() + LATENCY_FOLD_INTERVAL_S
                await self._fold_marked(conn, latency.PENDING_SQL, latency.fold)
            if insight_now or time.monotonic() >= self._usage_due:
                self._usage_due = time.monotonic() + USAGE_INTERVAL_S
                await self._fold_marked(conn, _USAGE_PENDING, usage.fold)
                await self._fold_marked(conn, error_hours.PENDING_SQL, error_hours.fold)
        except db.RAW_ERRORS as error:
            log.warning("pcu_fold_failed", error=type(error).__name__)
            await self._close()
            return []
        return [folded for folded in done if folded is not None]

    async def _fold_marked(
        self,
        conn: psycopg.AsyncConnection[Any],
        pending: str,
        fold: Callable[[psycopg.AsyncConnection[Any], str], Awaitable[int | None]],
    ) -> None:
        """`fold` every app that has marks by the query `pending` (an insight rollup's)."""
        marked = [row[0] for row in await (await conn.execute(pending)).fetchall()]
        await conn.commit()
        for app_id in marked:
            await fold(conn, app_id)

    async def _fold(self, conn: psycopg.AsyncConnection[Any], app_id: str) -> rollup.Folded | None:
        folded = await rollup.fold(conn, app_id=app_id, limits=self._settings.pcu_limits(app_id))
        if folded is not None:
            report(folded)
        return folded

    async def _connection(self) -> psycopg.AsyncConnection[Any]:
        if self._conn is None or self._conn.closed:
            self._conn = await db.connect(
                self._settings.sqlalchemy_url, name="convoai-ledger-folder"
            )
        return self._conn

    async def _close(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(Exception):
                await self._conn.close()
            self._conn = None


def report(folded: rollup.Folded) -> None:
    """Announce a fold's threshold crossings (once each, after its commit)."""
    metrics.pcu_folded(folded.taken)
    for crossing in folded.crossings:
        metrics.threshold_crossed(crossing.app_id, crossing.threshold.value)
        log.warning(
            "pcu_threshold_crossed",
            app_id=crossing.app_id,
            threshold=crossing.threshold.value,
            current=crossing.current,
            cap=crossing.cap,
        )
