"""Use case: one verified notification, one transaction.

`handle()` stores the delivery (dedupe on `(app_id, noticeId)`), locks the agent's row, applies the
lifecycle and the event's effects (errors, metrics, turns, call states, transcript, history job)
and commits, all before the webhook route answers 200. If the database is unreachable it raises
`Unavailable` (503) so Agora retries; nothing is half-applied because it is one transaction. A
verified notification is never lost to its content: one whose agent cannot be identified is
stored `unapplied`, and one whose application fails for any other reason is stored `unapplied`,
with the failure as its `problem`, in a second transaction (`convoai-ledger reapply` retries).

`observe()` is the lifecycle half on its own, for callers that hold a locked agent row and have
something Agora said about it: the webhook path here, and reconciliation with `source="reconcile"`.
It also keeps PCU accounting (`rollup`) in step with the agent's active interval. After the
caller's commit, `report()` counts what was applied and logs threshold crossings, so nothing is
announced for a transaction that rolled back.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

import structlog
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from service import db, events, jobs, lifecycle, metrics, pcu, repositories, rollup
from service.errors import IllegalTransition, ServiceError

log = structlog.get_logger(__name__)


@dataclass(frozen=True, slots=True, kw_only=True)
class Outcome:
    status: Literal["accepted", "duplicate", "ignored", "unapplied"]
    agent_id: str | None = None
    out_of_order: bool = False  # older than something already recorded for the agent
    applied: Applied | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Applied:
    """What `observe()` changed: recorded steps and the PCU thresholds crossed upwards."""

    app_id: str
    steps: tuple[lifecycle.Step, ...] = ()
    crossings: tuple[rollup.Crossing, ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class Observation:
    """Something Agora reported about one agent, at event time `at`."""

    kind: lifecycle.Kind | None  # None: the event sets no state
    at: datetime
    started_at: datetime | None = None
    stopped_at: datetime | None = None
    stop_status: str | None = None
    stop_message: str | None = None
    name: str | None = None
    channel: str | None = None
    labels: Mapping[str, Any] | None = None
    warning: str | None = None
    notice_id: str | None = None  # the notification's, for label versions (None: reconciliation)


async def handle(
    engine: AsyncEngine,
    *,
    app_id: str,
    note: events.Notification,
    received_at: datetime,
    limits: pcu.Limits,
) -> Outcome:
    """Store and apply `note` in one committed transaction; raise `Unavailable` if the DB is down.

    `limits` are the app's PCU cap and warning fraction. Counts and crossings are reported after
    the commit. If applying fails for any reason but the database being unreachable, the
    notification is stored `unapplied` in a transaction of its own.
    """
    try:
        async with engine.begin() as conn:
            outcome = await _apply(
                conn, app_id=app_id, note=note, received_at=received_at, limits=limits
            )
    except asyncio.CancelledError:
        raise
    except Exception as error:
        if isinstance(error, db.ERRORS) and db.is_unavailable(error):
            raise db.unavailable_from(error) from error
        return await _keep_unapplied(
            engine, app_id=app_id, note=note, received_at=received_at, error=error
        )
    if outcome.out_of_order:
        metrics.out_of_order(app_id, note.event_type)
    if outcome.applied is not None:
        report(outcome.applied, source="webhook")
    return outcome


async def _keep_unapplied(
    engine: AsyncEngine,
    *,
    app_id: str,
    note: events.Notification,
    received_at: datetime,
    error: Exception,
) -> Outcome:
    """The second transaction: keep a notification whose application failed, and why."""
    problem = f"applying failed: {type(error).__name__}"
    if isinstance(error, ServiceError):
        problem += f": {error}"
    log.error("notification_unapplied", error=type(error).__name__, exc_info=error)
    try:
        stored = await _store_unapplied(engine, app_id, note, received_at, problem)
    except db.ERRORS as failed:
        if db.is_unavailable(failed):
            raise db.unavailable_from(failed) from failed
        # Even its JSON could not be stored: keep the exact bytes under a placeholder body.
        log.error("notification_body_unstorable", error=type(failed).__name__)
        exact = note.raw if note.raw is not None else note.json.encode("utf-8", "surrogatepass")
        placeholder = dataclasses.replace(note, json='{"unstorable": true}', raw=exact)
        stored = await _store_unapplied(engine, app_id, placeholder, received_at, problem)
    return Outcome(status="unapplied" if stored else "duplicate", agent_id=note.agent_id)


async def _store_unapplied(
    engine: AsyncEngine,
    app_id: str,
    note: events.Notification,
    received_at: datetime,
    problem: str,
) -> bool:
    async with engine.begin() as conn:
        return await repositories.keep_unapplied(
            conn, app_id=app_id, note=note, received_at=received_at, problem=problem
        )


def report(applied: Applied, *, source: repositories.Source) -> None:
    """Count committed transitions and announce committed threshold crossings (after commit)."""
    for step in applied.steps:
        metrics.transition(applied.app_id, step.to_state.value, source)
    for crossing in applied.crossings:
        metrics.threshold_crossed(crossing.app_id, crossing.threshold.value)
        log.warning(
            "pcu_threshold_crossed",
            app_id=crossing.app_id,
            threshold=crossing.threshold.value,
            current=crossing.current,
            cap=crossing.cap,
        )


async def _apply(
    conn: AsyncConnection,
    *,
    app_id: str,
    note: events.Notification,
    received_at: datetime,
    limits: pcu.Limits,
) -> Outcome:
    stored, row = await repositories.record_and_lock(
        conn, app_id=app_id, note=note, received_at=received_at
    )
    if not stored:
        return Outcome(status="duplicate", agent_id=note.agent_id)
    if note.event is None or row is None:
        return Outcome(status=repositories.outcome_of(note))
    return await apply_event(
        conn, row, note=note, received_at=received_at, limits=limits, commit=True
    )


async def apply_event(
    conn: AsyncConnection,
    row: repositories.AgentRow,
    *,
    note: events.Notification,
    received_at: datetime,
    limits: pcu.Limits,
    commit: bool,
) -> Outcome:
    """The effects of a stored notification's event on its locked agent `row` (a webhook's, or
    one `reapply` takes up again). With `commit`, see `observe`."""
    assert note.event is not None
    event = note.event
    at = note.occurred_at or received_at
    await _record_effects(conn, event, app_id=row.app_id, note=note, received_at=received_at)
    # Last: its PCU upkeep may commit in its own round trip (see `rollup.upkeep`).
    applied = await observe(
        conn,
        row,
        _observation(event, at, notice_id=note.notice_id),
        source="webhook",
        notice_id=note.notice_id,
        received_at=received_at,
        limits=limits,
        commit=commit,
    )
    out_of_order = row.last_event_at is not None and at < row.last_event_at
    return Outcome(
        status="accepted", agent_id=event.agent_id, out_of_order=out_of_order, applied=applied
    )


def _observation(event: events.Event, at: datetime, *, notice_id: str) -> Observation:
    kind: lifecycle.Kind | None = None
    stop: dict[str, Any] = {}
    warning = None
    if isinstance(event, events.AgentJoined):
        kind = lifecycle.Kind.JOINED
    elif isinstance(event, events.AgentLeft):
        kind = (
            lifecycle.Kind.LEFT_FAILED if event.status == "FAILED" else lifecycle.Kind.LEFT_STOPPED
        )
        stop = {
            "stopped_at": event.stopped_at,
            "stop_status": event.status,
            "stop_message": event.message,
        }
    elif isinstance(event, events.AgentExpire):
        warning = event.message or "Task exceeded maximum lifetime"
    return Observation(
        kind=kind,
        at=at,
        started_at=event.started_at,
        name=event.name,
        channel=event.channel,
        labels=event.labels,
        warning=warning,
        notice_id=notice_id,
        **stop,
    )


async def observe(
    conn: AsyncConnection,
    row: repositories.AgentRow,
    obs: Observation,
    *,
    source: repositories.Source,
    notice_id: str | None,
    received_at: datetime,
    limits: pcu.Limits,
    commit: bool = False,
) -> Applied:
    """Apply `obs` to the locked agent `row`: state, transitions, bookkeeping, history job, PCU.

    Returns the recorded steps (none for redeliveries, stale or refused observations) and the
    PCU thresholds crossed; the caller commits, then passes the result to `report()`. One agent
    per transaction: the PCU locks are taken after the agent's (see `rollup`). With `commit`,
    the PCU upkeep, when there is one, commits the transaction in its own round trip: call it
    last, and run nothing on `conn` after it.
    """
    started_at = _earliest(row.started_at, obs.started_at)
    steps = _plan(row, obs, started_at=started_at)
    values = _agent_values(row, obs, steps, started_at=started_at)
    late = lifecycle.late_start(
        lifecycle.State(values.get("state", row.state)),
        state_at=values.get("state_at", row.state_at),
        active_from=values.get("active_from", row.active_from),
        started_at=started_at
        if started_at is not None
        else (obs.at if obs.kind == lifecycle.Kind.JOINED else None),
    )
    if late is not None:
        steps.append(late)
        values["active_from"] = late.at
        values["active_until"] = max(values.get("state_at", row.state_at) or late.at, late.at)
    await repositories.update_agent(conn, app_id=row.app_id, agent_id=row.agent_id, values=values)
    await repositories.add_transitions(
        conn,
        app_id=row.app_id,
        agent_id=row.agent_id,
        steps=steps,
        source=source,
        notice_id=notice_id,
        received_at=received_at,
    )
    if any(lifecycle.is_terminal(step.to_state) for step in steps):
        await repositories.enqueue_history_job(conn, app_id=row.app_id, agent_id=row.agent_id)
    crossings = await _account(conn, row, values, limits=limits, commit=commit)
    for step in steps:
        log.info(
            "transition_applied",
            from_state=step.from_state.value,
            to_state=step.to_state.value,
            cause=step.kind.value,
            source=source,
            inferred=step.inferred,
        )
    return Applied(app_id=row.app_id, steps=tuple(steps), crossings=tuple(crossings))


def _plan(
    row: repositories.AgentRow, obs: Observation, *, started_at: datetime | None
) -> list[lifecycle.Step]:
    if obs.kind is None:
        return []
    try:
        return lifecycle.plan(
            row.state,
            obs.kind,
            at=obs.at,
            state_at=row.state_at,
            started_at=started_at,
            message=obs.stop_message,
            end_message=row.stop_message,
        )
    except IllegalTransition as refused:
        log.warning(
            "transition_refused", state=row.state.value, kind=obs.kind.value, detail=str(refused)
        )
        return []


async def _account(
    conn: AsyncConnection,
    row: repositories.AgentRow,
    values: Mapping[str, Any],
    *,
    limits: pcu.Limits,
    commit: bool,
) -> list[rollup.Crossing]:
    """Keep the PCU rollup and threshold alarm in step with the agent's new interval."""
    return await rollup.upkeep(
        conn,
        app_id=row.app_id,
        before=(row.active_from, row.active_until),
        after=(
            values.get("active_from", row.active_from),
            values.get("active_until", row.active_until),
        ),
        limits=limits,
        commit=commit,
    )


