from __future__ import annotations

import time
import uuid
from collections.abc import Callable

import httpx
from prometheus_client.parser import text_string_to_metric_families
from starlette.testclient import TestClient

from service import config, metrics
from service.app import create_app
from tests.factories import APP_ID, Delivery, Sql, deliver, payload, poll, post
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
    assert grew("ledger_ingest_duration_seconds_count", app_id=APP_ID, outcome="accepted") == 1
    assert (
        grew("ledger_transitions_total", app_id=APP_ID, to_state="RUNNING", source="webhook") == 1
    )


def error_report(
    agent_id: str, *errors: dict[str, object], notice_id: str | None = None
) -> Delivery:
    return deliver(110, payload(agent_id, errors=list(errors)), notice_id=notice_id)


def test_new_agent_errors_are_counted_by_module_and_code_and_redeliveries_are_not(
    client: TestClient,
) -> None:
    before = samples(client)
    first = error_report(
        "e1",
        {"module": "tts", "code": 429, "message": "vendor rate limited"},
        {"module": "llm", "code": 500, "message": "upstream"},
    )
    post(client, first)
    post(client, first)  # the same noticeId again: nothing new is recorded
    post(client, error_report("e1", {"module": "tts", "code": 429, "message": "again"}))
    post(client, error_report("e2", {"message": "neither module nor code"}))
    after = samples(client)

    def grew(module: str, code: str) -> float:
        labels = {"app_id": APP_ID, "module": module, "code": code}
        name = "ledger_agent_errors_total"
        return value(after, name, **labels) - value(before, name, **labels)

    assert (grew("tts", "429"), grew("llm", "500"), grew("", "")) == (2, 1, 1)


def error_series(
    found: dict[tuple[str, tuple[tuple[str, str], ...]], float], app_id: str
) -> dict[tuple[str, str], float]:
    series = {}
    for (name, labels), count in found.items():
        named = dict(labels)
        if name == "ledger_agent_errors_total" and named["app_id"] == app_id:
            series[named["module"], named["code"]] = count
    return series


def test_error_labels_from_hostile_payloads_stay_few(
    make_settings: Callable[..., config.Settings],
) -> None:
    app_id = f"bounded-{uuid.uuid4().hex[:12]}"  # no error counted for it yet in this process

    def send(client: TestClient, *errors: dict[str, object]) -> None:
        delivery = deliver(110, payload("h1", errors=list(errors)))
        assert post(client, delivery, app_id=app_id).status_code == 200

    with TestClient(create_app(make_settings(AGORA_APP_ID=app_id))) as client:
        send(
            client,
            {"module": "rate limited!", "code": 1},
            {"module": "x" * 65, "code": 2},
            {"module": "tts\nx", "code": 3},
            {"module": 'a"}b', "code": 4},
            {"module": "tts", "code": -7},
        )
        odd = error_series(samples(client), app_id)
        assert odd == {
            ("other", "1"): 1,
            ("other", "2"): 1,
            ("other", "3"): 1,
            ("other", "4"): 1,
            ("tts", "-7"): 1,
        }
        # 60 more distinct pairs: the first ones fill the app's quota, the rest count as other.
        sent = [{"module": f"m{i}", "code": i} for i in range(60)]
        for start in range(0, len(sent), 10):
            send(client, *sent[start : start + 10])
        found = error_series(samples(client), app_id)
    room = metrics.MAX_ERROR_PAIRS - len(odd)
    assert len(found) == metrics.MAX_ERROR_PAIRS + 1
    assert found[("other", "other")] == len(sent) - room
    assert {pair for pair in found if pair[0].startswith("m")} == {
        (f"m{i}", str(i)) for i in range(room)
    }
    assert sum(found.values()) == len(sent) + len(odd)


def test_a_session_end_is_counted_once_with_its_outcome_and_slot_seconds(
    client: TestClient,
) -> None:
    before = samples(client)
    t = 1_751_400_000

    def stop(agent_id: str, stop_ts: int, status: str, **fields: int) -> Delivery:
        return deliver(102, payload(agent_id, stop_ts=stop_ts, status=status, **fields))

    post(client, deliver(101, payload("s1", start_ts=t)))
    ended = stop("s1", t + 60, "STOPPED", start_ts=t)
    post(client, ended)
    post(client, ended)  # duplicate
    post(client, stop("s1", t + 90, "STOPPED", start_ts=t))  # a second, later stop
    post(client, stop("s2", t + 30, "FAILED", start_ts=t))  # its start implied by the stop
    post(client, stop("s3", t + 50, "STOPPED"))  # start unknown: no slot yet
    middle = samples(client)
    post(client, deliver(101, payload("s3", start_ts=t + 10)))  # the start, late: 40 s
    post(client, deliver(101, payload("s3", start_ts=t + 10)))
    after = samples(client)

    def grew(
        found: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str
    ) -> float:
        return value(found, name, app_id=APP_ID, **labels) - value(
            before, name, app_id=APP_ID, **labels
        )

    ended_total = "ledger_sessions_ended_total"
    assert grew(after, ended_total, outcome="stopped") == 2
    assert grew(after, ended_total, outcome="failed") == 1
    assert grew(middle, "ledger_agent_seconds_total") == 60 + 30
    assert grew(after, "ledger_agent_seconds_total") == 60 + 30 + 40


def test_a_count_hovering_at_the_cap_is_announced_again_only_after_falling_by_the_margin(
    make_settings: Callable[..., config.Settings], sql: Sql
) -> None:
    # Cap 20, warning at 16, margin max(1, 10 % of 20) = 2.
    with TestClient(create_app(make_settings(PCU_CAP="20"))) as client:
        before = samples(client)
        t = int(time.time()) - 3600
        live: list[str] = []

        def join(count: int) -> None:
            for _ in range(count):
                agent = f"p{len(live)}-{uuid.uuid4().hex[:6]}"
                post(client, deliver(101, payload(agent, start_ts=t)))
                live.append(agent)

        def leave(count: int) -> None:
            for _ in range(count):
                agent = live.pop()
                post(
                    client,
                    deliver(102, payload(agent, start_ts=t, stop_ts=t + 60, status="STOPPED")),
                )

        join(20)  # warning at 16, cap at 20
        leave(1)  # 19: one below the cap, held
        join(1)  # 20 again: not announced
        leave(2)  # 18: two below, released to warning
        join(2)  # 20: the cap again
        name = "ledger_pcu_threshold_crossings_total"

        def counted(threshold: str) -> float:
            labels = {"app_id": APP_ID, "threshold": threshold}
            return value(samples(client), name, **labels) - value(before, name, **labels)

        # Folded and counted soon after the commits, in the order they were recorded.
        poll(lambda: sql.value("SELECT count(*) FROM pcu_change") == 0, timeout=10)
        poll(lambda: counted("cap") >= 2, timeout=5)
        assert (counted("warning"), counted("cap")) == (1, 2)


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
        "ledger_agent_errors",
        "ledger_sessions_ended",
        "ledger_agent_seconds",
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
