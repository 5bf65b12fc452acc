"""Use case: verified notifications, and what reconciliation observes, into the ledger.

One write path for both. A group of notifications (`apply_deliveries`, one transaction the caller
commits: the group commit of `service/batcher.py`) is applied in three floors, data flowing down
and back once:

1. Read and lock, in one statement (`repositories.store_and_lock`): store every new delivery
   (dedupe on `(app_id, noticeId)`), create the agents the deliveries stored now name that we
   do not know, and lock those agents, in key order (a duplicate touches no agent).
2. Decide, in pure code (`plan_delivery`, on `record.apply` and `lifecycle`): each notification
   in arrival order, each against the agent row the previous one left; what to write piles up in
   one `Plan`.
3. Write the plan, one statement with a part per table, its COMMIT in the same round trip
   (`repositories.write`).

Nothing here waits on a lock held across a commit: PCU is recorded as changes (`rollup.changes`)
that the folder folds off the request path. A notification whose decision fails is stored
`unapplied` in the same transaction without touching the others; one without a usable agent is
stored `unapplied` from the start (`reapply` takes them up again). After the caller's commit,
`report()` counts what was applied.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any, Literal

import psycopg
import structlog

from service import events, latency, lifecycle, metrics, record, repositories, rollup, usage
from service.record import AgentRow, Observation

log = structlog.get_logger(__name__)

Key = tuple[str, str]  # (app_id, agent_id)
Status = Literal["accepted", "duplicate", "ignored", "unapplied"]


@dataclass(frozen=True, slots=True, kw_only=True)
class Delivery:
    """One verified notification for one app, as received."""

    app_id: str
    note: events.Notification
    received_at: datetime

    @property
    def key(self) -> Key | None:
        agent_id = self.note.agent_id if self.note.event is not None else None
        return (self.app_id, agent_id) if agent_id is not None else None


@dataclass(frozen=True, slots=True, kw_only=True)
class Applied:
    """What one notification or observation recorded, as `count()` reports it."""

    app_id: str
    agent_id: str | None = None
    notice_id: str | None = None  # the notification's (None for reconciliation's observations)
    steps: tuple[lifecycle.Step, ...] = ()
    errors: tuple[tuple[str | None, int | None], ...] = ()  # (module, code) of a 110's errors
    slot_seconds: float | None = None  # the agent's slot closed here, after this long


@dataclass(frozen=True, slots=True, kw_only=True)
class Outcome:
    status: Status
    agent_id: str | None = None
    out_of_order: bool = False  # older than something already recorded for the agent
    applied: Applied | None = None


@dataclass(slots=True)
class Plan:
    """Everything a group decided to write, as rows per table (`repositories.write`)."""

    rows: dict[Key, AgentRow]  # the locked agents, as the decisions left them
    before: dict[Key, AgentRow] = field(default_factory=dict)  # as they were read
    transitions: list[tuple[Any, ...]] = field(default_factory=list)
    errors: list[list[Any]] = field(default_factory=list)
    metrics: list[list[Any]] = field(default_factory=list)
    turns: list[list[Any]] = field(default_factory=list)
    call_states: list[tuple[Any, ...]] = field(default_factory=list)
    transcripts: dict[Key, list[dict[str, Any]]] = field(default_factory=dict)  # from 103s
    jobs: set[Key] = field(default_factory=set)
    unapplied: list[tuple[str, str, str]] = field(default_factory=list)  # app, notice, problem
    # 103s and 112s stored: (app_id, noticeId, agent_id), stripped if the history is erased.
    transcript_notices: list[tuple[str, str, str]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.before = dict(self.rows)

    def changed(self) -> list[AgentRow]:
        """The rows the decisions changed; what the write derives from them (`pcu_changes`,
        `usage_marks`, `label_marks`) takes this list, computed once per group."""
        return [row for key, row in self.rows.items() if row != self.before[key]]

    def pcu_changes(self, changed: Sequence[AgentRow]) -> list[rollup.Change]:
        out: list[rollup.Change] = []
        for row in changed:
            old = self.before[row.key]
            out += rollup.changes(
                row.app_id,
                before=old.interval,
                after=row.interval,
                was_active=lifecycle.is_active(old.state),
                is_active=lifecycle.is_active(row.state),
            )
        return out

    def usage_marks(self, changed: Sequence[AgentRow]) -> list[tuple[str, int]]:
        """The (app_id, hour µs) whose usage rollup the plan changes (`usage.marks`), once each."""
        out: set[tuple[str, int]] = set()
        for row in changed:
            out.update((row.app_id, hour) for hour in usage.marks(self.before[row.key], row))
        return sorted(out)

    def label_marks(self, changed: Sequence[AgentRow]) -> list[Key]:
        """The agents whose label pairs the plan changes: their turns' hours are marked for the
        per-label latency rollup (`latency.pairs`; a change of labels only, or of a label's
        version, changes no figure). An agent that nothing had been recorded for (as created, all
        defaults: the first notification of nearly every agent) has no turns to mark: every path
        that stores turns records something for their agent first."""
        out = []
        for row in changed:
            before = self.before[row.key]
            if before == AgentRow(app_id=row.app_id, agent_id=row.agent_id):
                continue
            if latency.pairs(row.labels) != latency.pairs(before.labels):
                out.append(row.key)
        return sorted(out)


async def apply_deliveries(
    conn: psycopg.AsyncConnection[Any],
    deliveries: Sequence[Delivery],
    *,
    wanted: Callable[[], bool] = lambda: True,
) -> list[Outcome] | None:
    """Store and apply a group of deliveries, and commit: three round trips whatever the group's
    size (psycopg's `BEGIN`, the read, the write with the `COMMIT` pipelined behind it).

    Answers one outcome per delivery, in order (a repeat of a noticeId, stored before or earlier
    in the group, is a `duplicate`), or None, having written nothing, when `wanted()` says no
    one waits for the group any more: the caller then rolls back. On an error the caller rolls
    back too.
    """
    first: dict[tuple[str, str], int] = {}
    for index, delivery in enumerate(deliveries):
        first.setdefault((delivery.app_id, delivery.note.notice_id), index)
    unique = [deliveries[i] for i in sorted(first.values())]
    stored, rows = await repositories.store_and_lock(conn, unique)
    plan = Plan(rows)
    outcomes: list[Outcome] = []
    for index, delivery in enumerate(deliveries):
        ident = (delivery.app_id, delivery.note.notice_id)
        if first[ident] != index or ident not in stored:
            outcomes.append(Outcome(status="duplicate", agent_id=delivery.note.agent_id))
        else:
            outcomes.append(plan_delivery(plan, delivery))
    if not wanted():
        return None
    new_turns = await repositories.write(conn, plan, commit=True)
    metrics.turns_stored(new_turns)
    return outcomes


def plan_delivery(plan: Plan, delivery: Delivery) -> Outcome:
    """Decide one stored delivery against its agent's row in `plan` (pure)."""
    note, key = delivery.note, delivery.key
    if note.event is None or key is None:
        return Outcome(status=repositories.outcome_of(note), agent_id=note.agent_id)
    try:
        return _decide(plan, delivery, note.event, key)
    except Exception as error:  # a bug must cost this notification, not its group
        problem = f"applying failed: {type(error).__name__}"
        log.error(
            "notification_unapplied",
            app_id=delivery.app_id,
            agent_id=note.agent_id,
            notice_id=note.notice_id,
            exc_info=error,
        )
        plan.unapplied.append((delivery.app_id, note.notice_id, problem))
        return Outcome(status="unapplied", agent_id=note.agent_id)


def _decide(plan: Plan, delivery: Delivery, event: events.Event, key: Key) -> Outcome:
    note = delivery.note
    row = plan.rows[key]
    at = note.occurred_at or delivery.received_at
    effects = _effects(event, key, note=note, received_at=delivery.received_at)
    applied = plan_observation(
        plan,
        key,
        observation(event, at, notice_id=note.notice_id),
        source="webhook",
        notice_id=note.notice_id,
        received_at=delivery.received_at,
    )
    effects.apply(plan)
    if isinstance(event, events.AgentError):
        errors = tuple((e.module, e.code) for e in event.errors)
        applied = replace(applied, errors=errors)
    if isinstance(event, events.AgentHistory | events.TurnsFinished):
        plan.transcript_notices.append((key[0], note.notice_id, key[1]))
    out_of_order = row.last_event_at is not None and at < row.last_event_at
    return Outcome(
        status="accepted", agent_id=event.agent_id, out_of_order=out_of_order, applied=applied
    )


def plan_observation(
    plan: Plan,
    key: Key,
    obs: Observation,
    *,
    source: repositories.Source,
    notice_id: str | None,
    received_at: datetime,
) -> Applied:
    """Decide `obs` against the agent's row in `plan` (locked by the caller): its new row, the
    transitions to record and, on a stop, the history job."""
    before = plan.rows[key]
    decision = record.apply(before, obs)
    if decision.refused is not None:
        log.warning(
            "transition_refused",
            app_id=key[0],
            agent_id=key[1],
            notice_id=notice_id,
            kind=obs.kind,
            detail=decision.refused,
        )
    plan.rows[key] = decision.row
    for step in decision.steps:
        plan.transitions.append(
            (
                *key,
                step.from_state.value,
                step.to_state.value,
                step.kind.value,
                source,
                notice_id,
                step.inferred,
                step.at.isoformat(),
                received_at.isoformat(),
            )
        )
        if lifecycle.is_terminal(step.to_state):
            plan.jobs.add(key)
    return Applied(
        app_id=key[0],
        agent_id=key[1],
        notice_id=notice_id,
        steps=decision.steps,
        slot_seconds=_closed_slot(before, decision.row),
    )


def _closed_slot(before: AgentRow, after: AgentRow) -> float | None:
    """The length of the agent's slot if it closed with this decision (once per agent: a
    terminal agent's slot stays closed; later corrections of its ends are not counted)."""
    if _slot(before) is not None:
        return None
    return _slot(after)


def _slot(row: AgentRow) -> float | None:
    start, end = row.interval
    if not lifecycle.is_terminal(row.state) or start is None or end is None:
        return None
    return (end - start).total_seconds()


def observation(event: events.Event, at: datetime, *, notice_id: str) -> Observation:
    """What a notification says about its agent, at event time `at`."""
    kind: lifecycle.Kind | None = None
    stop: dict[str, Any] = {}
    warning = None
    if isinstance(event, events.AgentJoined):
        kind = lifecycle.Kind.JOINED
    elif isinstance(event, events.AgentLeft):
        failed = event.status == "FAILED"
        kind = lifecycle.Kind.LEFT_FAILED if failed else lifecycle.Kind.LEFT_STOPPED
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


@dataclass(frozen=True, slots=True)
class _Effects:
    """What a 103, 110, 111, 112, 201 or 202 carries besides the agent's own fields."""

    errors: list[list[Any]] = field(default_factory=list)
    metrics: list[list[Any]] = field(default_factory=list)
    turns: list[list[Any]] = field(default_factory=list)
    call_states: list[tuple[Any, ...]] = field(default_factory=list)
    transcript: tuple[Key, list[dict[str, Any]]] | None = None

    def apply(self, plan: Plan) -> None:
        plan.errors += self.errors
        plan.metrics += self.metrics
        plan.turns += self.turns
        plan.call_states += self.call_states
        if self.transcript is not None:
            plan.transcripts[self.transcript[0]] = self.transcript[1]


def _effects(
    event: events.Event, key: Key, *, note: events.Notification, received_at: datetime
) -> _Effects:
    at, notice_id = _iso(note.occurred_at), note.notice_id
    if isinstance(event, events.AgentError):
        return _Effects(
            errors=[
                [*key, notice_id, i, e.module, e.code, e.message, e.turn_id, at, _iso(received_at)]
                for i, e in enumerate(event.errors)
            ]
        )
    if isinstance(event, events.AgentMetrics):
        return _Effects(
            metrics=[
                [*key, notice_id, i, m.turn_id, m.figures, at] for i, m in enumerate(event.metrics)
            ]
        )
    if isinstance(event, events.TurnsFinished):
        return _Effects(turns=repositories.turn_rows(key, event.turns, source="webhook"))
    if isinstance(event, events.CallState) and event.state is not None:
        return _Effects(
            call_states=[
                (
                    *key,
                    notice_id,
                    event.direction,
                    event.state,
                    _iso(event.reported_at),
                    received_at.isoformat(),
                )
            ]
        )
    if isinstance(event, events.AgentHistory):
        contents = [{"role": m.role, "content": m.content, **m.extra} for m in event.contents]
        return _Effects(transcript=(key, contents))
    return _Effects()


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def report(outcomes: Sequence[Outcome], deliveries: Sequence[Delivery]) -> None:
    """Count what a committed group applied (after the commit)."""
    for outcome, delivery in zip(outcomes, deliveries, strict=True):
        if outcome.out_of_order:
            metrics.out_of_order(delivery.app_id, delivery.note.event_type)
        if outcome.applied is not None:
            count(outcome.applied, source="webhook")


def count(applied: Applied, *, source: repositories.Source) -> None:
    """Count and log committed transitions, ended sessions and new errors (after the commit)."""
    for module, code in applied.errors:
        metrics.agent_error(applied.app_id, module, code)
    if applied.slot_seconds is not None:
        metrics.agent_seconds(applied.app_id, applied.slot_seconds)
    for step in applied.steps:
        metrics.transition(applied.app_id, step.to_state.value, source)
        if lifecycle.is_terminal(step.to_state) and not lifecycle.is_terminal(step.from_state):
            metrics.session_ended(applied.app_id, step.to_state.value.lower())
        log.info(
            "transition_applied",
            app_id=applied.app_id,
            agent_id=applied.agent_id,
            notice_id=applied.notice_id,
            from_state=step.from_state.value,
            to_state=step.to_state.value,
            cause=step.kind.value,
            source=source,
            inferred=step.inferred,
        )


async def observe_agents(
    conn: psycopg.AsyncConnection[Any],
    app_id: str,
    items: Sequence[tuple[str, Observation]],
    *,
    source: repositories.Source,
    received_at: datetime,
    rows: Mapping[Key, AgentRow] | None = None,
) -> list[Applied]:
    """Apply observations (reconciliation's) to agents of `app_id` in the caller's transaction:
    the agents are created if unknown and locked (unless `rows` holds them locked already), the
    observations decided in order, and the plan written. The caller commits, then `count()`s."""
    if rows is None:
        keys = sorted({(app_id, agent_id) for agent_id, _ in items})
        rows = await repositories.lock_agents(conn, keys)
    plan = Plan(dict(rows))
    applied = [
        plan_observation(
            plan, (app_id, agent_id), obs, source=source, notice_id=None, received_at=received_at
        )
        for agent_id, obs in items
    ]
    await repositories.write(conn, plan)
    return applied
