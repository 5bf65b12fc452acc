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


def advance(
    held: Sequence[Turns], hours: list[bytes], edges: Sequence[int]
) -> tuple[list[Turns], list[Any]]:
    """The figures of the buckets between `edges` (µs), complete once `hours` (`by_turn`, the
    hours after those `held` came from) are added to `held`, and what the next buckets may take
    (the turns from the last edge on, as views of what was decoded: nothing is copied twice)."""
    # (The hours follow one another: decoded at once, as one run of turns in end-time order.)
    runs = [*held, Turns.decode(b"".join(hours))]
    kept = [run.since(edges[-1]) for run in runs]
    return [run for run in kept if len(run.end_us)], buckets(runs, edges)


def buckets(runs: Sequence[Turns], edges: Sequence[int]) -> list[Any]:
    """The row of figures (as `latency._FIGURES`) of each bucket [edges[i], edges[i + 1]) of the
    turns of `runs` (one after the other in end-time order), None for one without turns:
    nearest-rank as PostgreSQL's `percentile_disc` ranks it (the value at rank ⌈p·n⌉, at least
    1, of the sorted figures, p and n as doubles)."""
    bounds_us = np.asarray(edges, dtype=np.int64)
    counts = sum(
        (np.diff(np.searchsorted(run.end_us, bounds_us)) for run in runs),
        np.zeros(len(edges) - 1, dtype=np.int64),
    ).tolist()
    rows: list[Any] = [[None, count] if count else None for count in counts]
    for figure, (_, fractions) in enumerate(FRACTIONS):
        # Per run, where each edge falls among the turns with this figure.
        parts = [
            (values, np.searchsorted(ends, bounds_us).tolist())
            for ends, values in (run.by_figure[figure] for run in runs)
        ]
        for index, row in enumerate(rows):
            if row is None:
                continue
            pieces = [
                values[bounds[index] : bounds[index + 1]]
                for values, bounds in parts
                if bounds[index] < bounds[index + 1]
            ]
            if not pieces:
                row.append(None)
                continue
            # (A sort of a few thousand int32 takes about as long as a selection of four ranks,
            # with vector instructions where the CPU has them, and no copy beforehand.)
            chosen = np.sort(pieces[0] if len(pieces) == 1 else np.concatenate(pieces))
            n = len(chosen)
            row.append([int(chosen[max(1, math.ceil(p * n)) - 1]) for p in fractions])
    return rows


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
        lacks = turns["lacks"]
        figures = []
        for bit, (name, _) in enumerate(FRACTIONS):
            values = turns[name].astype(np.int32)
            lacking = lacks & (1 << bit)
            if lacking.any():
                has = lacking == 0
                figures.append((end_us[has], values[has]))
            else:  # (usually: every turn has every figure)
                figures.append((end_us, values))
        return cls(end_us, tuple(figures))

    def since(self, start_us: int) -> Turns:
        """The turns ending at `start_us` or later (views, not copies)."""
        return Turns(
            self.end_us[np.searchsorted(self.end_us, start_us) :],
            tuple(
                (ends[at:], values[at:])
                for ends, values in self.by_figure
                for at in [int(np.searchsorted(ends, start_us))]
            ),
        )
