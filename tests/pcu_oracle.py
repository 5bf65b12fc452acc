"""Brute-force PCU answers, written independently of `service.pcu`'s summaries, for the tests.

Concurrency at t is counted directly as the number of intervals `[a, b)` containing t (b None:
still active). Within a bucket it only changes at interval edges, so evaluating it at the bucket
start and at every edge inside gives the exact maximum, and the area between them the average.
"""

from __future__ import annotations

from collections.abc import Sequence

Interval = tuple[int, int | None]


def level(intervals: Sequence[Interval], at: int) -> int:
    return sum(1 for a, b in intervals if a <= at and (b is None or at < b))


def bucket(intervals: Sequence[Interval], start: int, end: int) -> tuple[int, int]:
    """`(max, area)` of the concurrency over `[start, end)`; area in level·µs."""
    moments = sorted(
        {start}
        | {a for a, _ in intervals if start < a < end}
        | {b for _, b in intervals if b is not None and start < b < end}
    )
    levels = [level(intervals, at) for at in moments]
    area = sum(
        value * (stop - at)
        for value, at, stop in zip(levels, moments, [*moments[1:], end], strict=True)
    )
    return max(levels), area


def series(
    intervals: Sequence[Interval], start: int, end: int, step: int
) -> list[tuple[int, int, int]]:
    """`(bucket start, max, area)` per bucket; the last bucket ends at `end`."""
    return [(at, *bucket(intervals, at, min(at + step, end))) for at in range(start, end, step)]


def peak(intervals: Sequence[Interval], start: int, end: int) -> tuple[int, int | None]:
    """The highest level over `[start, end)` and the first moment it is reached (None if 0)."""
    high, _ = bucket(intervals, start, end)
    if high == 0:
        return 0, None
    moments = sorted(
        {start}
        | {a for a, _ in intervals if start < a < end}
        | {b for _, b in intervals if b is not None}
    )
    first = next(at for at in moments if start <= at < end and level(intervals, at) == high)
    return high, first
