"""Several replicas, one database: concurrent deliveries for the same agents never lose an update."""

from __future__ import annotations

import random
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from tests.factories import APP_ID, Delivery, Sql, deliver, environment, payload
from tests.processes import serving

pytestmark = pytest.mark.slow


def session(agent_id: str, *, errors: int) -> list[Delivery]:
    start = 1_751_400_000
    out = [deliver(101, payload(agent_id, start_ts=start))]
    out += [
        deliver(
            110,
            payload(agent_id, errors=[{"module": "llm", "code": i, "message": "m"}]),
            notify_ms=(start + i) * 1000,
        )
        for i in range(errors)
    ]
    out.append(
        deliver(
            111,
            payload(agent_id, metrics=[{"turn_id": 1, "asr_ttlw": 1}]),
            notify_ms=(start + 30) * 1000,
        )
    )
    out.append(
        deliver(102, payload(agent_id, start_ts=start, stop_ts=start + 60, status="STOPPED"))
    )
    out.append(
        deliver(
            103, payload(agent_id, stop_ts=start + 60, contents=[{"role": "user", "content": "hi"}])
        )
    )
    return out


def test_concurrent_deliveries_across_two_replicas_end_in_the_right_state(
    database_url: str, sql: Sql, tmp_path: Path
) -> None:
    agents = [f"agent-{i}" for i in range(40)]
    unique = [d for a in agents for d in session(a, errors=5)]
    # Every notification twice (NCS redundancy), all shuffled, spread over both replicas.
    deliveries = unique + unique
    random.Random(7).shuffle(deliveries)
    with serving(environment(database_url, LOG_LEVEL="warning"), tmp_path, count=2) as servers:
        clients = [httpx.Client(base_url=s.url, timeout=30) for s in servers]

        def send(index_and_delivery: tuple[int, Delivery]) -> tuple[int, str]:
            index, delivery = index_and_delivery
            response = clients[index % 2].post(
                f"/v1/webhooks/agora/{APP_ID}", content=delivery.body, headers=delivery.headers
            )
            return response.status_code, response.json()["status"]

        with ThreadPoolExecutor(max_workers=16) as pool:
            answers = list(pool.map(send, enumerate(deliveries)))
        for client in clients:
            client.close()

    assert {code for code, _ in answers} == {200}
    assert sorted(status for _, status in answers).count("accepted") == len(unique)
    assert sql.count("notification") == len(unique)
    assert sql.rows("SELECT state, count(*) AS n FROM agent GROUP BY state") == [
        {"state": "STOPPED", "n": len(agents)}
    ]
    assert sql.count("agent_transition") == 2 * len(agents)
    assert sql.count("agent_error") == 5 * len(agents)
    assert sql.count("history_job") == len(agents)
    assert sql.value("SELECT count(*) FROM history WHERE status = 'complete'") == len(agents)


def test_one_agent_hammered_from_many_threads_keeps_every_error(
    database_url: str, sql: Sql, tmp_path: Path
) -> None:
    deliveries = session("hot-agent", errors=120)
    random.Random(11).shuffle(deliveries)
    with serving(environment(database_url), tmp_path, count=2) as servers:
        clients = [httpx.Client(base_url=s.url, timeout=30) for s in servers]
        with ThreadPoolExecutor(max_workers=24) as pool:
            codes = list(
                pool.map(
                    lambda pair: (
                        clients[pair[0] % 2]
                        .post(
                            f"/v1/webhooks/agora/{APP_ID}",
                            content=pair[1].body,
                            headers=pair[1].headers,
                        )
                        .status_code
                    ),
                    enumerate(deliveries),
                )
            )
        for client in clients:
            client.close()
    assert set(codes) == {200}
    assert sql.value("SELECT state FROM agent WHERE agent_id = 'hot-agent'") == "STOPPED"
    assert sql.count("agent_error") == 120
    # The newest event time wins whatever the arrival order: the last error, 119 s after the start.
    assert sql.value("SELECT last_event_at = to_timestamp(1751400119) FROM agent") is True
