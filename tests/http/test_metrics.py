from __future__ import annotations

import time
from collections.abc import Callable

import httpx
from prometheus_client.parser import text_string_to_metric_families
from starlette.testclient import TestClient

from service import config
from service.app import create_app
from tests.factories import APP_ID, Sql, deliver, payload, poll, post
from tests.processes import free_port


def samples(client: TestClient) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


def value(
    found: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str
) -> float:
    return found.get((name, tuple(sorted(labels.items()))), 0.0)


def test_webhook_outcomes_are_counted_by_type_and_reason(client: TestClient) -> None:
    before = samples(client)
    join = deliver(101, payload("m1", start_ts=int(time.time()) - 5))
    post(client, join)
    post(client, join)  # duplicate
    post(client, deliver(101, payload("m2")), app_id="elsewhere")  # unknown app
    bad = deliver(101, payload("m3"), secret="wrong")
    post(client, bad)
    after = samples(client)

    def grew(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    common = {"app_id": APP_ID, "event_type": "101"}
    assert grew("ledger_notifications_total", **common, outcome="accepted", reason="") == 1
    assert grew("ledger_notifications_total", **common, outcome="duplicate", reason="") == 1
    assert (
        grew(
            "ledger_notifications_total",
            app_id="unknown",
            event_type="",
            outcome="rejected",
            reason="unknown_app",
        )
        == 1
    )
    assert (
        grew(
            "ledger_notifications_total",
            app_id=APP_ID,
            event_type="",
            outcome="rejected",
            reason="invalid_signature",
        )
        == 1
    )
    assert grew("ledger_ingest_duration_seconds_count", outcome="accepted") == 1
    assert (
        grew("ledger_transitions_total", app_id=APP_ID, to_state="RUNNING", source="webhook") == 1
    )


def test_out_of_order_arrivals_are_counted(client: TestClient) -> None:
    before = samples(client)
    start = 1_751_400_000
    post(client, deliver(102, payload("o1", start_ts=start, stop_ts=start + 60, status="STOPPED")))
    post(client, deliver(101, payload("o1", start_ts=start)))  # older than the stop
    after = samples(client)
    labels = {"app_id": APP_ID, "event_type": "101"}
    assert (
        value(after, "ledger_out_of_order_total", **labels)
        - value(before, "ledger_out_of_order_total", **labels)
        == 1
    )


def test_database_gauges_are_read_at_scrape_time(
    make_settings: Callable[..., config.Settings], sql: Sql
) -> None:
    with TestClient(create_app(make_settings(PCU_CAP="7"))) as client:
        now = int(time.time())
        post(client, deliver(101, payload("g1", start_ts=now - 30)))
        post(client, deliver(101, payload("g2", start_ts=now - 20)))
        post(
            client,
            deliver(102, payload("g2", start_ts=now - 20, stop_ts=now - 10, status="STOPPED")),
        )
        sql.execute("UPDATE history_job SET due_at = now() - interval '90 seconds'")
        found = samples(client)
    assert value(found, "ledger_pcu_current", app_id=APP_ID) == 1
    assert value(found, "ledger_pcu_cap", app_id=APP_ID) == 7
    assert value(found, "ledger_pcu_peak", app_id=APP_ID) == 2
    assert value(found, "ledger_history_jobs", status="queued") == 1
    assert value(found, "ledger_history_jobs", status="done") == 0
    assert 90 <= value(found, "ledger_history_oldest_due_seconds") < 120


def test_threshold_crossings_are_counted(make_settings: Callable[..., config.Settings]) -> None:
    with TestClient(create_app(make_settings(PCU_CAP="2"))) as client:
        before = samples(client)
        now = int(time.time())
        post(client, deliver(101, payload("t1", start_ts=now - 5)))
        post(client, deliver(101, payload("t2", start_ts=now - 4)))
        name = "ledger_pcu_threshold_crossings_total"

        def counted(threshold: str) -> float:
            labels = {"app_id": APP_ID, "threshold": threshold}
            return value(samples(client), name, **labels) - value(before, name, **labels)

        # Counted by the folder soon after the commit.
        poll(lambda: counted("cap") >= 1, timeout=5)
        assert (counted("warning"), counted("cap")) == (1, 1)


def test_every_agreed_metric_is_exposed(client: TestClient) -> None:
    names = {family.name for family in text_string_to_metric_families(client.get("/metrics").text)}
    assert {
        "ledger_notifications",
        "ledger_ingest_duration_seconds",
        "ledger_out_of_order",
        "ledger_transitions",
        "ledger_pcu_current",
        "ledger_pcu_cap",
        "ledger_pcu_peak",
        "ledger_pcu_threshold_crossings",
        "ledger_history_jobs",
        "ledger_history_oldest_due_seconds",
        "ledger_history_completed",
        "ledger_agora_requests",
        "ledger_agora_request_duration_seconds",
        "ledger_reconcile_repairs",
        "ledger_reconcile_pass_duration_seconds",
        "ledger_reconcile_errors",
    } <= names


def test_with_a_metrics_port_metrics_are_served_there_and_not_on_the_main_port(
    make_settings: Callable[..., config.Settings],
) -> None:
    metrics_port = free_port()
    with TestClient(create_app(make_settings(METRICS_PORT=str(metrics_port)))) as client:
        post(client, deliver(101, payload("m1", start_ts=int(time.time()) - 5)))
        on_main_port = client.get("/metrics")
        scraped = httpx.get(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5)
        webhook_on_metrics_port = httpx.post(
            f"http://127.0.0.1:{metrics_port}/v1/webhooks/agora/{APP_ID}", content=b"{}", timeout=5
        )
    assert (on_main_port.status_code, on_main_port.json()) == (404, {"error": "not_found"})
    assert scraped.status_code == 200
    assert f'ledger_pcu_current{{app_id="{APP_ID}"}} 1.0' in scraped.text
    assert "ledger_notifications_total" in scraped.text
    assert webhook_on_metrics_port.status_code == 404  # only /metrics is served there
