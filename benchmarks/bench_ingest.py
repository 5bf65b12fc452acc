"""Webhook ingest against the targets of issue 12, in one run: rate at full load as a fraction of a
fixed pgbench ceiling, CPU per notification, latency at half load and on one connection, and a
101/102-only load, for `serve --workers 1` and `--workers 2`.

One throw-away embedded PostgreSQL with fsync on (or BENCH_DATABASE_URL's server), a fresh
database at the current schema for each measurement:

1. Ceiling (`ceiling.py`): pgbench runs a FIXED minimal durable transaction per notification
   (the raw notification under its unique key, an agent upsert, one transition, COMMIT), prepared,
   with as many clients as the load has connections. It runs first and last; the ratios use the
   mean of the two, and the pair shows how much the shared machine moved in between.
2. For each receiver (`receivers.py`: the service with 1 and 2 worker processes, then Agora's
   sample receiver if BENCH_AGORA_SAMPLE is set), fed by `loadgen` from its own process over
   loopback with the sessions of `traffic.py` (5 apps; per agent 101, 111, 110, 112, 102, 103,
   about 300 agents in flight, so starts of later agents interleave with ends of earlier ones):
   - warm-up: WARMUP notifications, closed loop, 32 connections (its rate sizes what follows);
   - full load: closed loop, 32 connections, FULL_S seconds (requests are prepared for half
     again the warm-up's rate; what was not sent goes first in the next phase). CPU of the
     service's processes and of PostgreSQL's (the postmaster and all it forked) is read from
     /proc before and after, after waiting for both to go quiet, so deferred work counts; the
     load generator's CPU and what other processes on the machine used are reported beside it;
   - half load: open loop at half the full-load rate for HALF_S seconds, 64 connections;
   - one connection alone: SINGLE notifications (FULL_S seconds at most), closed loop;
   - 101/102 pairs: one app, a new agent per pair, the stop about 300 pairs after its start;
     a warm-up, then closed loop, 32 connections, PAIRS_S seconds;
   and every notification sent must be answered 200 and stored exactly once (rows checked).

    .venv/bin/python benchmarks/bench_ingest.py      # BENCH_QUICK=1: a short smoke run

Environment: BENCH_QUICK=1 (smoke run), BENCH_DATABASE_URL (an existing server: its CPU is then
only the benchmark database's backends), BENCH_SERVICE_ENV="NAME=value ..." (extra settings for
`serve`), BENCH_AGORA_SAMPLE=/path/to/recipe-agent-webhooks/server (with its requirements in
server/venv, or BENCH_AGORA_SAMPLE_PYTHON), BENCH_PROFILE=/path/summary.txt (py-spy on
`serve --workers 1` under one more full-load run, summary written there). Prints the figures
and records them in BENCHMARKS.md ("ingest").
"""

from __future__ import annotations

import os
import sys
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks import ceiling, common, cpu, loadgen, profiles, receivers, traffic  # noqa: E402

QUICK = bool(os.environ.get("BENCH_QUICK"))
CONNECTIONS = 32
HALF_CONNECTIONS = 64
WORKER_COUNTS = (1, 2)
APPS = tuple(traffic.App(f"bench-app-{i}", f"bench-secret-{i}") for i in range(1, 6))
IN_FLIGHT = 300  # agents between their first and last notification at any moment
CEILING_S = 5 if QUICK else 20
WARMUP = 1_000 if QUICK else 3_000
FULL_S = 6 if QUICK else 30
HALF_S = 5 if QUICK else 20
SINGLE = 300 if QUICK else 1_500
PAIRS_S = 5 if QUICK else 20
PROFILE_S = 5 if QUICK else 20
MOST = 150_000  # notifications prepared for one phase, at most
TARGETS = {"full": 0.5, "cpu_ms": 0.5, "half_p99_ms": 25.0, "single_p50_ms": 2.0, "pairs": 0.3}


@dataclass(frozen=True, slots=True)
class Run:
    """One phase's load and the CPU the processes under test used for it."""

    result: loadgen.Result
    service_cpu_s: float
    postgres_cpu_s: float | None
    machine_cpu_s: float  # every process on the machine, ours included
    settle_s: float

    @property
    def count(self) -> int:
        return self.result.count

    @property
    def rate(self) -> float:
        return self.result.rate

    def ms_each(self, seconds: float | None) -> float | None:
        return None if seconds is None else seconds * 1000 / self.count

    @property
    def cpu_ms(self) -> float:
        return (self.service_cpu_s + (self.postgres_cpu_s or 0.0)) * 1000 / self.count

    @property
    def others_cores(self) -> float:
        """Cores other processes on the machine used meanwhile (not ours, not the generator's)."""
        ours = self.service_cpu_s + (self.postgres_cpu_s or 0.0) + self.result.cpu_s
        return max(0.0, self.machine_cpu_s - ours) / (self.result.elapsed_s + self.settle_s)