def _agent_values(
    row: repositories.AgentRow,
    obs: Observation,
    steps: list[lifecycle.Step],
    *,
    started_at: datetime | None,
) -> dict[str, Any]:
    """The agent columns `obs` changes; every rule is order-independent (first, min, max)."""
    values: dict[str, Any] = {}
    _keep_earliest(values, "name", held=(row.name, row.name_at), new=(obs.name, obs.at))
    _keep_earliest(values, "channel", held=(row.channel, row.channel_at), new=(obs.channel, obs.at))
    values.update(_merged_labels(row, obs))
    if started_at != row.started_at:
        values["started_at"] = started_at
    if row.last_event_at is None or obs.at > row.last_event_at:
        values["last_event_at"] = obs.at
    if obs.warning is not None and (
        row.warning_at is None or (obs.at, obs.warning) > (row.warning_at, row.warning or "")
    ):
        values["warning"], values["warning_at"] = obs.warning, obs.at
    values.update(_interval(row, obs, steps, started_at=started_at))
    return values


def _interval(
    row: repositories.AgentRow,
    obs: Observation,
    steps: list[lifecycle.Step],
    *,
    started_at: datetime | None,
) -> dict[str, Any]:
    """State, end and PCU interval after `steps`. The slot starts when the agent first became
    active, and no later than the earliest start Agora reports."""
    values: dict[str, Any] = {}
    active_from, active_until = row.active_from, row.active_until
    for step in steps:
        values["state"], values["state_at"] = step.to_state.value, step.at
        if lifecycle.is_active(step.to_state) and active_from is None:
            active_from = step.at
        if lifecycle.is_terminal(step.to_state):
            values["stopped_at"] = obs.stopped_at or step.at
            values["stop_status"] = obs.stop_status or step.to_state.value
            values["stop_message"] = obs.stop_message
            active_until = step.at if active_from is not None else None
    if active_from is not None and started_at is not None and started_at < active_from:
        active_from = started_at
    if active_from is not None and active_until is not None:
        active_until = max(active_until, active_from)
    if active_from != row.active_from:
        values["active_from"] = active_from
    if active_until != row.active_until:
        values["active_until"] = active_until
    return values


