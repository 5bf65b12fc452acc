from __future__ import annotations

from datetime import UTC, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from service import stream

AT = datetime(2026, 11, 28, 10, 0, tzinfo=UTC)
NOW = datetime(2026, 11, 28, 10, 0, 5, tzinfo=UTC)

positions = st.builds(
    stream.Position,
    xid=st.integers(0, 2**63 - 1),
    row=st.integers(0, 2**63 - 1),
    kind=st.integers(0, 1),
)


@given(positions)
def test_an_event_id_names_its_position(position: stream.Position) -> None:
    assert stream.decode(position.encode()) == position


@given(positions, positions)
def test_event_ids_compare_as_strings_in_stream_order(
    a: stream.Position, b: stream.Position
) -> None:
    assert (a.encode() < b.encode()) == (a < b)


@pytest.mark.parametrize(
    "text",
    [
        "",
        "12",
        "0" * 33 + "0",  # too long
        "0" * 32 + "2",  # no such kind
        "0" * 31 + "g0",  # not hex
        "0" * 31 + "A0",  # ids are lower case
        " " + "0" * 32,
    ],
)
def test_anything_else_is_not_an_event_id(text: str) -> None:
    with pytest.raises(ValueError, match="not an event id"):
        stream.decode(text)


def transition(row: int, app_id: str, from_state: str, to_state: str) -> stream.Transition:
    return stream.Transition(
        xid=100,
        row=row,
        app_id=app_id,
        agent_id=f"agent-{row}",
        from_state=from_state,
        to_state=to_state,
        cause="agent_joined",
        event_at=AT,
    )


def test_each_app_gets_one_pcu_event_after_its_last_change_of_count() -> None:
    page = [
        transition(1, "a", "IDLE", "RUNNING"),  # takes a slot
        transition(2, "b", "IDLE", "RUNNING"),  # takes a slot in b: b's only change
        transition(3, "a", "RUNNING", "STOPPED"),  # gives one back: a's last change
        transition(4, "a", "STARTING", "RUNNING"),  # active to active: no change of count
    ]
    built = stream.build(page, counts={"a": 4, "b": 1}, caps={"a": 20, "b": 5}.__getitem__, now=NOW)
    assert [(e.name, e.position.row, e.position.kind) for e in built] == [
        ("agent", 1, 0),
        ("agent", 2, 0),
        ("pcu", 2, 1),
        ("agent", 3, 0),
        ("pcu", 3, 1),
        ("agent", 4, 0),
    ]
    assert built[0].data == {
        "app_id": "a",
        "agent_id": "agent-1",
        "state": "RUNNING",
        "at": "2026-11-28T10:00:00Z",
        "cause": "agent_joined",
    }
    assert built[4].data == {"app_id": "a", "current": 4, "cap": 20, "at": "2026-11-28T10:00:05Z"}
    assert [e.position for e in built] == sorted(e.position for e in built)


@pytest.mark.parametrize(
    ("from_state", "to_state", "moves"),
    [
        ("IDLE", "STARTING", True),
        ("IDLE", "RUNNING", True),
        ("RUNNING", "STOPPING", False),  # STOPPING still holds its slot
        ("STOPPING", "STOPPED", True),
        ("RUNNING", "RECOVERING", False),
        ("RECOVERING", "FAILED", True),
        ("IDLE", "STOPPED", False),  # a stop for an agent never seen active
    ],
)
def test_only_entering_or_leaving_the_active_states_moves_a_slot(
    from_state: str, to_state: str, moves: bool
) -> None:
    assert transition(1, "a", from_state, to_state).moves_slot is moves
