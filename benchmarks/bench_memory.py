"""Memory: RSS of each web worker before and after a 5-minute soak at half load (target: flat
within 10%).

`convoai-ledger serve --workers 2` on a throw-away embedded PostgreSQL (or BENCH_DATABASE_URL's
server); a short closed-loop run finds the full-load rate and warms the workers up (RSS "before"
is read after it), then `loadgen` sends the ingest benchmark's session mix (`traffic.py`, five
apps) at half that rate for SOAK_SECONDS (BENCH_QUICK=1: 30 s) and RSS is read again.

Prints the figures and records them in BENCHMARKS.md ("memory").
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks import bench_ingest, common, loadgen, receivers, traffic  # noqa: E402

SOAK_SECONDS = 30 if os.environ.get("BENCH_QUICK") else 300
LIMIT = 0.10


def main() -> None:
    with common.server_url(durable=True) as admin_url:
        url = common.fresh_database(admin_url, "bench_memory")
        lines = soak(url)
    common.record("memory", lines)


def soak(url: str) -> list[str]:
    logs = Path(tempfile.mkdtemp(prefix="bench-memory-"))
    mix = traffic.Sessions(
        apps=bench_ingest.APPS, kinds=traffic.MIX, in_flight=bench_ingest.IN_FLIGHT, prefix="SOAK"
    )
    service = receivers.Ledger(url=url, workers=2, apps=bench_ingest.APPS, logs=logs)
    try:
        workers = worker_pids(service.process.process.pid, expected=2)
        warm = send(service, receivers.requests(service, mix.take(2_000, rate=500)))
        rate = warm.rate / 2
        load = receivers.requests(service, mix.take(int(rate * SOAK_SECONDS) + 100, rate=rate))
        before = {pid: rss_mib(pid) for pid in workers}
        started = time.monotonic()
        soaked = send(service, load, rate=rate)
        elapsed = time.monotonic() - started
        after = {pid: rss_mib(pid) for pid in workers}
    finally:
        service.stop()
    lines = [
        f"soak: {len(load):,} notifications at {rate:,.0f}/s (half of the warm-up's"
        f" {warm.rate:,.0f}/s) for {elapsed:.0f} s, all answered 200;"
        f" {common.latencies(soaked.latencies_ms)}"
    ]
    for i, pid in enumerate(workers, 1):
        change = (after[pid] - before[pid]) / before[pid]
        verdict = "flat" if abs(change) <= LIMIT else "NOT flat"
        lines.append(
            f"web worker {i}: RSS {before[pid]:.1f} MiB before, {after[pid]:.1f} MiB after"
            f" ({change:+.1%}, {verdict} within {LIMIT:.0%})"
        )
    return lines


def send(service: receivers.Ledger, load: list[bytes], *, rate: float = 0.0) -> loadgen.Result:
    """Closed loop over 32 connections, or open loop at `rate` over 64; every answer a 200."""
    if rate:
        result = loadgen.in_process(
            loadgen.open_loop, service.port, load, rate=rate, connections=64
        )
    else:
        result = loadgen.in_process(loadgen.closed, service.port, load, concurrency=32)
    if result.failures:
        raise SystemExit(f"answers {result.statuses}")
    return result


def worker_pids(parent: int, *, expected: int, timeout: float = 30.0) -> list[int]:
    """The uvicorn worker processes under `serve --workers N` (children of the supervisor)."""
    deadline = time.monotonic() + timeout
    while True:
        children = Path(f"/proc/{parent}/task/{parent}/children").read_text().split()
        workers = [int(pid) for pid in children if "spawn_main" in cmdline(int(pid))]
        if len(workers) >= expected:
            return workers[:expected]
        if time.monotonic() > deadline:
            raise SystemExit(f"found {len(workers)} web workers, expected {expected}")
        time.sleep(0.1)


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise SystemExit(f"no RSS for process {pid}")


if __name__ == "__main__":
    main()
