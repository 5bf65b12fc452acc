from __future__ import annotations

from datetime import UTC, datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from service import pcu
from tests import pcu_oracle

M = pcu.GRAIN_US  # one minute in µs
S = pcu.US_PER_S


@pytest.mark.parametrize(
    ("edges", "start", "end", "expected"),
    [
        # no edges: flat at the level before the span
        ([], 0, M, pcu.Span(0, M)),
        # one start halfway: peak 1, area half the span
        ([(30 * S, 1)], 0, M, pcu.Span(0, M, delta=1, peak=1, area=30 * S)),
        # a stop at the very start: the span never sees the level before it
        ([(0, -1)], 0, M, pcu.Span(0, M, delta=-1, peak=-1, area=-M)),
        # a stop later: the level before is reached first
        ([(10 * S, -1)], 0, M, pcu.Span(0, M, delta=-1, peak=0, area=-50 * S)),
        # a zero-length interval changes nothing
        ([(5 * S, 1), (5 * S, -1)], 0, M, pcu.Span(0, M, delta=0, peak=0, area=0)),
        # two overlapping agents
        (
            [(0, 1), (10 * S, 1), (20 * S, -1)],
            0,
            M,
            pcu.Span(0, M, delta=1, peak=2, area=60 * S + 50 * S - 40 * S),
        ),
        # edges outside the span are ignored
        ([(M, 1), (-1, 1)], 0, M, pcu.Span(0, M)),
    ],
)
def test_a_span_summarises_its_edges(
    edges: list[tuple[int, int]], start: int, end: int, expected: pcu.Span
) -> None:
    assert pcu.summarise(edges, start, end) == expected


@pytest.mark.parametrize(
    ("grid", "expected"),
    [
        # an aligned hour is one hour piece
        ([(0, 60 * M)], [pcu.Piece(0, 0, 60 * M, "hour")]),
        # a bucket inside one minute is read edge by edge
        ([(10 * S, 50 * S)], [pcu.Piece(0, 10 * S, 50 * S, "edges")]),
        # unaligned inside an hour: partial head, whole minutes, partial tail
        (
            [(M + 10 * S, 3 * M + 5 * S)],
            [
                pcu.Piece(0, M + 10 * S, 2 * M, "edges"),
                pcu.Piece(0, 2 * M, 3 * M, "minutes"),
                pcu.Piece(0, 3 * M, 3 * M + 5 * S, "edges"),
            ],
        ),
        # an hour from any second: an hour suffix and the next hour's prefix
        (
            [(17 * M + 13 * S, 77 * M + 13 * S)],
            [
                pcu.Piece(0, 17 * M + 13 * S, 18 * M, "edges"),
                pcu.Piece(0, 18 * M, 60 * M, "hour"),
                pcu.Piece(0, 60 * M, 77 * M, "hour"),
                pcu.Piece(0, 77 * M, 77 * M + 13 * S, "edges"),
            ],
        ),
        # a bucket spanning one minute boundary but no whole minute: one piece per minute
        (
            [(30 * S, M + 30 * S)],
            [pcu.Piece(0, 30 * S, M, "edges"), pcu.Piece(0, M, M + 30 * S, "edges")],
        ),
    ],
)
def test_buckets_are_cut_into_whole_and_partial_minutes(
    grid: list[tuple[int, int]], expected: list[pcu.Piece]
) -> None:
    assert pcu.pieces(grid) == expected


@pytest.mark.parametrize(
    ("current", "expected"),
    [
        (0, pcu.Threshold.NORMAL),
        (15, pcu.Threshold.NORMAL),  # 15/20 is under 0.8
        (16, pcu.Threshold.WARNING),  # exactly 0.8 of the cap warns
        (19, pcu.Threshold.WARNING),
        (20, pcu.Threshold.CAP),  # at the cap
        (25, pcu.Threshold.CAP),  # over it (agents Agora let through)
    ],
)
def test_thresholds_against_a_cap_of_twenty(current: int, expected: pcu.Threshold) -> None:
    assert pcu.threshold(current, cap=20, warn_fraction=0.8) == expected


@pytest.mark.parametrize(
    ("before", "after", "crossed"),
    [
        (pcu.Threshold.NORMAL, pcu.Threshold.WARNING, [pcu.Threshold.WARNING]),
        (pcu.Threshold.WARNING, pcu.Threshold.CAP, [pcu.Threshold.CAP]),
        # a jump crosses both (a cap of 1 warns and caps at once)
        (pcu.Threshold.NORMAL, pcu.Threshold.CAP, [pcu.Threshold.WARNING, pcu.Threshold.CAP]),
        # downward moves are not crossings
        (pcu.Threshold.CAP, pcu.Threshold.NORMAL, []),
        (pcu.Threshold.WARNING, pcu.Threshold.WARNING, []),
    ],
)
def test_upward_moves_are_crossings(
    before: pcu.Threshold, after: pcu.Threshold, crossed: list[pcu.Threshold]
) -> None:
    assert pcu.crossings(before, after) == crossed


def test_microseconds_round_trip_exactly() -> None:
    moment = datetime(2026, 11, 21, 10, 0, 0, 123456, tzinfo=UTC)
    assert pcu.from_us(pcu.to_us(moment)) == moment
    assert pcu.to_us(moment) % S == 123456


