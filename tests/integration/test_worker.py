"""The worker loop in-process: shutdown releases what it cannot finish; duties run on schedule."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
from starlette.testclient import TestClient

from service import config, db, monitoring, worker
from service.simulator import server
from tests.factories import APP_ID, Sql, deliver, environment, payload, poll, post, until
from tests.processes import ServiceProcess, free_port
from tests.simulation import CUSTOMER_ID, CUSTOMER_SECRET, sim_app


def test_a_job_still_in_flight_when_the_grace_runs_out_is_released_for_another_worker(
    client: TestClient, sql: Sql, make_settings: Callable[..., config.Settings]
) -> None:
    post(client, deliver(101, payload("a1", start_ts=1751400000)))
    post(client, deliver(102, payload("a1", start_ts=1751400000, stop_ts=1751400612)))
    with server.in_thread([sim_app()]) as sim:
        sim.call(sim.backend.join, APP_ID, name="a1", channel="chan-a1", agent_id="a1")
        sim.call(sim.backend.inject, "history", latency_s=2.0)
        settings = make_settings(
            AGORA_API_BASE_URL=sim.api_base_url,
            AGORA_CUSTOMER_ID=CUSTOMER_ID,
            AGORA_CUSTOMER_SECRET=CUSTOMER_SECRET,
            HISTORY_POLL_S="0.1",
        )

        async def scenario() -> None:
            stop = asyncio.Event()
            async with worker.open_deps(settings) as deps:
                task = asyncio.create_task(worker.run(deps, stop=stop, shutdown_grace_s=0.2))
                await until(
                    lambda: (
                        sql.value("SELECT status FROM history_job WHERE agent_id = 'a1'")
                        == "running"
                    )
                )
                stop.set()
                await asyncio.wait_for(task, timeout=10)

        asyncio.run(scenario())
    job = sql.rows("SELECT * FROM history_job WHERE agent_id = 'a1'")[0]
    assert (job["status"], job["lease_owner"], job["history_call"]) == ("queued", None, None)
    assert job["attempts"] == 1
    assert sql.value("SELECT status FROM history WHERE agent_id = 'a1'") == "pending"


def test_periodic_duties_run_every_interval_until_the_worker_stops(
    make_settings: Callable[..., config.Settings],
) -> None:
    settings = make_settings(HISTORY_POLL_S="0.05")
    ticks: list[float] = []

    async def scenario() -> None:
        stop = asyncio.Event()

        async def tick() -> None:
            ticks.append(asyncio.get_running_loop().time())
            if len(ticks) == 3:
                stop.set()
            if len(ticks) == 2:
                raise RuntimeError("a failing duty does not stop the others")

        async with worker.open_deps(settings) as deps:
            duty = worker.Duty(name="tick", interval_s=0.05, run=tick)
            await asyncio.wait_for(worker.run(deps, stop=stop, duties=[duty]), timeout=10)

    asyncio.run(scenario())
    assert len(ticks) == 3


def test_the_worker_prunes_notifications_past_the_retention_age(
    client: TestClient, sql: Sql, make_settings: Callable[..., config.Settings]
) -> None:
    post(client, deliver(101, payload("recent", start_ts=1751400000)))
    post(client, deliver(101, payload("old", start_ts=1751400000)))
    sql.execute(
        "UPDATE notification SET received_at = now() - interval '8 days' WHERE agent_id = 'old'"
    )
    settings = make_settings(NOTIFICATION_RETENTION_DAYS="7", HISTORY_POLL_S="0.05")

    async def scenario() -> None:
        stop = asyncio.Event()
        async with worker.open_deps(settings) as deps:
            names = [d.name for d in worker.duties(deps)]
            assert names == ["retention", "history_retention", "reconcile"]
            task = asyncio.create_task(worker.run(deps, stop=stop, duties=worker.duties(deps)))
            await until(lambda: sql.count("notification") == 1)
            stop.set()
            await asyncio.wait_for(task, timeout=10)

    asyncio.run(scenario())
    assert sql.rows("SELECT agent_id FROM notification") == [{"agent_id": "recent"}]
    assert sql.count("agent") == 2


def test_the_worker_expires_histories_past_the_retention_age_at_start(
    client: TestClient, sql: Sql, make_settings: Callable[..., config.Settings]
) -> None:
    for agent_id in ("recent", "old"):
        post(client, deliver(101, payload(agent_id, start_ts=1751400000)))
        post(client, deliver(102, payload(agent_id, start_ts=1751400000, stop_ts=1751400060)))
        post(client, deliver(103, payload(agent_id, contents=[{"role": "user", "content": "w"}])))
    sql.execute("UPDATE agent SET stopped_at = now() - interval '8 days' WHERE agent_id = 'old'")
    sql.execute("UPDATE agent SET stopped_at = now() - interval '6 days' WHERE agent_id = 'recent'")
    settings = make_settings(HISTORY_RETENTION_DAYS="7", HISTORY_POLL_S="0.05")

    async def scenario() -> None:
        stop = asyncio.Event()
        async with worker.open_deps(settings) as deps:
            task = asyncio.create_task(worker.run(deps, stop=stop, duties=worker.duties(deps)))
            await until(
                lambda: sql.value("SELECT status FROM history WHERE agent_id = 'old'") == "expired"
            )
            stop.set()
            await asyncio.wait_for(task, timeout=10)

    asyncio.run(scenario())
    assert sql.value("SELECT status FROM history WHERE agent_id = 'recent'") == "complete"


def test_a_worker_serves_metrics_and_probes_on_the_metrics_port_only(
    database_url: str, tmp_path: Path
) -> None:
    port, metrics_port = free_port(), free_port()
    env = environment(database_url, PORT=str(port), METRICS_PORT=str(metrics_port))
    process = ServiceProcess(["worker"], env, tmp_path / "w.log")
    base = f"http://127.0.0.1:{metrics_port}"
    try:
        poll(lambda: answers(f"{base}/healthz") == 200, timeout=20)
        health = httpx.get(f"{base}/healthz", timeout=5).json()
        ready = httpx.get(f"{base}/readyz", timeout=5)
        scraped = httpx.get(f"{base}/metrics", timeout=5)
        on_port = answers(f"http://127.0.0.1:{port}/metrics")
    finally:
        code = process.terminate()
    assert health["status"] == "ok" and health["loop_age_s"] < 60
    assert (ready.status_code, ready.json()) == (200, {"ok": ["database"], "failing": {}})
    assert "# TYPE ledger_agora_requests_total counter" in scraped.text
    assert on_port is None  # nothing listens on PORT
    assert code == 0, process.output()


def answers(url: str) -> int | None:
    try:
        return httpx.get(url, timeout=1).status_code
    except httpx.HTTPError:
        return None


def test_worker_healthz_fails_once_the_loop_has_not_gone_round_for_a_minute(
    make_settings: Callable[..., config.Settings],
) -> None:
    settings = make_settings()
    pulse = monitoring.Pulse()
    engine = db.create_engine(settings.sqlalchemy_url)
    with TestClient(monitoring.worker_app(settings, engine, pulse)) as client:
        assert client.get("/healthz").status_code == 200
        pulse.at -= 61
        response = client.get("/healthz")
        assert response.status_code == 503 and response.json()["status"] == "stuck"
        pulse.beat()
        assert client.get("/healthz").status_code == 200


def test_worker_readyz_fails_while_the_database_is_unreachable(
    make_settings: Callable[..., config.Settings],
) -> None:
    settings = make_settings()
    engine = db.create_engine("postgresql+psycopg://nobody@127.0.0.1:9/none")
    with TestClient(monitoring.worker_app(settings, engine, monitoring.Pulse())) as client:
        response = client.get("/readyz")
        assert response.status_code == 503
        assert list(response.json()["failing"]) == ["database"]
        assert client.get("/healthz").status_code == 200  # an outage is not a reason to restart


def test_a_worker_process_serves_its_own_metrics_and_stops_on_sigterm(
    database_url: str, tmp_path: Path
) -> None:
    port = free_port()
    process = ServiceProcess(
        ["worker"], environment(database_url, PORT=str(port)), tmp_path / "w.log"
    )
    try:

        def scraped() -> str | None:
            try:
                response = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=1)
            except httpx.HTTPError:
                return None
            return response.text if response.status_code == 200 else None

        text = poll(scraped, timeout=20)
    finally:
        code = process.terminate()
    for family in ("ledger_agora_requests", "ledger_history_completed", "ledger_reconcile_repairs"):
        assert f"# TYPE {family}_total counter" in text
    assert code == 0, process.output()


def test_a_worker_without_rest_credentials_warns_once_per_app_at_start_and_not_every_pass(
    database_url: str, tmp_path: Path
) -> None:
    apps = tmp_path / "apps.toml"
    apps.write_text(
        "[[apps]]\napp_id = 'with-rest'\nwebhook_secrets = ['s']\n"
        f"customer_id = '{CUSTOMER_ID}'\ncustomer_secret = '{CUSTOMER_SECRET}'\n"
        "[[apps]]\napp_id = 'webhooks-only'\nwebhook_secrets = ['s']\n"
    )
    port = free_port()
    env = environment(
        database_url,
        PORT=str(port),
        LEDGER_APPS_FILE=str(apps),
        RECONCILE_INTERVAL_S="0.1",
        AGORA_RETRY_ATTEMPTS="1",  # with-rest's passes fail fast (nothing listens on port 9)
        LOG_LEVEL="debug",
    )
    process = ServiceProcess(["worker"], env, tmp_path / "w.log")

    def events() -> list[dict[str, Any]]:
        lines = process.output().splitlines()
        return [json.loads(line) for line in lines if line.startswith("{")]

    def skipped() -> list[dict[str, Any]]:
        return [e for e in events() if e["event"] == "reconcile_pass_skipped"]

    try:
        poll(lambda: len(skipped()) >= 6, timeout=20)  # three passes or more over both apps
        metrics = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    finally:
        process.terminate()
    warnings = [e for e in events() if e["event"] == "rest_credentials_missing"]
    assert sorted(e["app_id"] for e in warnings) == [APP_ID, "webhooks-only"]
    assert all(e["level"] == "warning" for e in warnings)
    assert (
        "AGORA_CUSTOMER_ID" in warnings[0]["set"] and "AGORA_APP_CERTIFICATE" in warnings[0]["set"]
    )
    assert "reconciliation and history fetching are off" in warnings[0]["detail"]
    assert {e["level"] for e in skipped() if e["reason"] == "no REST credentials"} == {"debug"}
    assert CUSTOMER_SECRET not in process.output()
    assert f'ledger_agora_credentials_missing{{app_id="{APP_ID}"}} 1.0' in metrics
    assert 'ledger_agora_credentials_missing{app_id="webhooks-only"} 1.0' in metrics
    assert 'ledger_agora_credentials_missing{app_id="with-rest"} 0.0' in metrics
