"""The agent lifecycle (pure: no I/O, no clock).

Every rule that decides an agent's state lives in this module. Callers hand in the agent's current
state, what was observed (`Kind`) and the observation's event time; `plan()` answers the steps to
record, each of which becomes one append-only transition row. The caller serialises calls per agent
(row lock) and applies the steps in the same transaction.

Theory of operation
-------------------
States are Agora's enum: IDLE 0, STARTING 1, RUNNING 2, STOPPING 3, STOPPED 4, RECOVERING 5,
FAILED 6. Agora does not document its transitions; we read them as IDLE → STARTING → RUNNING →
STOPPING → STOPPED, RUNNING ⇄ RECOVERING, any live state → FAILED. An agent we first hear of through
an event that does not set a state (103, 104, 110, 111, 112, 201, 202) is IDLE and holds no slot.

Notifications come in any order and any number of times, so these rules make the outcome depend on
the set of observations only, never on their arrival order:

1. Terminal states absorb. STOPPED and FAILED map every kind to themselves: a late 101 after a 102
   changes nothing. Only a stop can still correct the end: of two stops (a 102 FAILED and a 102
   STOPPED, or a stop from reconciliation) the earliest by event time is the agent's end, FAILED
   on a tie (`End`); a stop found earlier than the recorded end is one more step, from the
   recorded terminal state to its own.
2. Event time orders live states. A non-terminal observation older than the one that set the
   current state is stale and ignored (a reconcile pass saw STOPPING; a delayed 101 must not undo it).
3. A stop implies its start. A 102 (or a reconciled STOPPED/FAILED) for an agent still IDLE carries
   Agora's `start_ts`; we record the join it implies (IDLE → RUNNING at `start_ts`) before the stop,
   so "102 then 101" writes the same transitions as "101 then 102". A stop seen before any start
   leaves the start unknown; the join is recorded when a start is reported (`late_start`), so
   the agent's slot is what it would have been had the start come first.

Redeliveries map a state to itself, so they plan no steps. A (state, kind) pair missing from the
table is an impossible move, such as a reconcile pass seeing RUNNING for an agent that is STOPPING:
`next_state` raises `IllegalTransition` and the state stays as it was.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Final

from service.errors import IllegalTransition


class State(StrEnum):
    IDLE = "IDLE"
    STARTING = "STARTING"
    RUNNING = "RUNNING"
    STOPPING = "STOPPING"
    STOPPED = "STOPPED"
    RECOVERING = "RECOVERING"
    FAILED = "FAILED"

    @property
    def code(self) -> int:
        """Agora's integer for the state (used by the list API's `state` filter)."""
        return STATE_CODES[self]


STATE_CODES: Final[Mapping[State, int]] = {
    State.IDLE: 0,
    State.STARTING: 1,
    State.RUNNING: 2,
    State.STOPPING: 3,
    State.STOPPED: 4,
    State.RECOVERING: 5,
    State.FAILED: 6,
}

# Holding a PCU slot.
ACTIVE: Final = frozenset({State.STARTING, State.RUNNING, State.RECOVERING, State.STOPPING})
TERMINAL: Final = frozenset({State.STOPPED, State.FAILED})


class Kind(StrEnum):
    """What was observed. The value is recorded as the transition's `cause`."""

    JOINED = "agent_joined"  # 101
    LEFT_STOPPED = "agent_left"  # 102 with status STOPPED (or no status)
    LEFT_FAILED = "agent_left_failed"  # 102 with status FAILED
    OBSERVED_IDLE = "reconcile_idle"
    OBSERVED_STARTING = "reconcile_starting"
    OBSERVED_RUNNING = "reconcile_running"
    OBSERVED_STOPPING = "reconcile_stopping"
    OBSERVED_RECOVERING = "reconcile_recovering"
    OBSERVED_STOPPED = "reconcile_stopped"
    OBSERVED_FAILED = "reconcile_failed"
    GONE = "reconcile_gone"  # the query API no longer knows the agent (404)


S, K = State, Kind