# Times on a coarse lattice (10 s) make edges land on bucket and minute boundaries often.
times = st.integers(min_value=0, max_value=600).map(lambda n: n * 10 * S)
intervals = st.lists(
    st.tuples(times, st.one_of(st.none(), st.integers(min_value=0, max_value=400))).map(
        lambda t: (t[0], None if t[1] is None else t[0] + t[1] * 10 * S)
    ),
    max_size=12,
)


@settings(max_examples=300, deadline=None)
@given(
    intervals=intervals,
    start=st.integers(min_value=-6, max_value=30).map(lambda n: n * 5 * S),
    length=st.integers(min_value=1, max_value=2000).map(lambda n: n * 5 * S),
    step=st.sampled_from([5 * S, 20 * S, 45 * S, M, 90 * S, 2 * M, 7 * M, 60 * M, 90 * M]),
)
def test_the_fold_of_rollup_minutes_equals_brute_force(
    intervals: list[tuple[int, int | None]], start: int, length: int, step: int
) -> None:
    """Summaries per minute, combined as the database does, give the oracle's series."""
    edges = pcu.edges(intervals)
    end = start + length
    grid = pcu.buckets(start, end, step)
    parts = pcu.pieces(grid)
    spans = {i: pcu.summarise(edges, part.start, part.end) for i, part in enumerate(parts)}
    for i, part in enumerate(parts):  # every piece stays inside one minute, or one hour
        if part.kind == "edges":
            assert pcu.floor_grain(part.start) == pcu.floor_grain(part.end - 1)
        else:
            assert part.start % M == 0 and part.end % M == 0
            assert part.start // pcu.HOUR_US == (part.end - 1) // pcu.HOUR_US
        if part.kind == "hour":
            assert part.start % pcu.HOUR_US == 0 or part.end % pcu.HOUR_US == 0
        assert spans[i].start == part.start
    points = pcu.fold(pcu_oracle.level(intervals, start - 1), grid, parts, spans)
    assert [(p.start, p.max, p.area) for p in points] == pcu_oracle.series(
        intervals, start, end, step
    )


@settings(max_examples=200, deadline=None)
@given(
    intervals=st.lists(
        st.tuples(
            st.integers(0, 80).map(lambda n: n * 45 * S),
            st.one_of(st.none(), st.integers(0, 40).map(lambda n: n * 30 * S)),
        ).map(lambda t: (t[0], None if t[1] is None else t[0] + t[1])),
        max_size=15,
    ),
    cut=st.integers(0, 60),
    prefix=st.booleans(),
)
def test_an_hour_prefix_answers_any_prefix_or_suffix_of_its_minutes(
    intervals: list[tuple[int, int | None]], cut: int, prefix: bool
) -> None:
    hour = 0
    edges = pcu.edges(intervals)
    minutes = {k: pcu.summarise(edges, k * M, (k + 1) * M) for k in range(60)}
    row = pcu.hour_prefix(
        {k: span for k, span in minutes.items() if span != pcu.Span(k * M, (k + 1) * M)}
    )
    a, b = (0, cut) if prefix else (cut, 60)
    if a == b:
        return
    assert pcu.hour_span(row, hour, a, b) == pcu.summarise(edges, a * M, b * M)


@pytest.mark.parametrize(
    ("previous", "counts", "expected"),
    [
        # cap 20, warning at 16, margin 2: up at once, down only 2 below what is held.
        (pcu.Threshold.NORMAL, [15, 16], [pcu.Threshold.NORMAL, pcu.Threshold.WARNING]),
        (pcu.Threshold.NORMAL, [20], [pcu.Threshold.CAP]),
        (pcu.Threshold.CAP, [19, 20, 19, 18], [pcu.Threshold.CAP] * 3 + [pcu.Threshold.WARNING]),
        (pcu.Threshold.WARNING, [15, 14], [pcu.Threshold.WARNING, pcu.Threshold.NORMAL]),
        (pcu.Threshold.CAP, [3], [pcu.Threshold.NORMAL]),  # a fall past both margins
        (pcu.Threshold.CAP, [14], [pcu.Threshold.NORMAL]),
        (pcu.Threshold.CAP, [15], [pcu.Threshold.WARNING]),
    ],
)
def test_levels_have_hysteresis(
    previous: pcu.Threshold, counts: list[int], expected: list[pcu.Threshold]
) -> None:
    limits = pcu.Limits(cap=20, warn_fraction=0.8)
    seen = []
    for count in counts:
        previous = pcu.settle(previous, count, limits)
        seen.append(previous)
    assert seen == expected


def test_hovering_at_the_cap_is_announced_once() -> None:
    limits = pcu.Limits(cap=20, warn_fraction=0.8)
    level, announced = pcu.Threshold.NORMAL, []
    for count in [16, 19, 20, 19, 20, 19, 20, 18, 19, 20]:
        settled = pcu.settle(level, count, limits)
        announced += pcu.crossings(level, settled)
        level = settled
    # warning once, cap at 20, again only after falling to 18 (the margin is 2).
    assert announced == [pcu.Threshold.WARNING, pcu.Threshold.CAP, pcu.Threshold.CAP]


@pytest.mark.parametrize(("cap", "margin"), [(1, 1), (5, 1), (20, 2), (25, 3), (100, 10)])
def test_the_margin_is_a_tenth_of_the_cap_and_at_least_one(cap: int, margin: int) -> None:
    assert pcu.margin(pcu.Limits(cap=cap)) == margin
