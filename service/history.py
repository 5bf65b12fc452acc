"""Use case: collect a stopped agent's session record (CONTRACT §5), one claimed job at a time.

`run_job(deps, job)` makes the job's Agora calls with no transaction open and stores each result
in its own short transaction, guarded by the job's lease:

1. `GET …/history`, unless a webhook transcript (103) is already there: a 200 is kept with
   `source: "api"` (never over a webhook transcript); 404 is final for the call.
2. `GET …/turns`, every page, into `agent_turn` (`source: "api"`; turns already stored stay).
3. Settle: the history is `complete` → job done. Otherwise, once `HISTORY_GRACE_S` have passed
   since the stop was recorded, the history becomes `unavailable` with a `reason` → job done;
   before that the job waits (queued, due at the deadline) for a 103, which expedites it.

A call with an outcome is never made again, so a job taken over after its worker died redoes
only what was in flight. Retries of 429/5xx/transport errors happen inside each call
(`agora.AgoraClient`); a call that gives up is settled as `gave_up`, not retried by the job.
An agent id that is not plain is never sent (CONTRACT §3): its calls are settled `invalid_id`
without a request, and unless a 103 brings the transcript the history ends `unavailable` with
the reason `agent_id_not_plain`.
"""

from __future__ import annotations

import os
import secrets
import socket
from dataclasses import dataclass
from datetime import timedelta
from typing import Final, Literal

import structlog
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from service import agora, jobs, metrics, replies, repositories
from service.config import Settings
from service.tables import history

log = structlog.get_logger(__name__)

# A job claimed this many times (each a crash or a lost lease) is settled without more calls.
MAX_ATTEMPTS: Final = 20

Settled = Literal["complete", "unavailable", "waiting", "lost"]

# Why a history ended `unavailable` (no 103 within the grace period), by the /history outcome.
REASONS: Final = {
    "not_found": "history_not_found",
    "gave_up": "history_api_unavailable",
    "rejected": "history_api_rejected",
    "not_configured": "no_rest_credentials",
    "invalid_id": "agent_id_not_plain",  # never sent: not a plain id (CONTRACT §3)
}


@dataclass(frozen=True, slots=True, kw_only=True)
class Deps:
    engine: AsyncEngine
    settings: Settings
    agora: agora.Agora
    owner: str  # this worker's lease identity


class LeaseLost(Exception):
    """Another worker took the job over (our lease had expired); we must write nothing more."""


def new_owner() -> str:
    """A lease identity unique to this process: host, pid and a random suffix."""
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"


async def run_job(deps: Deps, job: jobs.Job) -> Settled:
    """Make the job's outstanding calls and settle it; answers how it ended."""
    structlog.contextvars.clear_contextvars()
    structlog.contextvars.bind_contextvars(agent_id=job.agent_id, app_id=job.app_id)
    if job.previous_owner is not None:
        log.warning(
            "history_job_taken_over", previous_owner=job.previous_owner, attempt=job.attempts
        )
    try:
        client: agora.AgoraClient | None = deps.agora.for_app(job.app_id)
    except agora.AgoraNotConfigured:
        client = None
    give_up = job.attempts > MAX_ATTEMPTS
    try:
        history_call = job.history_call
        if history_call is None:
            history_call = await _fetch_history(deps, job, client, give_up=give_up)
        if job.turns_call is None:
            await _fetch_turns(deps, job, client, give_up=give_up)
        return await _settle(deps, job, history_call=history_call)
    except LeaseLost:
        log.warning("history_job_lost")
        return "lost"