# What each kind of stop ends the agent as.
STOP_OUTCOMES: Final[Mapping[Kind, State]] = {
    K.LEFT_STOPPED: S.STOPPED,
    K.LEFT_FAILED: S.FAILED,
    K.OBSERVED_STOPPED: S.STOPPED,
    K.OBSERVED_FAILED: S.FAILED,
    K.GONE: S.STOPPED,
}

TRANSITIONS: Final[Mapping[tuple[State, Kind], State]] = {
    # IDLE: known only through events that set no state; anything Agora says settles it.
    (S.IDLE, K.JOINED): S.RUNNING,
    (S.IDLE, K.LEFT_STOPPED): S.STOPPED,
    (S.IDLE, K.LEFT_FAILED): S.FAILED,
    (S.IDLE, K.OBSERVED_IDLE): S.IDLE,
    (S.IDLE, K.OBSERVED_STARTING): S.STARTING,
    (S.IDLE, K.OBSERVED_RUNNING): S.RUNNING,
    (S.IDLE, K.OBSERVED_STOPPING): S.STOPPING,
    (S.IDLE, K.OBSERVED_RECOVERING): S.RECOVERING,
    (S.IDLE, K.OBSERVED_STOPPED): S.STOPPED,
    (S.IDLE, K.OBSERVED_FAILED): S.FAILED,
    (S.IDLE, K.GONE): S.STOPPED,
    # STARTING
    (S.STARTING, K.JOINED): S.RUNNING,
    (S.STARTING, K.LEFT_STOPPED): S.STOPPED,
    (S.STARTING, K.LEFT_FAILED): S.FAILED,
    (S.STARTING, K.OBSERVED_STARTING): S.STARTING,
    (S.STARTING, K.OBSERVED_RUNNING): S.RUNNING,
    (S.STARTING, K.OBSERVED_STOPPING): S.STOPPING,
    (S.STARTING, K.OBSERVED_RECOVERING): S.RECOVERING,
    (S.STARTING, K.OBSERVED_STOPPED): S.STOPPED,
    (S.STARTING, K.OBSERVED_FAILED): S.FAILED,
    (S.STARTING, K.GONE): S.STOPPED,
    # RUNNING
    (S.RUNNING, K.JOINED): S.RUNNING,  # redelivery: no-op
    (S.RUNNING, K.LEFT_STOPPED): S.STOPPED,
    (S.RUNNING, K.LEFT_FAILED): S.FAILED,
    (S.RUNNING, K.OBSERVED_RUNNING): S.RUNNING,
    (S.RUNNING, K.OBSERVED_STOPPING): S.STOPPING,
    (S.RUNNING, K.OBSERVED_RECOVERING): S.RECOVERING,
    (S.RUNNING, K.OBSERVED_STOPPED): S.STOPPED,
    (S.RUNNING, K.OBSERVED_FAILED): S.FAILED,
    (S.RUNNING, K.GONE): S.STOPPED,
    # RECOVERING: back to RUNNING, or on to a stop
    (S.RECOVERING, K.JOINED): S.RUNNING,
    (S.RECOVERING, K.LEFT_STOPPED): S.STOPPED,
    (S.RECOVERING, K.LEFT_FAILED): S.FAILED,
    (S.RECOVERING, K.OBSERVED_RUNNING): S.RUNNING,
    (S.RECOVERING, K.OBSERVED_STOPPING): S.STOPPING,
    (S.RECOVERING, K.OBSERVED_RECOVERING): S.RECOVERING,
    (S.RECOVERING, K.OBSERVED_STOPPED): S.STOPPED,
    (S.RECOVERING, K.OBSERVED_FAILED): S.FAILED,
    (S.RECOVERING, K.GONE): S.STOPPED,
    # STOPPING: only forward; a late 101 is a no-op
    (S.STOPPING, K.JOINED): S.STOPPING,
    (S.STOPPING, K.LEFT_STOPPED): S.STOPPED,
    (S.STOPPING, K.LEFT_FAILED): S.FAILED,
    (S.STOPPING, K.OBSERVED_STOPPING): S.STOPPING,
    (S.STOPPING, K.OBSERVED_STOPPED): S.STOPPED,
    (S.STOPPING, K.OBSERVED_FAILED): S.FAILED,
    (S.STOPPING, K.GONE): S.STOPPED,
    # Terminal states absorb every kind.
    **{(S.STOPPED, kind): S.STOPPED for kind in Kind},
    **{(S.FAILED, kind): S.FAILED for kind in Kind},
}


