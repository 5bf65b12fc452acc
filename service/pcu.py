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
(`pcu_minute`, maintained in the ingest transaction, with the minute's edges beside it) and
answer a month of buckets by adding ~43,000 minute rows instead of sweeping ~2,000,000 edges.

Each hour with edges also has a rollup row (`pcu_hour`) holding, for every minute position k,
the summary of the hour's first k minutes and the highest level from minute k to the hour's end,
so any run of whole minutes that starts or ends on an hour boundary is summarised in O(1).

A series over `[start, end)` in steps cuts each bucket into pieces (`pieces()`): parts of
minutes where a bucket edge is not on a minute boundary (read edge by edge from the minute's
row), whole hours and hour prefixes or suffixes (from hour rows), and whole minutes strictly
inside an hour (from minute rows). A month in hourly buckets, from any second, is ~2,200 pieces
whatever the number of agents. `fold()` walks the pieces from the level just before `start` and
answers each bucket's exact maximum and time-weighted average.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Final, Literal

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


HOUR_US: Final = 60 * GRAIN_US
MINUTES_PER_HOUR: Final = 60

PieceKind = Literal["edges", "minutes", "hour", "live"]


@dataclass(frozen=True, slots=True)
class Piece:
    """Part of one bucket, and how the database summarises it.

    `edges`: part of one minute, from the edges stored in its rollup row; `minutes`: whole
    minutes strictly inside one hour, from their rollup rows; `hour`: whole minutes of one hour
    that start at the hour or end with it (or the whole hour), from the hour's prefix and suffix
    summaries in O(1).
    """

    bucket: int
    start: int
    end: int
    kind: PieceKind


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


def pieces(grid: Sequence[tuple[int, int]], *, dirty: Collection[int] = ()) -> list[Piece]:
    """Each bucket cut into pieces, in time order (see `Piece`).

    `dirty` are minutes (their start, µs) with changes not yet folded into the rollup: each part
    of a bucket inside one is a piece of its own, `live`, summarised from the agents themselves;
    no other piece covers them.
    """
    out: list[Piece] = []
    for index, (start, end) in enumerate(grid):
        first, last = ceil_grain(start), floor_grain(end)
        if first >= last:  # no whole minute: one piece per minute touched
            cuts = sorted({start, end, *range(first, end, GRAIN_US)})
            out += [Piece(index, a, b, "edges") for a, b in itertools.pairwise(cuts) if a < b]
            continue
        if start < first:
            out.append(Piece(index, start, first, "edges"))
        hours = range(-(-first // HOUR_US) * HOUR_US, last, HOUR_US)
        cuts = sorted({first, last, *hours})
        for a, b in itertools.pairwise(cuts):
            touches = a % HOUR_US == 0 or b % HOUR_US == 0
            out.append(Piece(index, a, b, "hour" if touches else "minutes"))
        if last < end:
            out.append(Piece(index, last, end, "edges"))
    return _around(out, set(dirty)) if dirty else out


def _around(parts: list[Piece], dirty: set[int]) -> list[Piece]:
    """`parts` with every dirty minute cut out as a `live` piece of its own."""
    out: list[Piece] = []
    for part in parts:
        inside = sorted(m for m in dirty if m < part.end and m + GRAIN_US > part.start)
        if not inside:
            out.append(part)
            continue
        cursor = part.start
        for minute in inside:
            live_start, live_end = max(minute, part.start), min(minute + GRAIN_US, part.end)
            if cursor < live_start:
                out.append(_whole_minutes(part.bucket, cursor, live_start))
            out.append(Piece(part.bucket, live_start, live_end, "live"))
            cursor = live_end
        if cursor < part.end:
            out.append(_whole_minutes(part.bucket, cursor, part.end))
    return out


def _whole_minutes(bucket: int, start: int, end: int) -> Piece:
    """A clean run of whole minutes left by cutting out dirty ones, as `pieces` would read it."""
    touches = start % HOUR_US == 0 or end % HOUR_US == 0
    same_hour = start // HOUR_US == (end - 1) // HOUR_US
    return Piece(bucket, start, end, "hour" if touches and same_hour else "minutes")


@dataclass(frozen=True, slots=True)
class HourPrefix:
    """An hour's rollup row: per minute position k (0..60), levels relative to the hour start.

    `cum[k]`: the level before minute k; `area[k]`: the area over minutes [0, k); `pmax[k]`: the
    highest level over minutes [0, k) (k >= 1); `smax[k]`: the highest over [k, 60) (k < 60).
    """

    cum: tuple[int, ...]
    area: tuple[int, ...]
    pmax: tuple[int, ...]
    smax: tuple[int, ...]


def hour_prefix(minutes: Mapping[int, Span]) -> HourPrefix:
    """The hour row from its minutes' spans by position (a minute without edges is absent)."""
    cum, area, highs = [0], [0], []
    for k in range(MINUTES_PER_HOUR):
        span = minutes.get(k) or Span(0, GRAIN_US)
        highs.append(cum[k] + span.peak)
        area.append(area[k] + cum[k] * GRAIN_US + span.area)
        cum.append(cum[k] + span.delta)
    pmax = [0, *itertools.accumulate(highs, max)]
    smax = [*reversed(list(itertools.accumulate(reversed(highs), max))), 0]
    return HourPrefix(tuple(cum), tuple(area), tuple(pmax), tuple(smax))


def hour_span(row: HourPrefix, hour: int, a: int, b: int) -> Span:
    """Minutes [a, b) of the hour starting at `hour` (a == 0 or b == 60), relative to the level
    just before minute a."""
    high = row.pmax[b] if a == 0 else row.smax[a]
    return Span(
        hour + a * GRAIN_US,
        hour + b * GRAIN_US,
        delta=row.cum[b] - row.cum[a],
        peak=high - row.cum[a],
        area=row.area[b] - row.area[a] - row.cum[a] * (b - a) * GRAIN_US,
    )


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


def first_reach(
    level: int, parts: Sequence[Piece], spans: Mapping[int, Span], value: int
) -> tuple[int, int] | None:
    """The first piece in which the level reaches `value`, and the level just before it."""
    for position, part in enumerate(parts):
        span = spans.get(position) or Span(part.start, part.end)
        if level + span.peak >= value:
            return position, level
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


def margin(limits: Limits) -> int:
    """How far below a threshold the level must fall before it is announced again: 10 % of the
    cap, at least one agent."""
    return max(1, math.ceil(limits.cap / 10))


def settle(previous: Threshold, current: int, limits: Limits) -> Threshold:
    """The level `current` puts an app at, from `previous`, with hysteresis: upwards as soon as
    a threshold is reached; downwards only once the count fell `margin()` below the threshold
    held, so a count hovering at the cap is announced once, not at every step."""
    plain = threshold(current, cap=limits.cap, warn_fraction=limits.warn_fraction)
    if _ORDER.index(plain) >= _ORDER.index(previous):
        return plain
    held = previous
    while held != Threshold.NORMAL and current <= _value(held, limits) - margin(limits):
        held = _ORDER[_ORDER.index(held) - 1]
    return held


def _value(level: Threshold, limits: Limits) -> float:
    """The count at which `level` is reached."""
    if level == Threshold.CAP:
        return limits.cap
    return limits.warn_fraction * limits.cap if level == Threshold.WARNING else 0


def crossings(before: Threshold, after: Threshold) -> list[Threshold]:
    """The thresholds crossed upwards going from `before` to `after` (lowest first)."""
    low, high = _ORDER.index(before), _ORDER.index(after)
    return list(_ORDER[low + 1 : high + 1])