async def _fetch_history(
    deps: Deps, job: jobs.Job, client: agora.AgoraClient | None, *, give_up: bool
) -> jobs.CallOutcome:
    fetched: replies.History | None = None
    outcome: jobs.CallOutcome
    if job.history_status == "complete":
        outcome = "skipped"  # completed histories are never fetched again
    elif client is None:
        outcome = "not_configured"
    elif give_up:
        outcome = "gave_up"
    else:
        try:
            fetched = await client.history(job.agent_id, channel=job.channel)
            outcome = "ok"
        except agora.AgoraError as error:
            outcome = _outcome(error)
    async with deps.engine.begin() as conn:
        if not await jobs.record_call(
            conn,
            app_id=job.app_id,
            agent_id=job.agent_id,
            owner=deps.owner,
            call="history",
            outcome=outcome,
        ):
            raise LeaseLost
        if fetched is not None:
            stored = await repositories.store_transcript(
                conn,
                app_id=job.app_id,
                agent_id=job.agent_id,
                contents=fetched.contents,
                source="api",
            )
            log.info("history_fetched", items=len(fetched.contents), stored=stored)
    return outcome


async def _fetch_turns(
    deps: Deps, job: jobs.Job, client: agora.AgoraClient | None, *, give_up: bool
) -> None:
    fetched: replies.Turns | None = None
    outcome: jobs.CallOutcome
    if client is None:
        outcome = "not_configured"
    elif give_up:
        outcome = "gave_up"
    else:
        try:
            fetched = await client.turns(job.agent_id, channel=job.channel)
            outcome = "ok"
        except agora.AgoraError as error:
            outcome = _outcome(error)
    async with deps.engine.begin() as conn:
        if not await jobs.record_call(
            conn,
            app_id=job.app_id,
            agent_id=job.agent_id,
            owner=deps.owner,
            call="turns",
            outcome=outcome,
        ):
            raise LeaseLost
        if fetched is not None:
            stored = await repositories.upsert_turns(
                conn,
                app_id=job.app_id,
                agent_id=job.agent_id,
                turns=fetched.turns,
                source="api",
            )
            log.info("turns_fetched", turns=len(fetched.turns), pages=fetched.pages)
    if fetched is not None:
        metrics.turns_stored(stored)


async def _settle(deps: Deps, job: jobs.Job, *, history_call: jobs.CallOutcome) -> Settled:
    """Done if complete; `unavailable` past the grace deadline; else wait for a 103."""
    deadline = job.stop_recorded_at + timedelta(seconds=deps.settings.history_grace_s)
    async with deps.engine.begin() as conn:
        # FOR SHARE: a 103 storing its transcript right now is waited for and seen, or waits for
        # the requeue and then expedites it; otherwise the job would sleep out the grace period.
        row = (
            await conn.execute(
                select(history.c.status, func.now().label("now"))
                .where(history.c.app_id == job.app_id, history.c.agent_id == job.agent_id)
                .with_for_update(read=True)
            )
        ).first()
        status, now = (row[0], row[1]) if row is not None else ("pending", None)
        if status == "complete" or now is None:
            settled: Settled = "complete"
        elif now >= deadline:
            reason = REASONS.get(history_call, "no_transcript")
            settled = (
                "unavailable"
                if await repositories.mark_history_unavailable(
                    conn, app_id=job.app_id, agent_id=job.agent_id, reason=reason
                )
                else "complete"
            )
        else:
            if not await jobs.requeue(
                conn,
                app_id=job.app_id,
                agent_id=job.agent_id,
                owner=deps.owner,
                due_at=deadline,
                error=None,
            ):
                raise LeaseLost
            log.info("history_waiting", due_at=deadline.isoformat())
            return "waiting"
        if not await jobs.finish(
            conn, app_id=job.app_id, agent_id=job.agent_id, owner=deps.owner, error=None
        ):
            raise LeaseLost
    log.info("history_settled", outcome=settled, attempt=job.attempts)
    metrics.history_completed(job.app_id, settled)
    return settled


def _outcome(error: agora.AgoraError) -> jobs.CallOutcome:
    if isinstance(error, agora.AgoraUnavailable):
        return "gave_up"
    if isinstance(error, agora.AgoraNotConfigured):
        return "not_configured"
    if isinstance(error, agora.AgoraIdNotPlain):
        log.warning("agora_call_refused", endpoint=error.endpoint, reason="agent_id_not_plain")
        return "invalid_id"
    if isinstance(error, agora.AgoraRejected) and error.status == 404:
        return "not_found"
    return "rejected"
