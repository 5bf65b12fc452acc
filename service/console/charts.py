"""Charts as SVG geometry, drawn by the server (pure): the PCU chart and turn latency bars.

The templates turn these values into `<svg>` elements; no script draws anything, so a chart is
there without JavaScript and every number in it is escaped text. The PCU chart plots each
bucket's exact maximum as a step area, its time-weighted average as a line, the cap as a dashed
line and the window's peak as a marker at the first moment it was reached.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Final

WIDTH: Final = 960
HEIGHT: Final = 240
LEFT, RIGHT, TOP, BOTTOM = 44, 16, 18, 26
NICE_STEPS: Final = (1, 2, 5, 10, 20, 25, 50, 100, 200, 250, 500, 1000, 2000, 5000, 10_000)


@dataclass(frozen=True, slots=True)
class Tick:
    at: float  # x or y in the drawing
    label: str


@dataclass(frozen=True, slots=True)
class Column:
    """A bucket's hover area, with the figures its tooltip tells."""

    x: float
    width: float
    title: str


@dataclass(frozen=True, slots=True)
class Marker:
    x: float
    y: float
    label: str
    anchor: str  # where the label sits: start or end (kept inside the drawing)
    label_y: float  # above the marker, or below it when the cap line runs there


@dataclass(frozen=True, slots=True, kw_only=True)
class Chart:
    width: int
    height: int
    left: float
    right: float
    top: float
    bottom: float
    area: str  # SVG path of the bucket maxima
    line: str  # SVG polyline points of the averages
    cap_y: float
    cap_label: str
    peak: Marker | None
    x_ticks: Sequence[Tick]
    y_ticks: Sequence[Tick]
    columns: Sequence[Column]


def pcu(
    points: Sequence[Mapping[str, Any]],
    *,
    start: datetime,
    end: datetime,
    step_s: int,
    cap: int,
    peak: Mapping[str, Any],
) -> Chart:
    """The chart of a `queries.pcu_series` answer over `[start, end)` and a `peak` {value, at}."""
    highest = max([cap, peak.get("value") or 0, *(p["max"] for p in points)], default=1)
    y_step = _nice(highest + 1)
    # Room above the highest of cap and peak, for the peak's label.
    y_top = y_step * (highest // y_step + 1)
    span = (end - start).total_seconds()

    def x(at: datetime) -> float:
        return LEFT + (at - start).total_seconds() / span * (WIDTH - LEFT - RIGHT)

    def y(value: float) -> float:
        return HEIGHT - BOTTOM - value / y_top * (HEIGHT - TOP - BOTTOM)

    floor = HEIGHT - BOTTOM
    path = [f"M{LEFT:.1f},{floor:.1f}"]
    line: list[str] = []
    columns: list[Column] = []
    for point in points:
        at = _time(point["at"])
        x0, x1 = x(at), x(min(at + timedelta(seconds=step_s), end))
        path += [f"L{x0:.1f},{y(point['max']):.1f}", f"L{x1:.1f},{y(point['max']):.1f}"]
        line.append(f"{(x0 + x1) / 2:.1f},{y(point['avg']):.1f}")
        columns.append(Column(x0, max(x1 - x0, 0.5), _tooltip(at, step_s, point)))
    path.append(f"L{WIDTH - RIGHT:.1f},{floor:.1f}Z")
    return Chart(
        width=WIDTH,
        height=HEIGHT,
        left=LEFT,
        right=WIDTH - RIGHT,
        top=TOP,
        bottom=floor,
        area=" ".join(path),
        line=" ".join(line),
        cap_y=y(cap),
        cap_label=f"cap {cap}",
        peak=_peak_marker(peak, x=x, y=y, start=start, end=end, cap_y=y(cap)),
        x_ticks=[Tick(x(at), label) for at, label in _time_ticks(start, end)],
        y_ticks=[Tick(y(v), str(v)) for v in range(0, y_top + 1, y_step)],
        columns=columns,
    )


def _peak_marker(
    peak: Mapping[str, Any], *, x: Any, y: Any, start: datetime, end: datetime, cap_y: float
) -> Marker | None:
    if not peak.get("value") or not peak.get("at"):
        return None
    at = max(_time(peak["at"]), start)
    if at >= end:
        return None
    px = x(at)
    anchor = "end" if px > (LEFT + WIDTH - RIGHT) / 2 else "start"
    label = f"peak {peak['value']} at {at:%d %b %H:%M} UTC"
    py = y(peak["value"])
    above = py - 10
    label_y = py + 20 if above < TOP + 10 or abs(above - 4 - cap_y) < 10 else above
    return Marker(px, py, label, anchor, label_y)


def _tooltip(at: datetime, step_s: int, point: Mapping[str, Any]) -> str:
    until = at + timedelta(seconds=step_s)
    return (
        f"{at:%d %b %H:%M} to {until:%H:%M} UTC: at most {point['max']} live,"
        f" {point['avg']:.1f} on average"
    )


def _nice(highest: int) -> int:
    """A tick step giving at most five ticks up to `highest`."""
    return next((step for step in NICE_STEPS if highest / step <= 5), NICE_STEPS[-1])


def _time_ticks(start: datetime, end: datetime) -> list[tuple[datetime, str]]:
    span = end - start
    if span <= timedelta(days=2):
        every, fmt = timedelta(hours=3), "%H:%M"
    elif span <= timedelta(days=10):
        every, fmt = timedelta(days=1), "%a %d"
    else:
        every, fmt = timedelta(days=5), "%d %b"
    epoch = datetime(2000, 1, 1, tzinfo=UTC)
    first = epoch + every * -(-(start - epoch) // every)
    ticks = []
    at = first
    while at < end:
        ticks.append((at, at.strftime(fmt)))
        at += every
    return ticks


def _time(value: Any) -> datetime:
    return value if isinstance(value, datetime) else datetime.fromisoformat(str(value))


@dataclass(frozen=True, slots=True, kw_only=True)
class Bar:
    label: str
    width: float  # share of the longest, 0..1
    value: str
    title: str


def latency_bars(turns: Sequence[Mapping[str, Any]]) -> list[Bar]:
    """One bar per turn with an end-to-end latency, scaled to the slowest."""
    timed = [
        t for t in turns if isinstance(t.get("e2e_latency_ms"), int) and t["e2e_latency_ms"] > 0
    ]
    slowest = max((t["e2e_latency_ms"] for t in timed), default=0)
    return [
        Bar(
            label=f"turn {t['turn_id']}",
            width=t["e2e_latency_ms"] / slowest,
            value=f"{t['e2e_latency_ms']} ms",
            title=f"turn {t['turn_id']}: {t['e2e_latency_ms']} ms end to end",
        )
        for t in timed
    ]
