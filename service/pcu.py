"""Peak-concurrent-user (PCU) accounting: arithmetic on agents' active intervals (pure).

An agent holds a PCU slot over `[active_from, active_until)`, open-ended while it is active (an
open interval counts in every moment after its start, future included). The concurrency `c(t)`
is the number of intervals containing `t`: a step function that changes only at interval
edges, +1 at a start and -1 at an end, both at Agora's event times. Everything here works on
those edges, in integer microseconds since the Unix epoch (PostgreSQL's precision), so every sum
is exact and the database and this module agree to the last microsecond.

Theory of operation
-------------------
A `Span` summarises the edges inside `[start, end)` relative to the level just before `start`:
its net `delta`, the highest relative level it reaches (`peak`) and the integral of the relative
level over the span (`area`, in level·µs). Summaries of adjacent spans combine exactly
(`Span.then`), which is what lets the database keep one summary per app and minute
(`pcu_minute`, maintained in the ingest transaction) and answer a month of buckets by adding
~43,000 minute summaries instead of sweeping ~2,000,000 edges.

A series over `[start, end)` in steps cuts each bucket into pieces (`pieces()`): the whole
minutes inside it (read from the rollup) and, where a bucket edge is not on a minute boundary,
the partial minutes at its head and tail (summarised from the agents' edges themselves).
`fold()` walks the pieces from the level just before `start` and answers each bucket's exact
maximum and time-weighted average.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Final

US_PER_S: Final = 1_000_000
GRAIN_US: Final = 60 * US_PER_S  # the rollup's grain: one minute
_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)


def to_us(value: datetime) -> int:
    """Microseconds since the Unix epoch (exact, unlike `timestamp()`)."""
    delta = value - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * US_PER_S + delta.microseconds


def from_us(value: int) -> datetime:
    return _EPOCH + timedelta(microseconds=value)


def floor_grain(at: int) -> int:
    return at - at % GRAIN_US


def ceil_grain(at: int) -> int:
    return -floor_grain(-at)


@dataclass(frozen=True, slots=True)
class Span:
    """The edges inside `[start, end)`, relative to the level just before `start`."""

    start: int
    end: int
    delta: int = 0  # level at the end minus level before the start
    peak: int = 0  # highest relative level reached inside the span
    area: int = 0  # integral of the relative level over the span, level·µs

    def then(self, after: Span) -> Span:
        """This span followed by the adjacent `after` as one span."""
        return Span(
            self.start,
            after.end,
            delta=self.delta + after.delta,
            peak=max(self.peak, self.delta + after.peak),
            area=self.area + self.delta * (after.end - after.start) + after.area,
        )


def summarise(edges: Iterable[tuple[int, int]], start: int, end: int) -> Span:
    """The `Span` of `(at, delta)` edges; edges outside `[start, end)` are ignored."""
    by_time: dict[int, int] = {}
    for at, delta in edges:
        if start <= at < end:
            by_time[at] = by_time.get(at, 0) + delta
    level, area = 0, 0
    # The level just before the first edge is reached inside the span unless that edge is at
    # `start` itself (then the span begins at the level after it).
    peak = 0 if start not in by_time else -math.inf
    for at in sorted(by_time):
        level += by_time[at]
        peak = max(peak, level)
        area += by_time[at] * (end - at)
    return Span(start, end, delta=level, peak=int(peak), area=area)


def edges(intervals: Iterable[tuple[int, int | None]]) -> list[tuple[int, int]]:
    """The +1/-1 edges of `[from, until)` intervals (`until` None: still active)."""
    out: list[tuple[int, int]] = []
    for active_from, active_until in intervals:
        out.append((active_from, 1))
        if active_until is not None:
            out.append((active_until, -1))
    return out


@dataclass(frozen=True, slots=True)
class Piece:
    """Part of one bucket: whole rollup minutes (`raw` False) or edges read one by one."""

    bucket: int
    start: int
    end: int
    raw: bool


@dataclass(frozen=True, slots=True)
class Point:
    """One bucket of a series: exact maximum and time-weighted average concurrency."""

    start: int
    end: int
    max: int
    area: int

    @property
    def avg(self) -> float:
        return self.area / (self.end - self.start)


def buckets(start: int, end: int, step: int) -> list[tuple[int, int]]:
    """`[start, end)` cut every `step` µs; the last bucket ends at `end`."""
    return [(at, min(at + step, end)) for at in range(start, end, step)]


def pieces(grid: Sequence[tuple[int, int]]) -> list[Piece]:
    """Each bucket as its partial head minute, its whole minutes, and its partial tail minute."""
    out: list[Piece] = []
    for index, (start, end) in enumerate(grid):
        first, last = ceil_grain(start), floor_grain(end)
        if first >= last:
            out.append(Piece(index, start, end, raw=True))
            continue
        if start < first:
            out.append(Piece(index, start, first, raw=True))
        out.append(Piece(index, first, last, raw=False))
        if last < end:
            out.append(Piece(index, last, end, raw=True))
    return out


def fold(
    level: int,
    grid: Sequence[tuple[int, int]],
    parts: Sequence[Piece],
    spans: Mapping[int, Span],
) -> list[Point]:
    """Each bucket's maximum and area, from the level just before the first bucket.

    `spans` maps a piece's position in `parts` to its summary; a missing piece has no edges.
    """
    highs: list[int | None] = [None] * len(grid)
    areas = [0] * len(grid)
    for position, part in enumerate(parts):
        span = spans.get(position) or Span(part.start, part.end)
        high = highs[part.bucket]
        highs[part.bucket] = level + span.peak if high is None else max(high, level + span.peak)
        areas[part.bucket] += level * (part.end - part.start) + span.area
        level += span.delta
    return [
        Point(start, end, max=high if high is not None else level, area=area)
        for (start, end), high, area in zip(grid, highs, areas, strict=True)
    ]


def first_reach(level: int, spans: Sequence[Span], value: int) -> tuple[int, int] | None:
    """The first span in which the level reaches `value`, and the level just before it."""
    for index, span in enumerate(spans):
        if level + span.peak >= value:
            return index, level
        level += span.delta
    return None


def first_moment(level: int, span_edges: Iterable[tuple[int, int]], start: int, value: int) -> int:
    """The first moment at or after `start` when the level reaches `value`.

    `level` is the level just before `start`; `span_edges` are the `(at, delta)` edges from
    `start` on (an edge at `start` itself applies at `start`).
    """
    by_time: dict[int, int] = {start: 0}
    for at, delta in span_edges:
        by_time[at] = by_time.get(at, 0) + delta
    for at in sorted(by_time):
        level += by_time[at]
        if level >= value:
            return at
    raise ValueError("the level never reaches the value in these edges")


@dataclass(frozen=True, slots=True, kw_only=True)
class Limits:
    """An app's cap and the fraction of it that raises a warning."""

    cap: int
    warn_fraction: float = 0.8


class Threshold(StrEnum):
    """How `current` stands against the cap; upward moves are crossings."""

    NORMAL = "normal"
    WARNING = "warning"
    CAP = "cap"


_ORDER: Final = (Threshold.NORMAL, Threshold.WARNING, Threshold.CAP)


def threshold(current: int, *, cap: int, warn_fraction: float) -> Threshold:
    """`cap` at or over the cap, `warning` at or over `warn_fraction` of it, else `normal`."""
    if current >= cap:
        return Threshold.CAP
    if current >= warn_fraction * cap:
        return Threshold.WARNING
    return Threshold.NORMAL


def crossings(before: Threshold, after: Threshold) -> list[Threshold]:
    """The thresholds crossed upwards going from `before` to `after` (lowest first)."""
    low, high = _ORDER.index(before), _ORDER.index(after)
    return list(_ORDER[low + 1 : high + 1])
