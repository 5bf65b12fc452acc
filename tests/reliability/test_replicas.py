"""Two `serve` replicas and two `worker` processes on one database, under shuffled, redundant NCS
deliveries: the ledger ends as the simulator's truth, and each history job did its work once.

The simulator's NCS sender posts to a round-robin TCP proxy in front of both replicas (each new
connection goes to the other one), shuffles every end-of-session batch (102, 103, 112 in any
order) and sends a redundant copy of half the notifications. Both workers claim history jobs and
reconcile every second at the same time (nothing may be repaired: no webhook was lost).
"""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import pytest

from service.simulator import ncs, server, sessions
from tests.factories import APP_ID, Sql, environment, poll
from tests.processes import ServiceProcess, free_port
from tests.proxy import TcpProxy
from tests.simulation import FAST, Ledger, ours, sim_app, states_entered_twice, truth

pytestmark = pytest.mark.chaos

DELIVERY = ncs.DeliveryPolicy(
    retry_gaps_s=(0.0, 0.2, 0.5), timeout_s=5.0, shuffle=True, duplicates=0.5
)
AGENTS = 80


@contextmanager
def running(process: ServiceProcess) -> Iterator[ServiceProcess]:
    try:
        yield process
    finally:
        process.terminate()


def test_two_replicas_and_two_workers_end_in_the_truth_with_each_job_done_once(
    database_url: str, sql: Sql, tmp_path: Path
) -> None:
    ports = (free_port(), free_port())
    proxy = TcpProxy("127.0.0.1", ports[0], ("127.0.0.1", ports[1]))
    target = f"http://127.0.0.1:{proxy.port}"
    with (
        server.in_thread([sim_app()], target=target, delivery=DELIVERY, seed=3) as sim,
        ExitStack() as stack,  # the processes stop before the simulator does
    ):
        stack.callback(proxy.down)
        env = environment(
            database_url,
            **{
                **FAST,
                "AGORA_API_BASE_URL": sim.api_base_url,
                "RECONCILE_INTERVAL_S": "1",
                "LOG_LEVEL": "info",
            },
        )
        webs = [
            stack.enter_context(
                running(
                    ServiceProcess(["serve"], {**env, "PORT": str(port)}, tmp_path / f"web-{i}.log")
                )
            )
            for i, port in enumerate(ports)
        ]
        workers = [
            stack.enter_context(
                running(
                    ServiceProcess(
                        ["worker"], {**env, "PORT": str(free_port())}, tmp_path / f"worker-{i}.log"
                    )
                )
            )
            for i in range(2)
        ]
        for web in webs:
            web.wait_ready()
        run = Ledger(sim=sim, service=webs[0], env=env, log_dir=tmp_path)

        async def load() -> sessions.Summary:
            return await sessions.run(
                sim.backend,
                app_id=APP_ID,
                agents=AGENTS,
                rate=40,
                duration_s=1.5,
                stop=asyncio.Event(),
                seed=3,
            )

        summary = sim.run(load, timeout=60)
        run.delivered(timeout=60)
        poll(
            lambda: sql.value("SELECT count(*) FROM history_job WHERE status = 'done'") == AGENTS,
            timeout=90,
        )
        expected = truth(run)
        calls = sim.call(lambda: list(sim.backend.calls))
        deliveries = list(sim.sender.deliveries)
        outputs = {p.log_path.stem: p.output() for p in [*webs, *workers]}

    copies = sum(d.copies - 1 for d in deliveries)
    handled = [outputs[f"web-{i}"].count('"webhook_handled"') for i in range(2)]
    settled = [outputs[f"worker-{i}"].count('"history_settled"') for i in range(2)]
    print(
        f"{len(deliveries)} notifications and {copies} redundant copies, answered {handled} by"
        f" each replica; jobs settled {settled} by each worker; {summary}"
    )
    assert summary.started == AGENTS
    assert all(d.outcome == "delivered" for d in deliveries)
    assert copies > 0
    assert min(handled) > 0 and min(settled) > 0  # both replicas and both workers took part
    assert sql.count("notification") == len(deliveries)
    assert ours(sql) == expected
    assert states_entered_twice(sql) == []
    assert sql.value("SELECT count(*) FROM agent_transition WHERE source = 'reconcile'") == 0
    assert sql.value("SELECT count(*) FROM history WHERE status = 'complete'") == AGENTS

    # Each job ran once: settled once, no job taken over from the other worker or lost, every
    # agent's turns fetched once and its history at most once. (Agora may see a call twice when
    # an answer is lost in transit and the client retries it; counted apart.)
    logs = "\n".join(outputs.values())
    assert "history_job_taken_over" not in logs and "history_job_lost" not in logs
    assert sum(settled) == AGENTS
    requests = [
        event
        for output in outputs.values()
        for event in map(json.loads, filter(None, output.splitlines()))
        if event["event"] == "agora_request"
    ]
    fetched = Counter((e["endpoint"], e["agent_id"]) for e in requests if e["status"] == 200)
    assert Counter(agent for endpoint, agent in fetched if endpoint == "turns") == dict.fromkeys(
        expected, 1
    )
    assert all(n == 1 for (endpoint, _), n in fetched.items() if endpoint == "history")
    owners = sql.rows("SELECT DISTINCT lease_owner FROM history_job")
    assert owners == [{"lease_owner": None}]
    answered = sum(isinstance(e["status"], int) for e in requests if e["endpoint"] != "list")
    listed = sum(c.endpoint == "list" for c in calls)
    print(
        f"Agora answered {len(calls) - listed} history and turns calls, {answered} answers arrived"
    )
