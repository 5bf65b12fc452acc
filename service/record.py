"""An agent's record, and how one observation changes it (pure: no I/O, no clock).

`lifecycle` decides the state; this module decides everything else an observation changes about
the agent, with rules that make the final record depend on the set of observations only, never on
their arrival order (CONTRACT §4):

- the start is the earliest `start_ts` reported; the PCU slot `[active_from, active_until)` starts
  when the agent first became active, no later than that start, and ends with its end;
- the end (state, stop time, message) is the earliest stop by event time (`lifecycle.End`);
- `name` and `channel` come from the earliest event time that carries them (ties: the smaller
  value); `labels` are merged key by key, each key's value from the latest `[event time,
  noticeId]` (`label_versions` keeps that version per key);
- `last_event_at` is the latest event time, the warning (104) the latest one.

`apply(row, obs)` answers the new row and the lifecycle steps to record; callers apply several
observations to one agent in turn, each to the row the previous one left.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from service import lifecycle, pcu
from service.errors import IllegalTransition


@dataclass(frozen=True, slots=True, kw_only=True)
class AgentRow:
    """The agent columns the rules read and write (`agent` table, one row per app and id)."""

    app_id: str
    agent_id: str
    name: str | None = None
    name_at: datetime | None = None
    channel: str | None = None
    channel_at: datetime | None = None
    labels: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    label_versions: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    state: lifecycle.State = lifecycle.State.IDLE
    state_at: datetime | None = None
    started_at: datetime | None = None
    stopped_at: datetime | None = None
    stop_status: str | None = None
    stop_message: str | None = None
    active_from: datetime | None = None
    active_until: datetime | None = None
    warning: str | None = None
    warning_at: datetime | None = None
    last_event_at: datetime | None = None

    @property
    def key(self) -> tuple[str, str]:
        return (self.app_id, self.agent_id)

    @property
    def interval(self) -> tuple[datetime | None, datetime | None]:
        return (self.active_from, self.active_until)


# Every column of `AgentRow`, in the order statements read and write them.
COLUMNS: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(AgentRow))


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


@dataclass(frozen=True, slots=True, kw_only=True)
class Decision:
    """What one observation does to an agent: its row after, and the steps to record."""

    row: AgentRow
    steps: tuple[lifecycle.Step, ...]
    refused: str | None = None  # why the lifecycle refused the move (the state is unchanged)


def apply(row: AgentRow, obs: Observation) -> Decision:
    """The row after `obs`, and the transitions it causes (see the module's rules)."""
    started_at = _earliest(row.started_at, obs.started_at)
    steps, refused = _plan(row, obs, started_at=started_at)
    values = _facts(row, obs)
    values["started_at"] = started_at
    values.update(_ended(row, obs, steps, started_at=started_at))
    state_at = values.get("state_at", row.state_at)
    late = lifecycle.late_start(
        values.get("state", row.state),
        state_at=state_at,
        active_from=values.get("active_from", row.active_from),
        started_at=started_at
        if started_at is not None
        else (obs.at if obs.kind == lifecycle.Kind.JOINED else None),
    )
    if late is not None:
        steps.append(late)
        values["active_from"] = late.at
        values["active_until"] = max(state_at or late.at, late.at)
    return Decision(row=dataclasses.replace(row, **values), steps=tuple(steps), refused=refused)


def _plan(
    row: AgentRow, obs: Observation, *, started_at: datetime | None
) -> tuple[list[lifecycle.Step], str | None]:
    if obs.kind is None:
        return [], None
    try:
        steps = lifecycle.plan(
            row.state,
            obs.kind,
            at=obs.at,
            state_at=row.state_at,
            started_at=started_at,
            message=obs.stop_message,
            end_message=row.stop_message,
        )
    except IllegalTransition as refused:
        return [], str(refused)
    return steps, None


def _facts(row: AgentRow, obs: Observation) -> dict[str, Any]:
    """Name, channel, labels, last event and warning after `obs`."""
    values: dict[str, Any] = {}
    values.update(_earliest_value("name", (row.name, row.name_at), (obs.name, obs.at)))
    values.update(_earliest_value("channel", (row.channel, row.channel_at), (obs.channel, obs.at)))
    values.update(_merged_labels(row, obs))
    if row.last_event_at is None or obs.at > row.last_event_at:
        values["last_event_at"] = obs.at
    if obs.warning is not None and (
        row.warning_at is None or (obs.at, obs.warning) > (row.warning_at, row.warning or "")
    ):
        values["warning"], values["warning_at"] = obs.warning, obs.at
    return values


def _ended(
    row: AgentRow, obs: Observation, steps: list[lifecycle.Step], *, started_at: datetime | None
) -> dict[str, Any]:
    """State, end and PCU interval after `steps`. The slot starts when the agent first became
    active, and no later than the earliest start Agora reports."""
    values: dict[str, Any] = {}
    active_from, active_until = row.active_from, row.active_until
    for step in steps:
        values["state"], values["state_at"] = step.to_state, step.at
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
    return {**values, "active_from": active_from, "active_until": active_until}


def _earliest_value(
    column: str, held: tuple[str | None, datetime | None], new: tuple[str | None, datetime]
) -> dict[str, Any]:
    """`column` from the observation with the earliest event time that carries it."""
    value, at = new
    if not value:
        return {}
    earlier = held[0] is None or held[1] is None or (at, value) < (held[1], held[0])
    return {column: value, f"{column}_at": at} if earlier else {}


def _merged_labels(row: AgentRow, obs: Observation) -> dict[str, Any]:
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


def _earliest(current: datetime | None, new: datetime | None) -> datetime | None:
    if current is None:
        return new
    if new is None:
        return current
    return min(current, new)