@dataclass(frozen=True, slots=True)
class Figures:
    label: str
    full: Run
    half: Run
    half_rate: float
    single: Run
    pairs: Run
    stored: str


Receiver = receivers.Ledger | receivers.AgoraSample


def main() -> None:
    logs = Path(tempfile.mkdtemp(prefix="bench-ingest-"))
    load_before = common.load_average()
    flushes = [common.flush_ms(Path(tempfile.gettempdir()))]
    with common.server_url(durable=True) as admin_url:
        owned = not os.environ.get("BENCH_DATABASE_URL")
        ceilings = [measure_ceiling(admin_url, "ceiling_first", owned=owned)]
        figures = []
        for workers in WORKER_COUNTS:
            url = common.fresh_database(admin_url, f"ingest_workers_{workers}")
            postgres = cpu.postgres(url, owned=owned)
            directory = logs / f"workers-{workers}"
            directory.mkdir()
            ledger = receivers.Ledger(url=url, workers=workers, apps=APPS, logs=directory)
            figures.append(measure(ledger, postgres, profile=workers == 1))
        sample = agora_sample(logs)
        if sample is not None:
            figures.append(measure(sample, None, profile=False))
        ceilings.append(measure_ceiling(admin_url, "ceiling_last", owned=owned))
    flushes.append(common.flush_ms(Path(tempfile.gettempdir())))
    table, lines = report(ceilings, figures, sampled=sample is not None)
    lines += machine_context(load_before, flushes)
    common.record("ingest", lines, notes=notes(), table=table)


def machine_context(load_before: str, flushes: Sequence[tuple[float, float]]) -> list[str]:
    """On a shared machine: how busy it was, and what a durable commit waited for at least."""
    waits = "; ".join(
        f"{when} p50 {p50:.2f} ms, p99 {p99:.1f} ms"
        for when, (p50, p99) in zip(("before the run", "after"), flushes, strict=True)
    )
    return [
        f"load average before the run: {load_before}",
        f"8 KiB write + fdatasync in the embedded database's filesystem: {waits}",
    ]


def measure_ceiling(admin_url: str, name: str, *, owned: bool) -> ceiling.Ceiling:
    url = common.fresh_database(admin_url, name)
    return ceiling.measure(
        url,
        app_id=APPS[0].app_id,
        body=ceiling_body(),
        clients=CONNECTIONS,
        seconds=CEILING_S,
        postgres=cpu.postgres(url, owned=owned),
    )


def ceiling_body() -> bytes:
    """The notification pgbench stores: the mix's 111 (metrics for a few turns), mid-sized."""
    sample = traffic.Sessions(apps=APPS[:1], kinds=(101, 111), in_flight=1, prefix="PGB")
    return next(n.body for n in sample.take(4, rate=1) if n.event_type == 111)


def agora_sample(logs: Path) -> receivers.AgoraSample | None:
    given = os.environ.get("BENCH_AGORA_SAMPLE")
    if not given:
        print("Agora sample: skipped (set BENCH_AGORA_SAMPLE to its server/ directory)")
        return None
    return receivers.AgoraSample(server_dir=Path(given), logs=logs)


def measure(
    receiver: Receiver, postgres: cpu.Tree | cpu.Backends | None, *, profile: bool
) -> Figures:
    """Every phase against one receiver, which is stopped afterwards."""
    bench = Bench(receiver, Meters(receiver.tree.seconds, postgres.seconds if postgres else None))
    mix = traffic.Sessions(apps=APPS, kinds=traffic.MIX, in_flight=IN_FLIGHT, prefix="MIX")
    pairs = traffic.Sessions(apps=APPS[:1], kinds=traffic.PAIRS, in_flight=IN_FLIGHT, prefix="PAIR")
    try:
        warm = bench.run(mix, WARMUP, pace=500)
        full = bench.run(mix, planned(warm, FULL_S), pace=warm.rate, seconds=FULL_S)
        half_rate = full.rate / 2
        half = bench.run(mix, int(half_rate * HALF_S) + 1, pace=half_rate, rate=half_rate)
        single = bench.run(mix, SINGLE, pace=100, connections=1, seconds=FULL_S)
        warm = bench.run(pairs, 4 * IN_FLIGHT, pace=full.rate)
        measured = bench.run(pairs, planned(warm, PAIRS_S), pace=warm.rate, seconds=PAIRS_S)
        if profile and os.environ.get("BENCH_PROFILE"):
            profiled(bench, mix, planned(full, PROFILE_S), pace=full.rate)
        stored = receiver.check(bench.sent)
    finally:
        receiver.stop()
    return Figures(receiver.label, full, half, half_rate, single, measured, stored)


