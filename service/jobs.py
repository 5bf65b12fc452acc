"""Write-side statements for `history_job`: claim, heartbeat, record, finish, release.

Jobs are enqueued by `repositories.enqueue_history_job` in the transaction that records the stop
(the outbox). A worker then, each step in its own short transaction:

    claim        queued and due, or running with an expired lease → running, leased to `owner`
                 (`FOR UPDATE SKIP LOCKED`, so concurrent workers never take the same row)
    heartbeat    pushes the lease forward for every job `owner` holds, while it works
    record_call  the outcome of one Agora call, guarded by the lease
    finish       done; or `requeue` to wait for a transcript; or `release` at shutdown

Every statement after `claim` is guarded by `lease_owner = owner AND status = 'running'`: a worker
whose lease expired and was taken over changes nothing (no row back). Repositories take the
caller's connection and never commit.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from sqlalchemy import (
    ColumnElement,
    RowMapping,
    Select,
    and_,
    func,
    literal,
    or_,
    select,
    tuple_,
    update,
)
from sqlalchemy.ext.asyncio import AsyncConnection

from service.tables import agent, history, history_job

# pg_notify channel: a new or expedited job wakes listening workers at once.
CHANNEL = "history_job"

Call = Literal["history", "turns"]
# invalid_id: the agent id is not plain, so it was never sent (agora.AgoraIdNotPlain).
CallOutcome = Literal[
    "ok", "skipped", "not_found", "rejected", "gave_up", "not_configured", "invalid_id"
]


@dataclass(frozen=True, slots=True, kw_only=True)
class Job:
    """A claimed job, with what the worker needs to know about the agent."""

    agent_id: str
    app_id: str
    channel: str | None
    attempts: int
    stop_recorded_at: datetime
    history_call: CallOutcome | None
    turns_call: CallOutcome | None
    history_status: str
    previous_owner: str | None  # set when the job was taken over from a worker whose lease expired

    @classmethod
    def from_row(cls, row: RowMapping) -> Job:
        return cls(
            agent_id=row["agent_id"],
            app_id=row["app_id"],
            channel=row["channel"],
            attempts=row["attempts"],
            stop_recorded_at=row["stop_recorded_at"],
            history_call=row["history_call"],
            turns_call=row["turns_call"],
            history_status=row["history_status"] or "pending",
            previous_owner=row["previous_owner"],
        )


def _owned(app_id: str, agent_id: str, owner: str) -> ColumnElement[bool]:
    return and_(
        history_job.c.app_id == app_id,
        history_job.c.agent_id == agent_id,
        history_job.c.lease_owner == owner,
        history_job.c.status == "running",
    )


def _lease(lease_s: float) -> ColumnElement[datetime]:
    return func.now() + func.make_interval(0, 0, 0, 0, 0, 0, literal(lease_s))


def _due() -> Select[tuple[str, str, str | None]]:
    """The next claimable job, locked; rows other workers hold are skipped, not waited for."""
    return (
        select(
            history_job.c.app_id,
            history_job.c.agent_id,
            history_job.c.lease_owner.label("previous_owner"),
        )
        .where(
            history_job.c.status != "done",
            history_job.c.due_at <= func.now(),
            or_(history_job.c.status == "queued", history_job.c.lease_expires_at < func.now()),
        )
        .order_by(history_job.c.due_at)
        .limit(1)
        .with_for_update(skip_locked=True)
    )


async def claim(conn: AsyncConnection, *, owner: str, lease_s: float) -> Job | None:
    """Lease the job due longest (or one whose lease expired) to `owner`; None when none is due."""
    due = _due().cte("due")
    stmt = (
        update(history_job)
        .where(history_job.c.app_id == due.c.app_id, history_job.c.agent_id == due.c.agent_id)
        .values(
            status="running",
            lease_owner=owner,
            lease_expires_at=_lease(lease_s),
            attempts=history_job.c.attempts + 1,
        )
        .returning(
            history_job.c.agent_id,
            history_job.c.app_id,
            history_job.c.attempts,
            history_job.c.stop_recorded_at,
            history_job.c.history_call,
            history_job.c.turns_call,
            due.c.previous_owner,
            select(agent.c.channel)
            .where(
                agent.c.app_id == history_job.c.app_id, agent.c.agent_id == history_job.c.agent_id
            )
            .scalar_subquery()
            .label("channel"),
            select(history.c.status)
            .where(
                history.c.app_id == history_job.c.app_id,
                history.c.agent_id == history_job.c.agent_id,
            )
            .scalar_subquery()
            .label("history_status"),
        )
    )
    row = (await conn.execute(stmt)).mappings().first()
    return Job.from_row(row) if row is not None else None


async def heartbeat(
    conn: AsyncConnection, *, owner: str, lease_s: float, keys: Sequence[tuple[str, str]]
) -> int:
    """Extend the lease of the jobs (`(app_id, agent_id)`) `owner` is still working on; answers
    how many."""
    stmt = (
        update(history_job)
        .where(
            tuple_(history_job.c.app_id, history_job.c.agent_id).in_(keys),
            history_job.c.lease_owner == owner,
            history_job.c.status == "running",
        )
        .values(lease_expires_at=_lease(lease_s))
    )
    return (await conn.execute(stmt)).rowcount


async def record_call(
    conn: AsyncConnection,
    *,
    app_id: str,
    agent_id: str,
    owner: str,
    call: Call,
    outcome: CallOutcome,
) -> bool:
    """Store how `call` ended; False (and nothing written) if `owner` no longer holds the job.

    The row stays locked until the caller's transaction ends, so what the caller stores beside it
    (transcript, turns) is written by the lease holder only. The agent's row is locked first
    (FOR KEY SHARE, as the foreign keys of those rows would later), the order every webhook
    transaction takes: agent, then history and turns, then the job. Taking the job first
    deadlocked with a 112 or 103 for the same agent.
    """
    await conn.execute(
        select(agent.c.agent_id)
        .where(agent.c.app_id == app_id, agent.c.agent_id == agent_id)
        .with_for_update(key_share=True)
    )
    column = history_job.c.history_call if call == "history" else history_job.c.turns_call
    stmt = (
        update(history_job)
        .where(_owned(app_id, agent_id, owner))
        .values({column: outcome})
        .returning(history_job.c.agent_id)
    )
    return (await conn.execute(stmt)).first() is not None


async def finish(
    conn: AsyncConnection, *, app_id: str, agent_id: str, owner: str, error: str | None
) -> bool:
    """Mark the job done; False if `owner` no longer holds it."""
    stmt = (
        update(history_job)
        .where(_owned(app_id, agent_id, owner))
        .values(
            status="done",
            finished_at=func.now(),
            lease_owner=None,
            lease_expires_at=None,
            last_error=error,
        )
        .returning(history_job.c.agent_id)
    )
    return (await conn.execute(stmt)).first() is not None


async def requeue(
    conn: AsyncConnection,
    *,
    app_id: str,
    agent_id: str,
    owner: str,
    due_at: datetime,
    error: str | None,
) -> bool:
    """Put the job back to wait until `due_at` (the transcript's grace deadline)."""
    stmt = (
        update(history_job)
        .where(_owned(app_id, agent_id, owner))
        .values(
            status="queued",
            due_at=due_at,
            lease_owner=None,
            lease_expires_at=None,
            last_error=error,
        )
        .returning(history_job.c.agent_id)
    )
    return (await conn.execute(stmt)).first() is not None


async def release(conn: AsyncConnection, *, app_id: str, agent_id: str, owner: str) -> bool:
    """Hand a job back unfinished (shutdown): queued and due now, for any worker to take."""
    stmt = (
        update(history_job)
        .where(_owned(app_id, agent_id, owner))
        .values(status="queued", lease_owner=None, lease_expires_at=None)
        .returning(history_job.c.agent_id)
    )
    return (await conn.execute(stmt)).first() is not None


async def expedite(conn: AsyncConnection, *, app_id: str, agent_id: str) -> None:
    """A transcript arrived: a job waiting out the grace period is due now (and workers woken)."""
    stmt = (
        update(history_job)
        .where(
            history_job.c.app_id == app_id,
            history_job.c.agent_id == agent_id,
            history_job.c.status == "queued",
            history_job.c.due_at > func.now(),
        )
        .values(due_at=func.now())
        .returning(history_job.c.agent_id)
    )
    if (await conn.execute(stmt)).first() is not None:
        await notify(conn, agent_id)


async def notify(conn: AsyncConnection, agent_id: str) -> None:
    """Wake listening workers when the caller's transaction commits."""
    await conn.execute(select(func.pg_notify(CHANNEL, agent_id)))


async def counts(conn: AsyncConnection) -> dict[str, int]:
    """Jobs by status (queued, running, done), zeros included."""
    rows = await conn.execute(
        select(history_job.c.status, func.count()).group_by(history_job.c.status)
    )
    found = {"queued": 0, "running": 0, "done": 0}
    found.update({status: int(n) for status, n in rows})
    return found


async def oldest_due_seconds(conn: AsyncConnection) -> float:
    """Age of the oldest due, unfinished job; 0 when there is none."""
    age = await conn.scalar(
        select(
            func.coalesce(func.extract("epoch", func.now() - func.min(history_job.c.due_at)), 0)
        ).where(history_job.c.status != "done", history_job.c.due_at <= func.now())
    )
    return max(0.0, float(age or 0))


async def backlog(conn: AsyncConnection, *, app_ids: Sequence[str]) -> dict[str, dict[str, Any]]:
    """Per app: unfinished jobs `queued` and `running`, and `oldest_due_s`, the age of the oldest
    due one (0 when none is due). Reads only unfinished jobs (a partial index holds them)."""
    oldest_due = func.min(history_job.c.due_at).filter(history_job.c.due_at <= func.now())
    rows = await conn.execute(
        select(
            history_job.c.app_id,
            func.count().filter(history_job.c.status == "queued"),
            func.count().filter(history_job.c.status == "running"),
            func.extract("epoch", func.now() - oldest_due),
        )
        .where(history_job.c.status != "done", history_job.c.app_id.in_(list(app_ids)))
        .group_by(history_job.c.app_id)
    )
    found = {a: {"queued": 0, "running": 0, "oldest_due_s": 0.0} for a in app_ids}
    for app_id, queued, running, age in rows:
        found[app_id] = {
            "queued": int(queued),
            "running": int(running),
            "oldest_due_s": max(0.0, float(age or 0)),
        }
    return found
