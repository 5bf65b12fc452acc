"""Use case: reconcile our agents with Agora's REST API, so that no lost webhook stays lost.

Agora's NCS gives up after three retries; a 101 or 102 that never arrives would leave an agent
unknown, or live forever, and PCU wrong. A pass (`run_pass`) for one app:

1. Takes the app's lease: a PostgreSQL session advisory lock (`pg_try_advisory_lock`) on a
   connection of its own, held for the pass. Another replica holding it means the pass is skipped;
   a process that dies loses it with its connection.
2. Notes the agents we hold as active, and as IDLE (first seen within the session horizon), then
   lists Agora's live agents (states STARTING, RUNNING, STOPPING, one listing per state,
   `from_time` covering the 72-hour session limit plus the watchdog margin, every page). If the
   listing fails, nothing is changed.
3. Adopts: an agent listed live that we do not know, or hold as IDLE, is applied as RUNNING at
   Agora's `start_ts` (STARTING if listed so; a listed STOPPING is recorded after the join). A
   listed agent we hold in another live state gets that state. Terminal states are never touched.
4. Marks every listed active agent `seen_live_at` (the pass's start time).
5. Checks: an agent we held as active (or IDLE) that Agora does not list, and any agent active
   for longer than 72 hours plus `RECONCILE_WATCHDOG_MARGIN_S` (the watchdog), is queried. A
   reported STOPPED or FAILED is applied with Agora's `stop_ts` and `message` ("closed"; the history
   job is enqueued as for a 102; for an IDLE agent, whose 101 and 102 were both lost but a 103 or
   110 made it known, the join at `start_ts` is recorded first). A 404 means Agora no longer knows
   it: it is closed as STOPPED at the last time we know it was alive
   (`repositories.last_alive_at`) with a message saying so ("gone").

Every change goes through `ingest.observe_agents` (the lifecycle, the append-only transitions with
`source = 'reconcile'` and `cause = 'reconcile_<kind>'`, the history job), one short transaction
per agent, so a pass that dies half-way leaves only whole repairs behind; the next pass starts
from scratch. Starts and stops younger than `RECONCILE_GRACE_S` are left to their webhook, which
may still be on its way, so that a repair means a webhook was really lost.

An Agora call that still fails after the client's retries (429, 5xx, network) ends the pass: what
is not yet done stays as it was, and the next pass continues. A query answering another 4xx or an
unreadable body skips that agent. An agent id that is not plain (`agora.is_plain_id`) never
reaches a URL: one Agora lists is not adopted, one we hold is not queried; each is counted
(`not_plain`) and logged. `report()` logs each pass's summary and is where its metrics are
taken (repairs by kind, duration, passes cut short by Agora errors).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Final, Literal, TypeVar

import structlog
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from service import (
    agora,
    db,
    history,
    ingest,
    lifecycle,
    metrics,
    record,
    replies,
    repositories,
)
from service.lifecycle import Kind, State

log = structlog.get_logger(__name__)

T = TypeVar("T")

# Agora ends every session after 72 hours (v2.8, "Task lifetime limit exceeded").
MAX_SESSION: Final = timedelta(hours=72)
# The list's `state` filter: the live states Agora documents (RECOVERING, 5, is not documented
# for the filter; a recovering agent is queried instead).
LISTED_STATES: Final = (State.STARTING, State.RUNNING, State.STOPPING)
# Agents handled at once (queries in flight, repair transactions).
CONCURRENCY: Final = 8
GONE_MESSAGE: Final = (
    "Agora no longer knows this agent (query answered 404); closed at the last time it was known"
    " alive"
)

OBSERVED: Final[Mapping[State, Kind]] = {
    State.IDLE: Kind.OBSERVED_IDLE,
    State.STARTING: Kind.OBSERVED_STARTING,
    State.RUNNING: Kind.OBSERVED_RUNNING,
    State.STOPPING: Kind.OBSERVED_STOPPING,
    State.RECOVERING: Kind.OBSERVED_RECOVERING,
    State.STOPPED: Kind.OBSERVED_STOPPED,
    State.FAILED: Kind.OBSERVED_FAILED,
}

Repair = Literal["adopted", "closed", "gone"]
REPAIRS: Final[tuple[Repair, ...]] = ("adopted", "closed", "gone")
Outcome = Literal["completed", "failed", "skipped"]
NO_CREDENTIALS: Final = "no REST credentials"


@dataclass(slots=True, kw_only=True)
class Summary:
    """What one pass over one app did; `report()` logs it (and takes its metrics)."""

    app_id: str
    outcome: Outcome = "completed"
    reason: str | None = None  # why the pass failed or was skipped
    listed: int = 0  # live agents Agora listed
    queried: int = 0  # agents queried and answered
    repairs: dict[Repair, int] = field(default_factory=lambda: dict.fromkeys(REPAIRS, 0))
    updated: int = 0  # live-state changes (not repairs: no webhook reports them)
    deferred: int = 0  # left to a webhook still within RECONCILE_GRACE_S
    overdue: int = 0  # still live, per Agora, past 72 hours plus the margin
    agora_errors: int = 0  # Agora calls that failed after their retries
    not_plain: int = 0  # agent ids neither adopted nor queried: not plain ids (never sent)
    duration_s: float = 0.0

    @property
    def cut_short_by_agora(self) -> bool:
        return self.outcome == "failed" and self.agora_errors > 0

    def describe(self) -> str:
        """One human-readable line (the `reconcile --once` output)."""
        head = f"{self.app_id}: {self.outcome}"
        if self.reason:
            head += f" ({self.reason})"
        if self.outcome == "skipped":
            return head
        repairs = ", ".join(f"{self.repairs[kind]} {kind}" for kind in REPAIRS)
        return (
            f"{head} in {self.duration_s:.2f} s: {self.listed} listed live, {self.queried} queried;"
            f" repairs: {repairs}; {self.updated} updated, {self.deferred} deferred,"
            f" {self.overdue} overdue; {self.agora_errors} Agora errors"
            + (f"; {self.not_plain} ids not plain, skipped" if self.not_plain else "")
        )


def report(summary: Summary) -> None:
    """Log and count a finished pass (`ledger_reconcile_*`)."""
    if summary.outcome != "skipped":
        metrics.reconcile_pass(summary.app_id, summary.duration_s)
        for kind in REPAIRS:
            metrics.reconcile_repair(summary.app_id, kind, summary.repairs[kind])
    if summary.cut_short_by_agora:
        metrics.reconcile_error(summary.app_id)
    fields = {
        "app_id": summary.app_id,
        "duration_s": round(summary.duration_s, 3),
        "listed": summary.listed,
        "queried": summary.queried,
        **{f"repaired_{kind}": summary.repairs[kind] for kind in REPAIRS},
        "updated": summary.updated,
        "deferred": summary.deferred,
        "overdue": summary.overdue,
        "agora_errors": summary.agora_errors,
        "not_plain": summary.not_plain,
    }
    if summary.outcome == "completed":
        log.info("reconcile_pass_finished", **fields)
    elif summary.outcome == "failed":
        log.warning("reconcile_pass_failed", reason=summary.reason, **fields)
    else:
        # No credentials: the worker warned once at start (`worker.run`); each pass says so quietly.
        emit = log.debug if summary.reason == NO_CREDENTIALS else log.info
        emit("reconcile_pass_skipped", app_id=summary.app_id, reason=summary.reason)


async def run(deps: history.Deps, *, app_id: str | None = None) -> list[Summary]:
    """One pass for `app_id`, or for every configured app in turn."""
    app_ids = [app_id] if app_id is not None else sorted(deps.settings.apps)
    return [await run_pass(deps, app_id=one) for one in app_ids]


async def run_pass(deps: history.Deps, *, app_id: str) -> Summary:
    """One pass over `app_id` (see the module docstring); never raises for Agora or the DB."""
    structlog.contextvars.clear_contextvars()
    structlog.contextvars.bind_contextvars(app_id=app_id)
    summary = Summary(app_id=app_id)
    started = time.perf_counter()
    try:
        client = deps.agora.for_app(app_id)
        async with lease(deps.engine, app_id=app_id) as held:
            if held:
                await _Pass(deps, client, summary).run()
            else:
                summary.outcome, summary.reason = "skipped", "another process holds the lease"
    except agora.AgoraNotConfigured:
        summary.outcome, summary.reason = "skipped", NO_CREDENTIALS
    except db.ERRORS as error:
        summary.outcome, summary.reason = "failed", f"database error ({type(error).__name__})"
    except BaseException as error:  # cancelled (shutdown), or a bug: reported, then raised
        summary.outcome, summary.reason = "failed", f"interrupted ({type(error).__name__})"
        raise
    finally:
        summary.duration_s = time.perf_counter() - started
        report(summary)
    return summary


def lock_key(app_id: str) -> int:
    """The advisory lock key (bigint) of `app_id`'s reconciliation lease."""
    digest = hashlib.blake2b(f"convoai-ledger reconcile {app_id}".encode(), digest_size=8)
    return int.from_bytes(digest.digest(), "big", signed=True)


