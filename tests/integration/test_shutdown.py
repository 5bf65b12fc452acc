"""SIGTERM under load: a real `serve` drains, finishes what it acknowledged, and exits 0;
Ctrl-C (SIGINT) skips the drain."""

from __future__ import annotations

import json
import signal
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.factories import APP_ID, Sql, deliver, environment, payload, poll
from tests.processes import serving

pytestmark = pytest.mark.slow

DRAIN_S = 1.5
SENDERS = 8


@dataclass(frozen=True, slots=True)
class Answer:
    notice_id: str
    agent_id: str
    sent_at: float
    status: int | None  # None: no HTTP answer (connection refused or closed)
    body: str


def send_until_refused(
    url: str, *, terminated: threading.Event, deadline: float, answers: list[Answer]
) -> None:
    """Post signed 101s for new agents; stop at the first failure after SIGTERM, or the deadline."""
    with httpx.Client(base_url=url, timeout=30) as client:
        while time.monotonic() < deadline:
            agent_id = f"agent-{uuid.uuid4()}"
            delivery = deliver(101, payload(agent_id, start_ts=1_751_400_000))
            sent_at = time.monotonic()
            try:
                response = client.post(
                    f"/v1/webhooks/agora/{APP_ID}", content=delivery.body, headers=delivery.headers
                )
                answer = Answer(
                    delivery.notice_id, agent_id, sent_at, response.status_code, response.text
                )
            except httpx.TransportError as error:
                answer = Answer(delivery.notice_id, agent_id, sent_at, None, type(error).__name__)
            answers.append(answer)
            if answer.status != 200 and terminated.is_set():
                return


def watch_readiness(
    url: str, *, until: threading.Event, seen: list[tuple[float, int, str]]
) -> None:
    with httpx.Client(base_url=url, timeout=2) as client:
        while not until.is_set():
            try:
                response = client.get("/readyz")
                seen.append((time.monotonic(), response.status_code, response.text))
            except httpx.TransportError:
                return
            time.sleep(0.02)


def test_sigterm_under_load_loses_no_acknowledged_delivery(
    database_url: str, sql: Sql, tmp_path: Path
) -> None:
    env = environment(
        database_url, LOG_LEVEL="info", SHUTDOWN_DRAIN_S=str(DRAIN_S), SHUTDOWN_TIMEOUT_S="10"
    )
    answers: list[Answer] = []
    readiness: list[tuple[float, int, str]] = []
    terminated, done = threading.Event(), threading.Event()
    with serving(env, tmp_path) as (server,), ThreadPoolExecutor(SENDERS + 1) as pool:
        deadline = time.monotonic() + 60
        senders = [
            pool.submit(
                send_until_refused,
                server.url,
                terminated=terminated,
                deadline=deadline,
                answers=answers,
            )
            for _ in range(SENDERS)
        ]
        watcher = pool.submit(watch_readiness, server.url, until=done, seen=readiness)
        poll(lambda: sum(a.status == 200 for a in answers) >= 100, timeout=30)

        terminated.set()
        signalled_at = time.monotonic()
        exit_code = server.terminate(timeout=30)
        exited_at = time.monotonic()
        done.set()
        for future in [*senders, watcher]:
            future.result(timeout=30)
        log_events = [json.loads(line).get("event") for line in server.output().splitlines()]

    assert exit_code == 0
    assert DRAIN_S <= exited_at - signalled_at < DRAIN_S + 10
    for event in ("shutdown_draining", "shutdown_started", "shutdown_finished"):
        assert event in log_events

    # Readiness failed during the drain, while deliveries were still being accepted.
    assert any(
        at > signalled_at and status == 503 and "draining" in text for at, status, text in readiness
    )
    assert any(a.sent_at > signalled_at + 0.5 and a.status == 200 for a in answers)

    # Every answer was a 200 or no answer at all (never a 5xx), and no failure before SIGTERM.
    assert {a.status for a in answers} <= {200, None}
    assert all(a.sent_at > signalled_at for a in answers if a.status is None)

    acknowledged = [a for a in answers if a.status == 200]
    assert {json.loads(a.body)["status"] for a in acknowledged} == {"accepted"}
    stored = sql.rows("SELECT notice_id, count(*) AS copies FROM notification GROUP BY notice_id")
    copies = {row["notice_id"]: row["copies"] for row in stored}
    assert [a.notice_id for a in acknowledged if copies.get(a.notice_id) != 1] == []
    running = {
        row["agent_id"] for row in sql.rows("SELECT agent_id FROM agent WHERE state = 'RUNNING'")
    }
    assert {a.agent_id for a in acknowledged} <= running


def test_ctrl_c_stops_at_once_without_draining(database_url: str, tmp_path: Path) -> None:
    env = environment(database_url, SHUTDOWN_DRAIN_S="60")
    with serving(env, tmp_path) as (server,):
        started = time.monotonic()
        exit_code = server.terminate(signal.SIGINT, timeout=30)
        elapsed = time.monotonic() - started
    assert exit_code == 0
    assert elapsed < 10
