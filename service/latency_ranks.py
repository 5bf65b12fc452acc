"""Nearest-rank figures of buckets that cut hours, from the hours' turns as `latency_bucket.by_turn`
holds them (`service.latency._from_hours` reads them; numpy, imported on the first such read
rather than by every process at start)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final

import numpy as np

from service import events

# One turn as `by_turn` holds it (`latency._TURN` writes it): `end_at` in µs since the epoch, a
# byte with a bit set for each figure it lacks (e2e, then the stages), the four figures
# (`latency.TURN_BYTES` in all).
TURN: Final = np.dtype(
    [
        ("end_us", ">i8"),
        ("lacks", "u1"),
        ("e2e", ">i4"),
        *((stage, ">i4") for stage in events.STAGES),
    ]
)

# Each figure of a turn (in `TURN` and its bit in `lacks`) and the fractions a bucket answers.
FRACTIONS: Final = (("e2e", (0.5, 0.9, 0.99, 1.0)), *((s, (0.5, 0.9)) for s in events.STAGES))
Array = np.ndarray[Any, Any]


def advance(held: Turns, hours: list[bytes], edges: Sequence[int]) -> tuple[Turns, list[Any]]:
    """The figures of the buckets between `edges` (µs), complete once `hours` (`by_turn`) are
    added to `held`, and the turns the next buckets may take (from the last edge on)."""
    # (The hours follow one another: decoded at once, as one run of turns in end-time order.)
    held = Turns.of([held, Turns.decode(b"".join(hours))])
    return held.since(edges[-1]), held.buckets(edges)


@dataclass(frozen=True, slots=True)
class Turns:
    """Turns in end-time order: their end times, and per figure (`FRACTIONS`) the end times and
    values of those that have it."""

    end_us: Array
    by_figure: tuple[tuple[Array, Array], ...]

    @classmethod
    def decode(cls, by_turn: bytes) -> Turns:
        turns = np.frombuffer(by_turn, dtype=TURN)
        end_us = turns["end_us"].astype(np.int64)
        figures = []
        for bit, (name, _) in enumerate(FRACTIONS):
            has = (turns["lacks"] & (1 << bit)) == 0
            figures.append((end_us[has], turns[name][has].astype(np.int32)))
        return cls(end_us, tuple(figures))

    @classmethod
    def of(cls, parts: list[Turns]) -> Turns:
        """`parts` one after the other."""
        return cls(
            np.concatenate([p.end_us for p in parts] or [np.empty(0, np.int64)]),
            tuple(
                (
                    np.concatenate([p.by_figure[i][0] for p in parts] or [np.empty(0, np.int64)]),
                    np.concatenate([p.by_figure[i][1] for p in parts] or [np.empty(0, np.int32)]),
                )
                for i in range(len(FRACTIONS))
            ),
        )

    def since(self, start_us: int) -> Turns:
        """The turns ending at `start_us` or later."""
        return Turns(
            self.end_us[np.searchsorted(self.end_us, start_us) :],
            tuple(
                (ends[at:], values[at:])
                for ends, values in self.by_figure
                for at in [int(np.searchsorted(ends, start_us))]
            ),
        )

    def buckets(self, edges: Sequence[int]) -> list[Any]:
        """The row of figures (as `latency._FIGURES`) of each bucket [edges[i], edges[i + 1]),
        None for one without turns: nearest-rank as PostgreSQL's `percentile_disc` ranks it (the
        value at rank ⌈p·n⌉, at least 1, of the sorted figures, p and n as doubles)."""
        bounds_us = np.asarray(edges, dtype=np.int64)
        counts = np.diff(np.searchsorted(self.end_us, bounds_us)).tolist()
        rows: list[Any] = [[None, count] if count else None for count in counts]
        for (ends, values), (_, fractions) in zip(self.by_figure, FRACTIONS, strict=True):
            bounds = np.searchsorted(ends, bounds_us).tolist()
            for row, low, high in zip(rows, bounds, bounds[1:], strict=False):
                if row is None:
                    continue
                if low == high:
                    row.append(None)
                    continue
                chosen = values[low:high].copy()
                ranks = [max(1, math.ceil(p * (high - low))) - 1 for p in fractions]
                chosen.partition(ranks)
                row.append([int(chosen[rank]) for rank in ranks])
        return rows