def _keep_earliest(
    values: dict[str, Any],
    column: str,
    *,
    held: tuple[str | None, datetime | None],
    new: tuple[str | None, datetime],
) -> None:
    """`column` from the observation with the earliest event time that carries it."""
    value, at = new
    if not value:
        return
    earlier = held[0] is None or held[1] is None or (at, value) < (held[1], held[0])
    if earlier and (value, at) != held:
        values[column], values[f"{column}_at"] = value, at


def _merged_labels(row: repositories.AgentRow, obs: Observation) -> dict[str, Any]:
    """Labels merged key by key: a key's value from the latest event time (ties: the greater
    noticeId). Versions are `[µs, noticeId]`; a key without one predates them and yields."""
    if not obs.labels:
        return {}
    labels, versions = dict(row.labels), dict(row.label_versions)
    mine = [pcu.to_us(obs.at), obs.notice_id or ""]
    changed = False
    for key, value in obs.labels.items():
        held = versions.get(key)
        if held is not None and (held[0], held[1]) >= (mine[0], mine[1]):
            continue
        if labels.get(key) != value or held != mine:
            labels[key], versions[key] = value, mine
            changed = True
    return {"labels": labels, "label_versions": versions} if changed else {}


async def _record_effects(
    conn: AsyncConnection,
    event: events.Event,
    *,
    app_id: str,
    note: events.Notification,
    received_at: datetime,
) -> None:
    """What 103, 110, 111, 112, 201 and 202 carry besides the agent's own fields."""
    key = {"app_id": app_id, "agent_id": event.agent_id}
    notice_id = note.notice_id
    if isinstance(event, events.AgentHistory):
        contents = [{"role": m.role, "content": m.content, **m.extra} for m in event.contents]
        await repositories.store_transcript(conn, **key, contents=contents, source="webhook")
        # A job waiting out the grace period for this transcript can finish now.
        await jobs.expedite(conn, **key)
    elif isinstance(event, events.AgentError):
        await repositories.add_errors(
            conn,
            **key,
            notice_id=notice_id,
            items=event.errors,
            at=note.occurred_at,
            received_at=received_at,
        )
    elif isinstance(event, events.AgentMetrics):
        await repositories.add_metrics(
            conn, **key, notice_id=notice_id, items=event.metrics, at=note.occurred_at
        )
    elif isinstance(event, events.TurnsFinished):
        await repositories.upsert_turns(conn, **key, turns=event.turns, source="webhook")
    elif isinstance(event, events.CallState):
        await repositories.add_call_state(
            conn, **key, notice_id=notice_id, event=event, received_at=received_at
        )


def _earliest(current: datetime | None, new: datetime | None) -> datetime | None:
    if current is None:
        return new
    if new is None:
        return current
    return min(current, new)