@contextlib.asynccontextmanager
async def lease(engine: AsyncEngine, *, app_id: str) -> AsyncIterator[bool]:
    """Yield whether this process may reconcile `app_id` now (no waiting).

    A session-level advisory lock on a connection of its own, in autocommit so no transaction
    stays open for the pass. It is unlocked on exit; if that fails the connection is discarded,
    which releases it too (as does a process that dies). Session locks need a direct connection
    or a session-pooling proxy, not transaction pooling.
    """
    key = lock_key(app_id)
    async with engine.connect() as pooled:
        conn = await pooled.execution_options(isolation_level="AUTOCOMMIT")
        held = bool((await conn.execute(select(func.pg_try_advisory_lock(key)))).scalar())
        try:
            yield held
        finally:
            if held:
                try:
                    await conn.execute(select(func.pg_advisory_unlock(key)))
                except BaseException:
                    await pooled.invalidate()
                    raise


class _Pass:
    def __init__(self, deps: history.Deps, client: agora.AgoraClient, summary: Summary) -> None:
        settings = deps.settings
        self.engine, self.client, self.summary = deps.engine, client, summary
        self.started = datetime.now(UTC)
        self.grace = timedelta(seconds=settings.reconcile_grace_s)
        self.horizon = MAX_SESSION + timedelta(seconds=settings.reconcile_watchdog_margin_s)
        self.failed = False

    async def run(self) -> None:
        async with self.engine.connect() as conn:
            held = await repositories.unsettled_agents(
                conn, app_id=self.summary.app_id, idle_since=self.started - self.horizon
            )
        try:
            listed = await self.client.list_agents(
                states=LISTED_STATES, since=self.started - self.horizon
            )
        except agora.AgoraError as error:
            self._agora_failed(error, agent_id=None)
            return
        self.summary.listed = len(listed)
        listed = [item for item in listed if self._plain(item.agent_id, listed=True)]
        ids = [item.agent_id for item in listed]
        async with self.engine.connect() as conn:
            known = {
                a.agent_id: a
                for a in await repositories.tracked_agents(
                    conn, app_id=self.summary.app_id, agent_ids=ids
                )
            }
        await _each(listed, lambda item: self._settle(item, known.get(item.agent_id)))
        async with self.engine.begin() as conn:
            await repositories.mark_seen_live(
                conn, app_id=self.summary.app_id, agent_ids=ids, at=self.started
            )
        listed_ids = set(ids)
        suspects = [a for a in held if a.agent_id not in listed_ids or self._overdue(a)]
        await _each(suspects, self._check, stop=lambda: self.failed)

    async def _settle(self, item: replies.AgentSummary, ours: repositories.Tracked | None) -> None:
        """A listed live agent: adopt it if we do not hold it as live; follow its live state."""
        if ours is not None and lifecycle.is_terminal(ours.state):
            return  # nothing Agora says overrides a terminal state
        if ours is None or ours.state is State.IDLE:
            await self._adopt(item.agent_id, state=item.state, start=item.started_at)
        elif item.state is not None and item.state is not ours.state:
            steps = await self._apply(
                item.agent_id, [record.Observation(kind=OBSERVED[item.state], at=self.started)]
            )
            self.summary.updated += bool(steps)

    async def _adopt(self, agent_id: str, *, state: State | None, start: datetime | None) -> None:
        """A live agent we did not hold as live: it joined at Agora's `start_ts`."""
        if start is not None and start > self.started - self.grace:
            self.summary.deferred += 1  # its 101 may still be on its way
            return
        at = start or self.started
        kind = Kind.OBSERVED_STARTING if state is State.STARTING else Kind.OBSERVED_RUNNING
        observations = [record.Observation(kind=kind, at=at, started_at=start)]
        if state is not None and state not in (State.STARTING, State.RUNNING):
            later = max(at, self.started)  # STOPPING or RECOVERING: seen now, after the join
            observations.append(record.Observation(kind=OBSERVED[state], at=later))
        if await self._apply(agent_id, observations):
            self._repaired("adopted", agent_id, to_state=state or State.RUNNING)

    async def _check(self, ours: repositories.Tracked) -> None:
        """An agent we hold as active (or IDLE) that Agora did not list, or that the watchdog
        picked: ask Agora about it."""
        if not self._plain(ours.agent_id, listed=False):
            return
        try:
            status = await self.client.query(ours.agent_id)
        except agora.AgoraRejected as error:
            if error.status == 404:
                await self._gone(ours)
            else:
                self._agora_error(error, agent_id=ours.agent_id)
            return
        except agora.AgoraMalformed as error:
            self._agora_error(error, agent_id=ours.agent_id)
            return
        except agora.AgoraError as error:
            self._agora_failed(error, agent_id=ours.agent_id)
            return
        self.summary.queried += 1
        if status.state is not None and lifecycle.is_terminal(status.state):
            await self._close(ours, status)
        elif status.state is not None and lifecycle.is_active(status.state):
            if ours.state is State.IDLE:
                await self._adopt(ours.agent_id, state=status.state, start=status.started_at)
            else:
                await self._still_live(ours, status.state)
        else:
            log.info("reconcile_status_ignored", agent_id=ours.agent_id, status=status.status)

    async def _close(self, ours: repositories.Tracked, status: replies.AgentStatus) -> None:
        assert status.state is not None
        now = datetime.now(UTC)
        if status.stopped_at is not None and status.stopped_at > now - self.grace:
            self.summary.deferred += 1  # its 102 may still be on its way
            return
        # Without Agora's stop_ts, the query time: the agent had stopped by then.
        stop = status.stopped_at or now
        observation = record.Observation(
            kind=OBSERVED[status.state],
            at=stop,
            started_at=status.started_at,
            stopped_at=stop,
            stop_status=status.state.value,
            stop_message=status.message or None,
            name=status.name,
        )
        if await self._apply(ours.agent_id, [observation]):
            self._repaired("closed", ours.agent_id, to_state=status.state)

    async def _still_live(self, ours: repositories.Tracked, state: State) -> None:
        now = datetime.now(UTC)
        if state is not ours.state:
            steps = await self._apply(
                ours.agent_id, [record.Observation(kind=OBSERVED[state], at=now)]
            )
            self.summary.updated += bool(steps)
        async with self.engine.begin() as conn:
            await repositories.mark_seen_live(
                conn, app_id=self.summary.app_id, agent_ids=[ours.agent_id], at=now
            )
        if self._overdue(ours):
            self.summary.overdue += 1
            log.warning(
                "reconcile_overdue",
                agent_id=ours.agent_id,
                state=state.value,
                started_at=ours.started_at.isoformat() if ours.started_at else None,
            )

    async def _gone(self, ours: repositories.Tracked) -> None:
        """Agora answered 404: close the agent at the last time we know it was alive."""
        now = datetime.now(UTC)
        app_id = self.summary.app_id
        async with self.engine.begin() as conn:
            raw = await db.driver_connection(conn)
            rows = await repositories.lock_agents(raw, [(app_id, ours.agent_id)])
            if lifecycle.is_terminal(rows[app_id, ours.agent_id].state):
                return  # settled meanwhile (a webhook)
            alive = (
                await repositories.last_alive_at(conn, app_id=app_id, agent_id=ours.agent_id) or now
            )
            if alive > now - self.grace:
                self.summary.deferred += 1
                return
            observation = record.Observation(
                kind=Kind.GONE,
                at=alive,
                stopped_at=alive,
                stop_status=State.STOPPED.value,
                stop_message=GONE_MESSAGE,
            )
            [applied] = await ingest.observe_agents(
                raw,
                app_id,
                [(ours.agent_id, observation)],
                source="reconcile",
                received_at=now,
                rows=rows,
            )
        ingest.count(applied, source="reconcile")
        if applied.steps:
            self._repaired("gone", ours.agent_id, to_state=State.STOPPED)

    async def _apply(
        self, agent_id: str, observations: Sequence[record.Observation]
    ) -> list[lifecycle.Step]:
        """Apply `observations` in order to the agent, in one transaction; the steps recorded."""
        async with self.engine.begin() as conn:
            applied = await ingest.observe_agents(
                await db.driver_connection(conn),
                self.summary.app_id,
                [(agent_id, observation) for observation in observations],
                source="reconcile",
                received_at=datetime.now(UTC),
            )
        for one in applied:
            ingest.count(one, source="reconcile")
        return [step for one in applied for step in one.steps]

    def _overdue(self, ours: repositories.Tracked) -> bool:
        """Active for longer than Agora lets a session run (plus the margin)."""
        start = ours.started_at
        return (
            lifecycle.is_active(ours.state)
            and start is not None
            and start < self.started - self.horizon
        )

    def _plain(self, agent_id: str, *, listed: bool) -> bool:
        """Whether `agent_id` is plain; if not, count and log it: it is never adopted (`listed`
        by Agora) nor queried (held by us), as it never reaches a URL (CONTRACT §3)."""
        if agora.is_plain_id(agent_id):
            return True
        self.summary.not_plain += 1
        log.warning("reconcile_agent_id_not_plain", agent_id=agent_id[:256], listed=listed)
        return False

    def _repaired(self, kind: Repair, agent_id: str, *, to_state: State) -> None:
        self.summary.repairs[kind] += 1
        log.warning("reconcile_repaired", kind=kind, agent_id=agent_id, to_state=to_state.value)

    def _agora_error(self, error: agora.AgoraError, *, agent_id: str | None) -> None:
        self.summary.agora_errors += 1
        log.warning(
            "reconcile_agora_error",
            agent_id=agent_id,
            endpoint=error.endpoint,
            status=error.status,
            reason=error.reason,
        )

    def _agora_failed(self, error: agora.AgoraError, *, agent_id: str | None) -> None:
        self._agora_error(error, agent_id=agent_id)
        self.failed = True
        self.summary.outcome, self.summary.reason = "failed", f"Agora {error.endpoint} failed"


async def _each(
    items: Iterable[T],
    action: Callable[[T], Awaitable[None]],
    *,
    stop: Callable[[], bool] = lambda: False,
) -> None:
    """`action` on every item, `CONCURRENCY` at a time, until `stop()`; the first error ends it."""
    queue = iter(items)

    async def work() -> None:
        for item in queue:  # shared: each item is taken once
            if stop():
                return
            structlog.contextvars.bind_contextvars(agent_id=getattr(item, "agent_id", None))
            await action(item)

    try:
        async with asyncio.TaskGroup() as group:
            for _ in range(CONCURRENCY):
                group.create_task(work())
    except ExceptionGroup as failures:
        raise failures.exceptions[0] from None