@dataclass(frozen=True, slots=True)
class Meters:
    service: Callable[[], float]
    postgres: Callable[[], float] | None

    def read(self) -> tuple[float, float | None, float]:
        return self.service(), self.postgres() if self.postgres else None, cpu.machine_seconds()

    def total(self) -> float:
        return self.service() + (self.postgres() if self.postgres else 0.0)


def planned(previous: Run, seconds: float) -> int:
    """Enough notifications for `seconds` at half again the rate seen before (a run stops on time)."""
    return max(500, min(MOST, int(1.5 * previous.rate * seconds)))


class Bench:
    """One receiver under load, phase after phase; `sent` is everything it was sent."""

    def __init__(self, receiver: Receiver, meters: Meters) -> None:
        self.receiver, self.meters = receiver, meters
        self.sent: list[traffic.Notification] = []

    def run(
        self,
        stream: traffic.Sessions,
        count: int,
        *,
        pace: float,
        connections: int = CONNECTIONS,
        rate: float | None = None,
        seconds: float | None = None,
    ) -> Run:
        """Send `count` of `stream` (timed for `pace`/s): closed loop, stopping after `seconds`,
        or open loop at `rate`. CPU is read before and once all is quiet after."""
        batch = stream.take(count, rate=pace)
        requests = receivers.requests(self.receiver, batch)
        before = self.meters.read()
        if rate is None:
            result = loadgen.in_process(
                loadgen.closed,
                self.receiver.port,
                requests,
                concurrency=connections,
                seconds=seconds,
            )
        else:
            result = loadgen.in_process(
                loadgen.open_loop,
                self.receiver.port,
                requests,
                rate=rate,
                connections=HALF_CONNECTIONS,
            )
        settle_s = cpu.settle(self.meters.total)
        after = self.meters.read()
        self.sent += batch[: result.count]
        stream.put_back(batch[result.count :])
        if result.failures:
            raise SystemExit(f"{self.receiver.label}: answers {result.statuses}")
        postgres = None if after[1] is None or before[1] is None else after[1] - before[1]
        return Run(result, after[0] - before[0], postgres, after[2] - before[2], settle_s)


def profiled(bench: Bench, stream: traffic.Sessions, count: int, *, pace: float) -> None:
    """One more full-load run under py-spy; the summary goes to BENCH_PROFILE."""
    target = Path(os.environ["BENCH_PROFILE"])
    raw = Path(tempfile.mkdtemp(prefix="bench-profile-")) / "serve.raw"
    recording = profiles.Recording(bench.receiver.tree.root, out=raw)
    under = bench.run(stream, count, pace=pace, seconds=PROFILE_S)
    head = (
        f"py-spy, {bench.receiver.label}, full-load mix under the profiler:"
        f" {under.rate:,.0f} notifications/s\n"
    )
    target.write_text(head + recording.stop())
    print(f"profile: summary in {target}, py-spy's raw stacks in {raw}")


def report(
    ceilings: Sequence[ceiling.Ceiling],
    figures: Sequence[Figures],
    *,
    sampled: bool,
) -> tuple[list[str], list[str]]:
    bar = sum(c.rate for c in ceilings) / len(ceilings)
    table = _table(bar, figures)
    first, last = ceilings[0], ceilings[-1]
    lines = [
        f"**ceiling** (fixed script, {CONNECTIONS} clients, prepared, fsync on, fresh database):"
        f" {first.rate:,.0f}/s first, {last.rate:,.0f}/s last, **{bar:,.0f}/s** used;"
        f" {first.latency_ms:.1f} ms per transaction; PostgreSQL CPU"
        f" {first.postgres_cpu_ms:.3f} ms, pgbench {first.pgbench_cpu_ms:.3f} ms per notification",
    ]
    for figure in figures:
        lines += _details(bar, figure)
    if not sampled:
        lines.append("Agora sample: skipped (BENCH_AGORA_SAMPLE not set)")
    return table, lines


def _mark(met: bool) -> str:
    return "✓" if met else "✗"


