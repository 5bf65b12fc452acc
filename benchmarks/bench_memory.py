"""Memory: RSS of each web worker before and after a 5-minute soak at half load (target: flat
within 10%).

`convoai-ledger serve --workers 2` on a throw-away embedded PostgreSQL (or BENCH_DATABASE_URL's
server); a short closed-loop run finds the full-load rate and warms the workers up (RSS "before"
is read after it), then `loadgen` sends unique signed 101/111/102 at half that rate for
SOAK_SECONDS (BENCH_QUICK=1: 30 s) and RSS is read again.

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

from benchmarks import bench_ingest, common, loadgen  # noqa: E402
from tests.processes import ServiceProcess, free_port  # noqa: E402

SOAK_SECONDS = 30 if os.environ.get("BENCH_QUICK") else 300
LIMIT = 0.10


def main() -> None:
    with common.server_url(durable=True) as admin_url:
        url = common.fresh_database(admin_url, "bench_memory")
        lines = soak(url)
    common.record("memory", lines)


def soak(url: str) -> list[str]:
    port = free_port()
    env = bench_ingest.service_env(url, port)
    logs = Path(tempfile.mkdtemp(prefix="bench-memory-"))
    warmup = bench_ingest.requests(2_000, prefix="warm")
    service = ServiceProcess(["serve", "--workers", "2"], env, logs / "serve.log")
    try:
        service.wait_ready()
        workers = worker_pids(service.process.pid, expected=2)
        warm = loadgen.in_process(loadgen.closed, port, warmup, concurrency=32)
        bench_ingest.check(warm, "warm-up")
        rate = warm.rate / 2
        count = int(rate * SOAK_SECONDS / 3) + 100
        load = bench_ingest.requests(count, prefix="soak", per_second=rate / 3)
        before = {pid: rss_mib(pid) for pid in workers}
        started = time.monotonic()
        soaked = loadgen.in_process(loadgen.open_loop, port, load, rate=rate, connections=64)
        bench_ingest.check(soaked, "soak")
        elapsed = time.monotonic() - started
        after = {pid: rss_mib(pid) for pid in workers}
    finally:
        service.terminate()
    lines = [
        f"soak: {len(load):,} notifications at {rate:,.0f}/s (half of the warm-up's"
        f" {warm.rate:,.0f}/s) for {elapsed:.0f} s, all answered 200;"
        f" {bench_ingest.latency(soaked)}"
    ]
    for i, pid in enumerate(workers, 1):
        change = (after[pid] - before[pid]) / before[pid]
        verdict = "flat" if abs(change) <= LIMIT else "NOT flat"
        lines.append(
            f"web worker {i}: RSS {before[pid]:.1f} MiB before, {after[pid]:.1f} MiB after"
            f" ({change:+.1%}, {verdict} within {LIMIT:.0%})"
        )
    return lines


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
