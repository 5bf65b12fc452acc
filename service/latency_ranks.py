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

# Each figure of a turn (in the order `by_turn` holds them, which is also their bit among the
# flags and in a turn's byte of figures it lacks) and the fractions a bucket answers.
FRACTIONS: Final = (("e2e", (0.5, 0.9, 0.99, 1.0)), *((s, (0.5, 0.9)) for s in events.STAGES))
Array = np.ndarray[Any, Any]


def advance(
    held: Sequence[Turns], hours: Sequence[tuple[int, bytes]], edges: Sequence[int]
) -> tuple[list[Turns], list[Any]]:
    """The figures of the buckets between `edges` (µs), complete once `hours` (each its start in
    µs and its `by_turn`, the hours after those `held` came from) are added to `held`, and what
    the next buckets may take (the turns from the last edge on, as views of what was decoded:
    nothing is copied twice)."""
    # (The hours follow one another: one run of turns in end-time order.)
    runs = [*held, Turns.decode(hours)]
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
    def decode(cls, hours: Sequence[tuple[int, bytes]]) -> Turns:
        """The turns of `hours` (each its start in µs and its `by_turn`, as `latency._PACKED`
        writes it), one hour after the other."""
        ends: list[Array] = []
        lacks: list[Array | None] = []  # per hour, its turns' bytes of figures lacking, if any
        columns: list[list[Array]] = [[] for _ in FRACTIONS]
        for start_us, packed in hours:
            flags = packed[1]
            lacking = flags >> 4 & 1
            widths = [2 if flags >> bit & 1 else 4 for bit in range(len(FRACTIONS))]
            n = (len(packed) - 2) // (4 + lacking + sum(widths))
            ends.append(np.frombuffer(packed, ">u4", n, 2).astype(np.int64) + start_us)
            at = 2 + 4 * n
            lacks.append(np.frombuffer(packed, "u1", n, at) if lacking else None)
            at += n * lacking
            for column, width in zip(columns, widths, strict=True):
                column.append(np.frombuffer(packed, ">u2" if width == 2 else ">i4", n, at))
                at += width * n
        end_us = np.concatenate(ends or [np.empty(0, np.int64)])
        # (Usually no turn lacks a figure, and no hour holds a byte per turn for it.)
        lacks_of = None
        if any(found is not None for found in lacks):
            lacks_of = np.concatenate(
                [
                    np.zeros(len(e), np.uint8) if found is None else found
                    for found, e in zip(lacks, ends, strict=True)
                ]
            )
        figures = []
        for bit, column in enumerate(columns):
            values = np.concatenate(column or [np.empty(0, np.int32)]).astype(np.int32)
            has = None if lacks_of is None else (lacks_of & (1 << bit)) == 0
            if has is None or has.all():
                figures.append((end_us, values))
            else:
                figures.append((end_us[has], values[has]))
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
