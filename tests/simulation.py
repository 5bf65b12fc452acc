"""The Agora simulator wired to a real service process, for history and simulator tests.

`ledger(...)` starts the simulator (REST API + NCS sender) in a background thread and the service
(`serve`, with the worker unless told otherwise) as a subprocess pointed at it, on a real port.
Retries, polling and leases are made fast through the environment, never by patching.
`truth(run)` is what the simulator knows of every agent, `ours(sql)` the same from our rows.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

from service.simulator import ncs, server
from service.simulator.backend import Outgoing, SimAgent, SimApp
from tests.factories import APP_ID, SECRET, Sql, environment, poll, reader_headers
from tests.processes import ServiceProcess, free_port

CUSTOMER_ID = "customer-one"
CUSTOMER_SECRET = "customer-secret-one"

# NCS behaviour with short gaps, so a failed delivery does not slow a test down.
FAST_DELIVERY = ncs.DeliveryPolicy(retry_gaps_s=(0.0, 0.05, 0.1), timeout_s=5.0)

FAST = {
    "AGORA_CUSTOMER_ID": CUSTOMER_ID,
    "AGORA_CUSTOMER_SECRET": CUSTOMER_SECRET,
    "AGORA_RETRY_WAIT_INITIAL_S": "0.01",
    "AGORA_RETRY_WAIT_MAX_S": "0.05",
    "AGORA_RETRY_TIMEOUT_S": "10",
    "AGORA_TIMEOUT_S": "5",
    "HISTORY_POLL_S": "0.2",
    "HISTORY_LEASE_S": "10",
    "HISTORY_GRACE_S": "60",
    # The service stops at once at the end of a test (no drain before it stops accepting).
    "SHUTDOWN_DRAIN_S": "0",
}


def sim_app(**overrides: Any) -> SimApp:
    fields: dict[str, Any] = {
        "app_id": APP_ID,
        "webhook_secret": SECRET,
        "customer_id": CUSTOMER_ID,
        "customer_secret": CUSTOMER_SECRET,
        "pcu_cap": 1000,
    }
    return SimApp(**{**fields, **overrides})


@dataclass
class Ledger:
    sim: server.Running
    service: ServiceProcess
    env: dict[str, str]
    log_dir: Path

    def start(self, name: str, *, turns: int = 2, quiet_turns: bool = False) -> str:
        agent: SimAgent = self.sim.call(
            self.sim.backend.join, APP_ID, name=name, channel=f"channel-{name}"
        )
        for turn in range(turns):
            self.sim.call(
                self.sim.backend.talk,
                agent.agent_id,
                user=f"question {turn}",
                assistant=f"answer {turn}",
                quiet=quiet_turns,
            )
        return agent.agent_id

    def stop(self, agent_id: str, *, notify: Sequence[int] | None = None) -> None:
        self.sim.call(self.sim.backend.stop, agent_id, notify=notify)

    def send(self, agent_id: str, event_type: int, **fields: Any) -> None:
        """Have the NCS sender deliver one more notification about the agent."""
        agent = self.sim.backend.agents[agent_id]
        payload = agent.payload(stop_ts=agent.stop_ts, **fields)
        outgoing = Outgoing(
            app_id=APP_ID, agent_id=agent_id, event_type=event_type, payload=payload
        )
        self.sim.call(self.sim.sender.submit, [outgoing])

    def delivered(self, timeout: float = 30.0) -> None:
        """Wait until every notification sent so far was answered (or given up)."""
        self.sim.run(lambda: self.sim.sender.drain(timeout), timeout=timeout + 5)
        failed = [d for d in self.sim.sender.deliveries if d.outcome != "delivered"]
        assert not failed, failed

    def history(self, agent_id: str) -> Any:
        response = httpx.get(
            f"{self.service.url}/v1/agents/{agent_id}/history", headers=reader_headers(), timeout=5
        )
        assert response.status_code == 200, response.text
        return response.json()

    def settled(self, agent_id: str, timeout: float = 15.0) -> Any:
        """The history once it is no longer pending (the agent may not be known yet at first)."""

        def check() -> Any:
            response = httpx.get(
                f"{self.service.url}/v1/agents/{agent_id}/history",
                headers=reader_headers(),
                timeout=5,
            )
            if response.status_code == 404:
                return None  # the simulator's notifications are still on their way
            assert response.status_code == 200, response.text
            answer = response.json()
            return answer if answer["status"] != "pending" else None

        return poll(check, timeout=timeout)

    def worker(self, name: str, **env: str) -> ServiceProcess:
        """A separate `convoai-ledger worker` process on the same database and simulator."""
        return ServiceProcess(["worker"], {**self.env, **env}, self.log_dir / f"{name}.log")

    def calls(self, endpoint: str, agent_id: str | None = None) -> int:
        return self.sim.call(self.sim.backend.count, endpoint, agent_id)


@contextmanager
def ledger(
    database_url: str,
    log_dir: Path,
    *,
    with_worker: bool = True,
    sim: Mapping[str, Any] | None = None,
    app: Mapping[str, Any] | None = None,
    **env: str,
) -> Iterator[Ledger]:
    port = free_port()
    options = {"delivery": FAST_DELIVERY, **(sim or {})}
    with server.in_thread(
        [sim_app(**(app or {}))], target=f"http://127.0.0.1:{port}", **options
    ) as running:
        full_env = environment(
            database_url, **{**FAST, "AGORA_API_BASE_URL": running.api_base_url, **env}
        )
        args = ["serve", "--with-worker"] if with_worker else ["serve"]
        service = ServiceProcess(args, {**full_env, "PORT": str(port)}, log_dir / "serve.log")
        try:
            service.wait_ready()
            yield Ledger(sim=running, service=service, env=full_env, log_dir=log_dir)
        finally:
            service.terminate()


def at(seconds: int | None) -> datetime | None:
    return None if seconds is None else datetime.fromtimestamp(seconds, tz=UTC)


def truth(run: Ledger) -> dict[str, dict[str, Any]]:
    """What our agent rows should say, from the simulator's own record of each agent."""

    def read() -> dict[str, dict[str, Any]]:
        return {
            a.agent_id: {
                "state": a.state,
                "started_at": at(a.start_ts),
                "stopped_at": at(a.stop_ts),
                "stop_message": a.message,
                "active_from": at(a.start_ts),
                "active_until": at(a.stop_ts),
            }
            for a in run.sim.backend.agents.values()
        }

    return run.sim.call(read)


def states_entered_twice(sql: Sql) -> list[dict[str, Any]]:
    """Agents whose transition log enters one state more than once (it never should)."""
    return sql.rows(
        "SELECT agent_id, to_state FROM agent_transition GROUP BY agent_id, to_state"
        " HAVING count(*) > 1"
    )


def ours(sql: Sql) -> dict[str, dict[str, Any]]:
    """Our agent rows, in the shape of `truth`."""
    rows = sql.rows(
        "SELECT agent_id, state, started_at, stopped_at, stop_message, active_from, active_until"
        " FROM agent"
    )
    return {row.pop("agent_id"): row for row in rows}