def _table(bar: float, figures: Sequence[Figures]) -> list[str]:
    rows = [
        ["", "target", *(f.label for f in figures)],
        ["---"] * (2 + len(figures)),
        ["full load, mix, 32 connections", f">= {TARGETS['full']} x ceiling"],
        ["CPU per notification, service + PostgreSQL", f"<= {TARGETS['cpu_ms']} ms"],
        ["half load (open loop): p99 (p50)", f"p99 < {TARGETS['half_p99_ms']:.0f} ms"],
        ["one connection: p50", f"<= {TARGETS['single_p50_ms']:.0f} ms"],
        ["101/102 pairs, one app, 32 connections", f">= {TARGETS['pairs']} x ceiling"],
        ["(other processes on the machine during the full load)", ""],
    ]
    for f in figures:
        full, pairs = f.full.result.rate / bar, f.pairs.result.rate / bar
        half = f.half.result.latencies_ms
        p99, p50 = common.percentile(half, 0.99), common.percentile(half, 0.5)
        single = common.percentile(f.single.result.latencies_ms, 0.5)
        rows[2].append(
            f"{f.full.result.rate:,.0f}/s = **{full:.2f} x** {_mark(full >= TARGETS['full'])}"
        )
        rows[3].append(f"**{f.full.cpu_ms:.2f} ms** {_mark(f.full.cpu_ms <= TARGETS['cpu_ms'])}")
        rows[4].append(f"**{p99:.1f} ms** ({p50:.1f} ms) {_mark(p99 < TARGETS['half_p99_ms'])}")
        rows[5].append(f"**{single:.2f} ms** {_mark(single <= TARGETS['single_p50_ms'])}")
        rows[6].append(
            f"{f.pairs.result.rate:,.0f}/s = **{pairs:.2f} x** {_mark(pairs >= TARGETS['pairs'])}"
        )
        rows[7].append(f"{f.full.others_cores:.2f} cores")
    return ["| " + " | ".join(row) + " |" for row in rows]


def _details(bar: float, f: Figures) -> list[str]:
    full, pairs = f.full, f.pairs
    lines = [
        f"{f.label} full load: {full.count:,} notifications in {full.result.elapsed_s:.1f} s,"
        f" {full.result.rate:,.0f}/s = {full.result.rate / bar:.2f} x ceiling; {latency(full)}",
        f"{f.label} full-load CPU per notification: {_cpu(full)}",
        f"{f.label} half load (open loop at {f.half_rate:,.0f}/s, {f.half.count:,} notifications,"
        f" {HALF_CONNECTIONS} connections): {latency(f.half)}",
        f"{f.label} one connection ({f.single.count:,} notifications): {latency(f.single)}",
        f"{f.label} 101/102 pairs: {pairs.count:,} notifications, {pairs.result.rate:,.0f}/s ="
        f" {pairs.result.rate / bar:.2f} x ceiling; {latency(pairs)}; CPU per notification {_cpu(pairs)}",
        f.stored,
    ]
    return lines


def _cpu(r: Run) -> str:
    parts = [f"**{r.cpu_ms:.2f} ms** = service {r.ms_each(r.service_cpu_s):.2f} ms"]
    if r.postgres_cpu_s is not None:
        parts.append(f" + PostgreSQL {r.ms_each(r.postgres_cpu_s):.2f} ms")
    parts.append(f"; load generator {r.ms_each(r.result.cpu_s):.2f} ms")
    parts.append(f"; other processes on the machine {r.others_cores:.2f} cores meanwhile")
    if r.settle_s > 1:
        parts.append(f"; quiet {r.settle_s:.1f} s after the last answer")
    return "".join(parts)


def latency(r: Run) -> str:
    return common.latencies(r.result.latencies_ms)


def notes() -> list[str]:
    return [
        "The ceiling is a FIXED pgbench script (`benchmarks/ceiling.py`), not the service's"
        " statements: per notification, the raw notification stored under its unique key"
        " (app_id, notice_id), an agent upsert, one transition, COMMIT; prepared, as many clients"
        " as the load's connections, fsync on, a fresh database at the current schema. It runs"
        " first and last; ratios use the mean.",
        "Load (`benchmarks/traffic.py`, `benchmarks/loadgen.py`, its own process, loopback,"
        " keep-alive): 5 apps; per agent 101, 111 (3 turns), 110 (2 errors), 112 (3 turns,"
        " segmented latency), 102, 103 (5-item transcript), with labels, names and channels; about"
        f" {IN_FLIGHT} agents in flight. CPU is user + system time from /proc of the service's"
        " processes and of PostgreSQL's (postmaster and all its children), read before and after"
        " each phase once both are quiet again. Every notification is checked stored exactly once.",
    ]


if __name__ == "__main__":
    main()
