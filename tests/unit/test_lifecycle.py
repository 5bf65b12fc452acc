from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from service import lifecycle
from service.errors import IllegalTransition
from service.lifecycle import Kind, State

T0 = datetime(2026, 7, 1, 12, 0, tzinfo=UTC)
T1 = T0 + timedelta(minutes=10)


def steps(
    state: State,
    kind: Kind,
    *,
    at: datetime = T1,
    state_at: datetime | None = T0,
    started_at: datetime | None = T0,
) -> list[tuple[State, State, Kind, datetime]]:
    planned = lifecycle.plan(state, kind, at=at, state_at=state_at, started_at=started_at)
    return [(s.from_state, s.to_state, s.kind, s.at) for s in planned]


@pytest.mark.parametrize(
    ("state", "kind", "expected"),
    [
        (State.IDLE, Kind.JOINED, State.RUNNING),  # 101 for a new agent
        (State.RUNNING, Kind.JOINED, State.RUNNING),  # redelivered 101
        (State.RUNNING, Kind.LEFT_STOPPED, State.STOPPED),  # 102 STOPPED
        (State.RUNNING, Kind.LEFT_FAILED, State.FAILED),  # 102 FAILED
        (State.STARTING, Kind.LEFT_FAILED, State.FAILED),  # "Connecting for too long"
        (State.STOPPED, Kind.JOINED, State.STOPPED),  # late 101: terminal absorbs
        (State.FAILED, Kind.LEFT_STOPPED, State.FAILED),  # a second 102 changes nothing
        (State.STOPPED, Kind.OBSERVED_RUNNING, State.STOPPED),  # reconcile never revives
        (State.RUNNING, Kind.OBSERVED_RECOVERING, State.RECOVERING),
        (State.RECOVERING, Kind.OBSERVED_RUNNING, State.RUNNING),
        (State.STOPPING, Kind.JOINED, State.STOPPING),  # a late join does not undo a stop
        (State.RUNNING, Kind.GONE, State.STOPPED),  # the query API forgot it: closed
        (State.IDLE, Kind.OBSERVED_STARTING, State.STARTING),
    ],
)
def test_next_state_table(state: State, kind: Kind, expected: State) -> None:
    assert lifecycle.next_state(state, kind) == expected


@pytest.mark.parametrize(
    ("state", "kind"),
    [
        (State.RUNNING, Kind.OBSERVED_IDLE),  # Agora does not go back to IDLE
        (State.RUNNING, Kind.OBSERVED_STARTING),
        (State.STOPPING, Kind.OBSERVED_RUNNING),  # a stop in progress is not undone
        (State.STOPPING, Kind.OBSERVED_RECOVERING),
    ],
)
def test_impossible_moves_raise_and_name_state_and_event(state: State, kind: Kind) -> None:
    with pytest.raises(IllegalTransition, match=f"{state}.*{kind}"):
        lifecycle.next_state(state, kind)


def test_every_terminal_state_absorbs_every_kind() -> None:
    for terminal in lifecycle.TERMINAL:
        for kind in Kind:
            assert lifecycle.plan(terminal, kind, at=T1, state_at=T0, started_at=T0) == []


def test_a_redelivery_plans_nothing() -> None:
    assert steps(State.RUNNING, Kind.JOINED) == []


def test_join_plans_one_step_at_the_event_time() -> None:
    assert steps(State.IDLE, Kind.JOINED, at=T0, state_at=None) == [
        (State.IDLE, State.RUNNING, Kind.JOINED, T0)
    ]


def test_a_stale_live_observation_is_ignored() -> None:
    # A reconcile pass saw STOPPING at T1; a delayed observation from before T1 changes nothing.
    assert steps(State.STOPPING, Kind.OBSERVED_STOPPING, at=T0, state_at=T1) == []
    assert steps(State.RECOVERING, Kind.OBSERVED_RUNNING, at=T0, state_at=T1) == []


def test_a_stop_applies_whatever_its_time() -> None:
    early = T0 - timedelta(minutes=1)
    assert steps(State.RUNNING, Kind.LEFT_STOPPED, at=early, state_at=T0) == [
        (State.RUNNING, State.STOPPED, Kind.LEFT_STOPPED, early)
    ]


