"""History collection figures: STOPPED → history stored latency, and draining 1,000 stops.

Starts its own embedded PostgreSQL (or uses BENCH_DATABASE_URL), the Agora simulator with 20 ms
added to every REST answer (and `/history` kept after the stop, with no 103 sent, so every
transcript comes from the API), and the service as subprocesses.

1. Latency: `serve --with-worker`; 200 sessions stop at 20 per second; for each, the time from the
   stop being recorded (`history_job.stop_recorded_at`) to the transcript being stored
   (`history.transcript_at`).
2. Drain: 1,000 agents stopped with no worker running, then 1 (and, after a reset, 2)
   `convoai-ledger worker` processes; the time from starting the workers until every job is done.

Prints the figures and records them in BENCHMARKS.md ("history").
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import psycopg

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks import common  # noqa: E402
from service import schema  # noqa: E402
from service.simulator import ncs, server  # noqa: E402
from service.simulator.backend import SimApp  # noqa: E402
from tests.processes import ServiceProcess, free_port  # noqa: E402

APP_ID, SECRET = "bench-app", "bench-secret"
CUSTOMER_ID, CUSTOMER_SECRET = "bench-customer", "bench-customer-secret"
LATENCY_S = 0.020
LATENCY_AGENTS, STOP_RATE = 200, 20.0
DRAIN_AGENTS = 1000


def psycopg_url(url: str) -> str:
    return url.replace("postgresql://", "postgresql+psycopg://", 1)


def scalar(url: str, query: str) -> object:
    with psycopg.connect(url) as conn:
        row = conn.execute(query).fetchone()
        return row[0] if row else None


def wait(check: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out waiting for {what}")
        time.sleep(0.02)


def main() -> None:
    logs = Path(tempfile.mkdtemp(prefix="bench-history-"))
    port = free_port()
    app = SimApp(
        app_id=APP_ID,
        webhook_secret=SECRET,
        customer_id=CUSTOMER_ID,
        customer_secret=CUSTOMER_SECRET,
        pcu_cap=100_000,
    )
    with (
        common.server_url() as url,
        server.in_thread(
            [app],
            target=f"http://127.0.0.1:{port}",
            delivery=ncs.DeliveryPolicy(retry_gaps_s=(0.0, 0.2, 0.5)),
            latency_s=LATENCY_S,
            keep_history_after_stop=True,
            send_history_webhook=False,
            seed=1,
        ) as sim,
    ):
        schema.upgrade(psycopg_url(url))
        env = {
            "DATABASE_URL": url,
            "AGORA_APP_ID": APP_ID,
            "AGORA_WEBHOOK_SECRETS": SECRET,
            "AGORA_CUSTOMER_ID": CUSTOMER_ID,
            "AGORA_CUSTOMER_SECRET": CUSTOMER_SECRET,
            "AGORA_API_BASE_URL": sim.api_base_url,
            "READ_API_TOKENS": "bench",
            "RECONCILE_INTERVAL_S": "0",
            "LOG_LEVEL": "warning",
            "PORT": str(port),
        }
        figures = latency(sim, url, env, logs) + drain(sim, url, env, logs)
    common.record("history", figures)


def start_and_stop(sim: server.Running, count: int, *, prefix: str, rate: float | None) -> None:
    agents = [
        sim.call(sim.backend.join, APP_ID, name=f"{prefix}-{i}", channel=f"{prefix}-{i}")
        for i in range(count)
    ]
    for agent in agents:
        sim.call(sim.backend.talk, agent.agent_id, user="hello", assistant="hi", quiet=True)
    for agent in agents:
        sim.call(sim.backend.stop, agent.agent_id)
        if rate:
            time.sleep(1 / rate)
    sim.run(lambda: sim.sender.drain(120), timeout=130)


def latency(sim: server.Running, url: str, env: dict[str, str], logs: Path) -> list[str]:
    service = ServiceProcess(["serve", "--with-worker"], env, logs / "serve-worker.log")
    try:
        service.wait_ready()
        start_and_stop(sim, LATENCY_AGENTS, prefix="latency", rate=STOP_RATE)
        done = "SELECT count(*) FROM history WHERE source = 'api'"
        wait(lambda: scalar(url, done) == LATENCY_AGENTS, 60, "latency histories")
    finally:
        service.terminate()
    with psycopg.connect(url) as conn:
        rows = conn.execute(
            "SELECT extract(epoch FROM h.transcript_at - j.stop_recorded_at) * 1000"
            " FROM history h JOIN history_job j USING (agent_id) WHERE h.source = 'api'"
        ).fetchall()
    values = [float(r[0]) for r in rows]
    return [
        f"STOPPED -> history stored ({len(values)} agents, simulator +{LATENCY_S * 1000:.0f} ms,"
        f" {STOP_RATE:.0f} stops/s): p50 {common.percentile(values, 0.5):.0f} ms,"
        f" p95 {common.percentile(values, 0.95):.0f} ms, max {max(values):.0f} ms,"
        f" mean {statistics.fmean(values):.0f} ms"
    ]


def drain(sim: server.Running, url: str, env: dict[str, str], logs: Path) -> list[str]:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("DELETE FROM history_job")  # the latency run's jobs are done; start clean
    service = ServiceProcess(["serve"], env, logs / "serve.log")
    try:
        service.wait_ready()
        start_and_stop(sim, DRAIN_AGENTS, prefix="drain", rate=None)
    finally:
        service.terminate()
    queued = "SELECT count(*) FROM history_job WHERE status = 'queued'"
    wait(lambda: scalar(url, queued) == DRAIN_AGENTS, 60, "1,000 queued jobs")
    figures = []
    done = "SELECT count(*) FROM history_job WHERE status = 'done'"
    for workers in (1, 2):
        reset(url)
        started = time.monotonic()
        processes = [
            ServiceProcess(["worker"], env, logs / f"worker-{workers}-{i}.log")
            for i in range(workers)
        ]
        try:
            wait(lambda: scalar(url, done) == DRAIN_AGENTS, 300, "the drain")
            elapsed = time.monotonic() - started
        finally:
            for process in processes:
                process.terminate()
        span = float(
            scalar(
                url,
                "SELECT extract(epoch FROM max(finished_at) - min(finished_at)) FROM history_job",
            )
            or 0
        )
        figures.append(
            f"drain {DRAIN_AGENTS} simultaneous stops with {workers} worker(s)"
            f" (HISTORY_CONCURRENCY 8 each): {elapsed:.1f} s from start"
            f" (first to last job {span:.1f} s, {DRAIN_AGENTS / span:.0f} jobs/s)"
        )
    return figures


def reset(url: str) -> None:
    """Make every job new again: queued, due now, no call made, history pending."""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(
            "UPDATE history_job SET status = 'queued', due_at = now(), attempts = 0,"
            " history_call = NULL, turns_call = NULL, finished_at = NULL,"
            " lease_owner = NULL, lease_expires_at = NULL"
        )
        conn.execute(
            "UPDATE history SET status = 'pending', source = NULL, contents = '[]',"
            " transcript_at = NULL WHERE agent_id IN (SELECT agent_id FROM history_job)"
        )
        conn.execute("DELETE FROM agent_turn")


if __name__ == "__main__":
    main()
