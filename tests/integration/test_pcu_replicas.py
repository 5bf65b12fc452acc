"""PCU under real concurrency: several replicas, several workers, one database."""

from __future__ import annotations

import json
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from service import rollup
from tests.factories import APP_ID, Delivery, Sql, deliver, environment, payload, poll
from tests.processes import ServiceProcess, serving

pytestmark = pytest.mark.slow


def send_all(urls: list[str], deliveries: list[Delivery]) -> list[int]:
    clients = [httpx.Client(base_url=url, timeout=30) for url in urls]
    try:

        def send(pair: tuple[int, Delivery]) -> int:
            index, delivery = pair
            response = clients[index % len(clients)].post(
                f"/v1/webhooks/agora/{APP_ID}", content=delivery.body, headers=delivery.headers
            )
            return response.status_code

        with ThreadPoolExecutor(max_workers=12) as pool:
            return list(pool.map(send, enumerate(deliveries)))
    finally:
        for client in clients:
            client.close()


def crossings(processes: list[ServiceProcess]) -> list[str]:
    found = []
    for process in processes:
        for line in process.output().splitlines():
            if '"pcu_threshold_crossed"' in line:
                found.append(json.loads(line)["threshold"])
    return sorted(found)


def test_each_crossing_is_reported_once_across_replicas(
    database_url: str, sql: Sql, tmp_path: Path
) -> None:
    now = int(time.time())
    env = environment(database_url, PCU_CAP="10", PCU_WARN_FRACTION="0.5", LOG_LEVEL="warning")
    with serving(env, tmp_path, count=2) as servers:
        urls = [server.url for server in servers]
        for cycle in range(2):
            agents = [f"c{cycle}-{i}" for i in range(12)]
            joins = [deliver(101, payload(a, start_ts=now - 100 + i)) for i, a in enumerate(agents)]
            assert set(send_all(urls, joins)) == {200}
            leaves = [
                deliver(102, payload(a, start_ts=now - 100 + i, stop_ts=now, status="STOPPED"))
                for i, a in enumerate(agents)
            ]
            assert set(send_all(urls, leaves)) == {200}
        # The folders announce crossings soon after the commits that made them.
        poll(lambda: len(crossings(servers)) >= 4, timeout=10)
        poll(lambda: sql.value("SELECT count(*) FROM pcu_change") == 0, timeout=10)
        reported = crossings(servers)
    # Each cycle goes 0 → 12 (warning at 5, cap at 10) and back to 0.
    assert reported == ["cap", "cap", "warning", "warning"]
    assert sql.value("SELECT level FROM pcu_alarm") == "normal"
    rows = "SELECT app_id, minute, delta, peak, area_us FROM pcu_minute ORDER BY 1, 2"
    kept = sql.rows(rows)
    sql.execute("DELETE FROM pcu_minute")
    sql.execute(rollup.REBUILD_SQL)
    assert sql.rows(rows) == kept


def test_metrics_add_up_across_uvicorn_workers(database_url: str, tmp_path: Path) -> None:
    env = environment(database_url, LOG_LEVEL="warning")
    with serving(env, tmp_path, args=("serve", "--workers", "2")) as [server]:
        deliveries = [deliver(101, payload(f"w{i}")) for i in range(40)]
        assert set(send_all([server.url], deliveries)) == {200}
        totals = set()
        for _ in range(6):  # each scrape lands on either worker
            text = httpx.get(f"{server.url}/metrics", timeout=10).text
            totals.add(
                sum(
                    sample.value
                    for family in text_string_to_metric_families(text)
                    if family.name == "ledger_notifications"
                    for sample in family.samples
                    if sample.name == "ledger_notifications_total"
                    and sample.labels["outcome"] == "accepted"
                )
            )
    assert totals == {40}
