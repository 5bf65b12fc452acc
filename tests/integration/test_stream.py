"""GET /v1/stream over real HTTP, from two `serve` processes on one database.

Webhooks go to one replica and the stream is read from the other; resuming, ordering against
transactions still open, a slow reader, heartbeats and the subscriber cap are checked on the
same pair of processes (a database for the module; each test looks at its own agents).
"""

from __future__ import annotations

import itertools
import socket
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import psycopg
import pytest

from tests.factories import (
    APP_ID,
    SECOND_APP,
    SECOND_SECRET,
    SECRET,
    Sql,
    apps_file,
    deliver,
    environment,
    payload,
    poll,
    reader_headers,
)
from tests.processes import ServiceProcess, serving
from tests.sse import Reader, Received

pytestmark = pytest.mark.slow

MAX_SUBSCRIBERS = 3
HEARTBEAT_S = 0.5
# Transitions written at once for the slow reader: more than the kernel's socket buffers (which
# grow to 4 MB on loopback) and the reader's queue hold.
BULK = 25_000


@pytest.fixture(scope="module")
def database(create_database: Callable[[], str]) -> str:
    return create_database()


@pytest.fixture(scope="module")
def replicas(
    database: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[list[ServiceProcess]]:
    log_dir: Path = tmp_path_factory.mktemp("stream")
    env = environment(
        database,
        AGORA_APP_ID="",
        AGORA_WEBHOOK_SECRETS="",
        LEDGER_APPS_FILE=apps_file(log_dir, (APP_ID, SECRET), (SECOND_APP, SECOND_SECRET)),
        STREAM_HEARTBEAT_S=str(HEARTBEAT_S),
        STREAM_MAX_SUBSCRIBERS=str(MAX_SUBSCRIBERS),
        SHUTDOWN_DRAIN_S="0",
        LOG_LEVEL="info",
    )
    with serving(env, log_dir, count=2) as processes:
        yield processes


def send(
    process: ServiceProcess, event_type: int, agent_id: str, app_id: str = APP_ID, **fields: object
) -> float:
    """Post a signed notification; answers when it was accepted (time.time())."""
    secret = SECRET if app_id == APP_ID else SECOND_SECRET
    delivery = deliver(event_type, payload(agent_id, **fields), secret=secret)
    response = httpx.post(
        f"{process.url}/v1/webhooks/agora/{app_id}",
        content=delivery.body,
        headers=delivery.headers,
        timeout=10,
    )
    assert response.json() == {"status": "accepted"}, response.text
    return time.time()


def stream(process: ServiceProcess, *, query: str = "", last_event_id: str | None = None) -> Reader:
    headers = reader_headers()
    if last_event_id is not None:
        headers["Last-Event-ID"] = last_event_id
    return Reader(f"{process.url}/v1/stream{query}", headers).wait_open()


def new_agent() -> str:
    return f"agent-{uuid.uuid4().hex[:12]}"


def of(reader: Reader, *agents: str) -> list[tuple[str, str]]:
    return [
        (e.data["agent_id"], e.data["state"])
        for e in reader.agent_events()
        if e.data["agent_id"] in agents
    ]


def test_a_webhook_received_by_one_replica_is_streamed_by_the_other(
    replicas: list[ServiceProcess],
) -> None:
    one, other = replicas
    agent = new_agent()
    start = int(time.time())
    with stream(other) as reader:
        assert reader.status == 200 and reader.retry == 2000
        send(one, 101, agent, start_ts=start)
        joined = reader.wait_for(lambda events: [e for e in events if e.name == "pcu"])
        send(one, 102, agent, start_ts=start, stop_ts=start + 3, status="STOPPED")
        reader.wait_for(lambda events: len([e for e in events if e.name == "pcu"]) == 2)
    assert [(e.name, e.data) for e in reader.events] == [
        (
            "agent",
            {
                "app_id": APP_ID,
                "agent_id": agent,
                "state": "RUNNING",
                "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(start)),
                "cause": "agent_joined",
            },
        ),
        ("pcu", {"app_id": APP_ID, "current": 1, "cap": 20, "at": joined[0].data["at"]}),
        (
            "agent",
            {
                "app_id": APP_ID,
                "agent_id": agent,
                "state": "STOPPED",
                "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(start + 3)),
                "cause": "agent_left",
            },
        ),
        ("pcu", {"app_id": APP_ID, "current": 0, "cap": 20, "at": reader.events[3].data["at"]}),
    ]
    ids = [e.id for e in reader.events]
    assert all(ids) and ids == sorted(ids) and len(set(ids)) == 4


def test_resuming_with_the_last_event_id_gets_exactly_what_was_missed(
    replicas: list[ServiceProcess], database: str
) -> None:
    one, other = replicas
    first, second, third = new_agent(), new_agent(), new_agent()
    with stream(one) as reader:
        send(other, 101, first)
        seen = reader.wait_for(lambda events: [e for e in events if e.name == "pcu"])
    last = seen[-1].id
    # Missed while no one listened: from both replicas, and through another app.
    send(other, 101, second)
    send(one, 101, third, app_id=SECOND_APP)
    send(one, 102, first, status="FAILED", message="boom")
    rows = Sql(database).rows(
        "SELECT app_id, agent_id, to_state FROM agent_transition"
        " WHERE agent_id IN (%(a)s, %(b)s, %(c)s) ORDER BY xid, id",
        a=first,
        b=second,
        c=third,
    )
    missed = [(r["app_id"], r["agent_id"], r["to_state"]) for r in rows][1:]
    with stream(other, last_event_id=last) as resumed:
        resumed.wait_for(lambda events: len([e for e in events if e.name == "agent"]) >= 3)
        assert resumed.wait_for(lambda events: events[-1].name == "pcu")
    got = [(e.data["app_id"], e.data["agent_id"], e.data["state"]) for e in resumed.agent_events()]
    assert got == missed
    assert [
        e.data["current"] for e in resumed.events if e.name == "pcu" and e.data["app_id"] == APP_ID
    ][-1] == 1
    ids = [e.id for e in resumed.events]
    assert ids == sorted(ids) and min(ids) > last and len(set(ids)) == len(ids)
    # Resuming from the last one misses nothing and repeats nothing.
    with stream(one, last_event_id=ids[-1]) as again:
        fourth = new_agent()
        send(other, 101, fourth)
        again.wait_for(lambda events: of_agents(events, fourth))
    assert of(again, first, second, third, fourth) == [(fourth, "RUNNING")]


def of_agents(events: list[Received], *agents: str) -> list[Received]:
    return [e for e in events if e.name == "agent" and e.data["agent_id"] in agents]


def test_app_id_and_the_token_decide_what_is_streamed(replicas: list[ServiceProcess]) -> None:
    one, other = replicas
    mine, theirs = new_agent(), new_agent()
    with stream(one, query=f"?app_id={SECOND_APP}") as reader:
        send(other, 101, theirs, app_id=APP_ID)
        send(other, 101, mine, app_id=SECOND_APP)
        reader.wait_for(lambda events: of_agents(events, mine))
        assert {e.data["app_id"] for e in reader.events} == {SECOND_APP}


@pytest.mark.parametrize(
    ("query", "headers", "status", "body"),
    [
        ("", {}, 401, {"error": "unauthorized"}),
        ("", {"Authorization": "Bearer wrong"}, 401, {"error": "unauthorized"}),
        ("?app_id=nope", reader_headers(), 404, {"error": "not_found"}),
        (
            "?limit=1",
            reader_headers(),
            400,
            {"error": "invalid_parameter", "detail": "limit: unknown parameter"},
        ),
        (
            "",
            {**reader_headers(), "Last-Event-ID": "not-an-id"},
            400,
            {
                "error": "invalid_parameter",
                "detail": "Last-Event-ID: not an event id of this stream",
            },
        ),
    ],
)
def test_a_stream_that_cannot_be_given_is_refused_with_a_json_error(
    replicas: list[ServiceProcess],
    query: str,
    headers: dict[str, str],
    status: int,
    body: dict[str, str],
) -> None:
    response = httpx.get(f"{replicas[0].url}/v1/stream{query}", headers=headers, timeout=5)
    assert (response.status_code, response.json()) == (status, body)


def test_a_transaction_still_open_holds_back_the_ones_after_it_and_order_is_kept(
    replicas: list[ServiceProcess], database: str
) -> None:
    one, _ = replicas
    early, late = new_agent(), new_agent()
    with stream(one) as reader, psycopg.connect(Sql(database).url) as slow:
        # A transaction that wrote first (its xid is the lower) but commits last.
        slow.execute(
            "INSERT INTO agent (app_id, agent_id, state) VALUES (%s, %s, 'RUNNING')",
            (APP_ID, early),
        )
        slow.execute(
            "INSERT INTO agent_transition (app_id, agent_id, from_state, to_state, cause, source,"
            " event_at) VALUES (%s, %s, 'IDLE', 'RUNNING', 'agent_joined', 'webhook', now())",
            (APP_ID, early),
        )
        send(one, 101, late)
        time.sleep(1.0)  # long enough for several reads: nothing may be sent meanwhile
        assert of(reader, early, late) == []
        slow.commit()
        reader.wait_for(lambda events: len(of_agents(events, early, late)) == 2)
    assert of(reader, early, late) == [(early, "RUNNING"), (late, "RUNNING")]


def test_heartbeats_keep_a_quiet_stream_open(replicas: list[ServiceProcess]) -> None:
    with stream(replicas[1]) as reader:
        poll(lambda: len(reader.comments) >= 4, timeout=5)
    beats = [at for at, text in reader.comments if text == "keep-alive"]
    gaps = [b - a for a, b in itertools.pairwise(beats)]
    assert len(beats) >= 3 and max(gaps) < HEARTBEAT_S * 2


def test_a_slow_reader_is_dropped_without_slowing_webhooks(
    replicas: list[ServiceProcess], database: str
) -> None:
    one = replicas[0]
    stuck = socket.socket()
    # A small receive window, set before connecting: the server's writes block soon.
    stuck.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    stuck.connect(("127.0.0.1", one.port or 0))
    with stuck:
        stuck_reader_is_dropped(one, stuck, Sql(database))


def stuck_reader_is_dropped(one: ServiceProcess, stuck: socket.socket, sql: Sql) -> None:
    stuck.sendall(
        b"GET /v1/stream HTTP/1.1\r\nHost: ledger\r\nAuthorization: Bearer reader-token-one\r\n\r\n"
    )
    assert stuck.recv(15) == b"HTTP/1.1 200 OK"
    bulk = new_agent()
    with stream(one, query=f"?app_id={APP_ID}") as healthy:
        # More events than the stuck reader's queue and socket buffers hold, written at once.
        sql.execute(
            "INSERT INTO agent (app_id, agent_id) VALUES (%(app)s, %(agent)s)",
            app=APP_ID,
            agent=bulk,
        )
        sql.execute(
            "INSERT INTO agent_transition (app_id, agent_id, from_state, to_state, cause, source,"
            " event_at) SELECT %(app)s, %(agent)s, 'RUNNING', 'RUNNING', 'agent_joined',"
            " 'webhook', now() FROM generate_series(1, %(rows)s)",
            app=APP_ID,
            agent=bulk,
            rows=BULK,
        )
        latencies = []
        for _ in range(20):
            began = time.monotonic()
            send(one, 101, new_agent())
            latencies.append(time.monotonic() - began)
        poll(lambda: '"slow_reader"' in one.output(), timeout=60)
        healthy.wait_for(lambda events: len(of_agents(events, bulk)) == BULK, timeout=60)
    # The dropped reader's connection is closed: what it did not read ends.
    stuck.settimeout(10)
    while stuck.recv(65536):
        pass
    assert max(latencies) < 2.0, latencies


def test_a_process_takes_at_most_its_share_of_subscribers(replicas: list[ServiceProcess]) -> None:
    one, other = replicas
    readers = [stream(one) for _ in range(MAX_SUBSCRIBERS)]
    try:
        assert [r.status for r in readers] == [200] * MAX_SUBSCRIBERS
        refused = httpx.get(f"{one.url}/v1/stream", headers=reader_headers(), timeout=5)
        assert refused.status_code == 503
        assert refused.headers["retry-after"] == "5"
        assert refused.json() == {
            "error": "too_many_subscribers",
            "detail": f"at most {MAX_SUBSCRIBERS} streams per process",
        }
        with stream(other) as elsewhere:
            assert elsewhere.status == 200  # the cap is per process
        readers.pop().close()

        def accepted() -> bool:
            with stream(one) as again:
                return again.status == 200

        poll(accepted, timeout=10)
    finally:
        for reader in readers:
            reader.close()


def test_a_stopping_process_ends_its_streams_at_once(database: str, tmp_path: Path) -> None:
    env = environment(database, SHUTDOWN_DRAIN_S="0", SHUTDOWN_TIMEOUT_S="20")
    with serving(env, tmp_path) as (process,):
        reader = stream(process)
        began = time.monotonic()
        assert process.terminate(timeout=15) == 0
        stopped = time.monotonic() - began
        reader.ended.wait(timeout=5)
        reader.close()
    # Well before SHUTDOWN_TIMEOUT_S: the open stream did not hold the shutdown up.
    assert stopped < 5, stopped
    assert reader.ended.is_set()