def test_a_stop_for_an_idle_agent_records_the_join_it_implies() -> None:
    planned = lifecycle.plan(State.IDLE, Kind.LEFT_STOPPED, at=T1, state_at=None, started_at=T0)
    assert [(s.from_state, s.to_state, s.kind, s.at, s.inferred) for s in planned] == [
        (State.IDLE, State.RUNNING, Kind.JOINED, T0, True),
        (State.RUNNING, State.STOPPED, Kind.LEFT_STOPPED, T1, False),
    ]


def test_a_stop_without_a_start_time_goes_straight_to_terminal() -> None:
    assert steps(State.IDLE, Kind.LEFT_FAILED, state_at=None, started_at=None) == [
        (State.IDLE, State.FAILED, Kind.LEFT_FAILED, T1)
    ]


def test_state_codes_follow_agora() -> None:
    assert [s.code for s in State] == [0, 1, 2, 3, 4, 5, 6]
    assert {State.STARTING, State.RUNNING, State.RECOVERING, State.STOPPING} == lifecycle.ACTIVE


@pytest.mark.parametrize(
    ("state", "recorded_at", "recorded_message", "kind", "at", "message", "expected"),
    [
        # An earlier stop with the other outcome becomes the end.
        (State.STOPPED, T1, "OK", Kind.LEFT_FAILED, T0, "RTC", [(State.STOPPED, State.FAILED)]),
        (State.FAILED, T1, "RTC", Kind.LEFT_STOPPED, T0, "OK", [(State.FAILED, State.STOPPED)]),
        # A later one does not.
        (State.STOPPED, T0, "OK", Kind.LEFT_FAILED, T1, "RTC", []),
        # A tie of times: FAILED wins, whichever arrives first.
        (State.STOPPED, T0, "OK", Kind.LEFT_FAILED, T0, "RTC", [(State.STOPPED, State.FAILED)]),
        (State.FAILED, T0, "RTC", Kind.LEFT_STOPPED, T0, "OK", []),
        # Same outcome, earlier: the end moves (its time and message).
        (State.STOPPED, T1, "late", Kind.LEFT_STOPPED, T0, "OK", [(State.STOPPED, State.STOPPED)]),
        # Same outcome and time: the message decides, so that either order ends the same.
        (State.STOPPED, T0, "b", Kind.LEFT_STOPPED, T0, "a", [(State.STOPPED, State.STOPPED)]),
        (State.STOPPED, T0, "a", Kind.LEFT_STOPPED, T0, "b", []),
        # Reconciliation's stops count as stops.
        (State.STOPPED, T1, "OK", Kind.OBSERVED_FAILED, T0, None, [(State.STOPPED, State.FAILED)]),
        (State.FAILED, T1, "x", Kind.GONE, T0, None, [(State.FAILED, State.STOPPED)]),
        # What is not a stop never moves a terminal agent.
        (State.STOPPED, T1, "OK", Kind.JOINED, T0, None, []),
        (State.FAILED, T1, "OK", Kind.OBSERVED_RUNNING, T0, None, []),
    ],
)
def test_the_earliest_stop_is_the_end_in_any_order(
    state: State,
    recorded_at: datetime,
    recorded_message: str | None,
    kind: Kind,
    at: datetime,
    message: str | None,
    expected: list[tuple[State, State]],
) -> None:
    planned = lifecycle.plan(
        state,
        kind,
        at=at,
        state_at=recorded_at,
        started_at=None,
        message=message,
        end_message=recorded_message,
    )
    assert [(s.from_state, s.to_state) for s in planned] == expected
    assert all(s.at == at and s.kind == kind for s in planned)


def test_a_start_learned_after_the_stop_records_the_join_it_implies() -> None:
    late = lifecycle.late_start(State.STOPPED, state_at=T1, active_from=None, started_at=T0)
    assert late == lifecycle.Step(
        from_state=State.IDLE, to_state=State.RUNNING, kind=Kind.JOINED, at=T0, inferred=True
    )


@pytest.mark.parametrize(
    ("state", "active_from", "started_at"),
    [
        (State.RUNNING, None, T0),  # not stopped: the join comes with its own event
        (State.STOPPED, T0, T0),  # already held a slot
        (State.STOPPED, None, None),  # still no start
        (State.FAILED, None, T1 + timedelta(seconds=1)),  # a start after the stop is absurd
    ],
)
def test_no_late_start_without_a_stop_that_lacked_one(
    state: State, active_from: datetime | None, started_at: datetime | None
) -> None:
    assert (
        lifecycle.late_start(state, state_at=T1, active_from=active_from, started_at=started_at)
        is None
    )