@dataclass(frozen=True, slots=True, kw_only=True)
class Step:
    """One state change to record: from → to, at an event time."""

    from_state: State
    to_state: State
    kind: Kind
    at: datetime
    inferred: bool = False  # implied by a later observation (rule 3), not seen itself


def next_state(state: State, kind: Kind) -> State:
    """The table lookup; raises `IllegalTransition` (state unchanged) on a miss."""
    try:
        return TRANSITIONS[state, kind]
    except KeyError:
        raise IllegalTransition(f"no transition from {state} on {kind}") from None


@dataclass(frozen=True, slots=True)
class End:
    """How an agent ended, ordered so that the earlier end sorts first (FAILED on a tie of
    times, then the message, so that any two ends compare the same way in any order)."""

    at: datetime
    state: State
    message: str | None = None

    def key(self) -> tuple[datetime, int, str]:
        return (self.at, 0 if self.state == State.FAILED else 1, self.message or "")


def plan(
    state: State,
    kind: Kind,
    *,
    at: datetime,
    state_at: datetime | None,
    started_at: datetime | None,
    message: str | None = None,
    end_message: str | None = None,
) -> list[Step]:
    """The steps that observing `kind` at event time `at` causes; empty when nothing changes.

    `state_at` is the event time of the observation that set `state`; `started_at` is Agora's
    `start_ts` for the agent when known. For a stop, `message` is its reason and `end_message`
    the recorded end's. Raises `IllegalTransition` for an impossible move.
    """
    target = next_state(state, kind)
    if state in TERMINAL:
        return _correct_end(
            state, kind, at=at, state_at=state_at, message=message, end_message=end_message
        )
    if target == state:
        return []
    if target not in TERMINAL and state_at is not None and at < state_at:
        return []  # rule 2: stale live-state observation
    if state == State.IDLE and target in TERMINAL and started_at is not None and started_at <= at:
        joined = Step(
            from_state=State.IDLE,
            to_state=State.RUNNING,
            kind=Kind.JOINED,
            at=started_at,
            inferred=True,
        )
        return [joined, Step(from_state=State.RUNNING, to_state=target, kind=kind, at=at)]
    return [Step(from_state=state, to_state=target, kind=kind, at=at)]


def _correct_end(
    state: State,
    kind: Kind,
    *,
    at: datetime,
    state_at: datetime | None,
    message: str | None,
    end_message: str | None,
) -> list[Step]:
    """Rule 1's exception: a stop earlier than the recorded end becomes the end."""
    outcome = STOP_OUTCOMES.get(kind)
    if outcome is None or state_at is None:
        return []
    recorded = End(at=state_at, state=state, message=end_message)
    if End(at=at, state=outcome, message=message).key() >= recorded.key():
        return []
    return [Step(from_state=state, to_state=outcome, kind=kind, at=at)]


def late_start(
    state: State,
    *,
    state_at: datetime | None,
    active_from: datetime | None,
    started_at: datetime | None,
) -> Step | None:
    """Rule 3, late: an agent that stopped before any start was known, and so never held a
    slot, learns its start; the join it implies is recorded (inferred) at that start."""
    if state not in TERMINAL or active_from is not None or started_at is None:
        return None
    if state_at is None or started_at > state_at:
        return None
    return Step(
        from_state=State.IDLE,
        to_state=State.RUNNING,
        kind=Kind.JOINED,
        at=started_at,
        inferred=True,
    )


def is_active(state: State) -> bool:
    return state in ACTIVE


def is_terminal(state: State) -> bool:
    return state in TERMINAL
