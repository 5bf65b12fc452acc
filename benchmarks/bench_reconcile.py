"""Reconciliation figures: one pass over 1,000 live agents, its time and its Agora calls.

Starts its own embedded PostgreSQL (or uses BENCH_DATABASE_URL) and the Agora simulator with no
NCS sender (every webhook is lost), with 0 and then 20 ms added to every REST answer. Each pass is
`convoai-ledger reconcile --once` as a subprocess (RECONCILE_GRACE_S=0); its own summary gives the
pass time (process start excluded) and the simulator's call log the calls by endpoint.

1. cold: 1,000 live agents the ledger has never heard of: 1,000 adopted.
2. steady: the same 1,000, all known: nothing to repair (the normal case).
3. churn: 100 of them stopped and 100 new ones started, all without webhooks: 100 closed (each
   queried) and 100 adopted, 1,000 still live.

Prints the figures with the load average and records them in BENCHMARKS.md ("reconcile").
"""

from __future__ import annotations

import collections
import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks import common  # noqa: E402
from service import schema  # noqa: E402
from service.simulator import server  # noqa: E402
from service.simulator.backend import SimApp  # noqa: E402
from tests.factories import admin, with_database  # noqa: E402

APP_ID = "bench-app"
CUSTOMER_ID, CUSTOMER_SECRET = "bench-customer", "bench-customer-secret"
LIVE = 1000
CHURN = 100
LATENCIES_S = (0.0, 0.020)
SUMMARY = re.compile(r"completed in (?P<seconds>[\d.]+) s: (?P<rest>.*)$")


def fresh_database(url: str, name: str) -> str:
    """A new empty database `name` on the server at `url`, migrated to head; its libpq URL."""
    with admin(url) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{name}"')
    schema.upgrade(with_database(url, name, driver=True))
    return with_database(url, name)


def main() -> None:
    app = SimApp(
        app_id=APP_ID,
        webhook_secret="unused",
        customer_id=CUSTOMER_ID,
        customer_secret=CUSTOMER_SECRET,
        pcu_cap=100_000,
    )
    figures = [f"load average before: {load()}"]
    with common.server_url() as url:
        for latency in LATENCIES_S:
            db_url = fresh_database(url, f"bench_reconcile_{int(latency * 1000)}")
            with server.in_thread([app], latency_s=latency, seed=1) as sim:
                figures += scenarios(sim, db_url, latency)
    figures.append(f"load average after: {load()}")
    print("\n".join(figures))
    common.record("reconcile", figures)


def scenarios(sim: server.Running, url: str, latency: float) -> list[str]:
    env = {
        "PATH": os.environ.get("PATH", ""),
        "DATABASE_URL": url,
        "AGORA_APP_ID": APP_ID,
        "AGORA_WEBHOOK_SECRETS": "bench-ncs-secret",  # required; reconciliation sends no webhook
        "AGORA_CUSTOMER_ID": CUSTOMER_ID,
        "AGORA_CUSTOMER_SECRET": CUSTOMER_SECRET,
        "AGORA_API_BASE_URL": sim.api_base_url,
        "RECONCILE_GRACE_S": "0",
        "LOG_LEVEL": "error",
    }
    agents = [start(sim, f"agent-{i}") for i in range(LIVE)]
    label = f"+{latency * 1000:.0f} ms"
    figures = [one_pass(sim, env, f"cold ({label}): {LIVE} live, all unknown")]
    figures.append(one_pass(sim, env, f"steady ({label}): {LIVE} live, all known"))
    for agent_id in agents[:CHURN]:
        sim.call(sim.backend.stop, agent_id, notify=[])
    for i in range(CHURN):
        start(sim, f"new-{i}")
    figures.append(
        one_pass(sim, env, f"churn ({label}): {CHURN} stops and {CHURN} starts lost, {LIVE} live")
    )
    return figures


def start(sim: server.Running, name: str) -> str:
    agent = sim.call(sim.backend.join, APP_ID, name=name, channel=name)
    return str(agent.agent_id)


def one_pass(sim: server.Running, env: dict[str, str], what: str) -> str:
    before = len(sim.call(lambda: list(sim.backend.calls)))
    done = subprocess.run(
        [sys.executable, "-m", "service", "reconcile", "--once"],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    lines = [line for line in done.stdout.splitlines() if line.startswith(f"{APP_ID}: ")]
    match = SUMMARY.search(lines[-1]) if lines else None
    if done.returncode != 0 or match is None:
        raise SystemExit(
            f"reconcile --once failed ({done.returncode}):\n{done.stdout}{done.stderr}"
        )
    calls = sim.call(lambda: list(sim.backend.calls))[before:]
    by_endpoint = collections.Counter(call.endpoint for call in calls)
    counted = ", ".join(f"{n} {endpoint}" for endpoint, n in sorted(by_endpoint.items()))
    return (
        f"{what}: pass {float(match['seconds']):.2f} s, {len(calls)} Agora calls ({counted});"
        f" {match['rest']}"
    )


def load() -> str:
    return " ".join(f"{value:.2f}" for value in os.getloadavg())


if __name__ == "__main__":
    main()
