"""PostgreSQL restarted in the middle of a load: nothing acknowledged is lost, nothing is doubled.

The simulator runs sessions (joins, turns, stops, shuffled end batches, redundant copies) against
`serve --with-worker` while the test stops PostgreSQL, keeps it down until deliveries have been
answered 503, and starts it again on the same port. This test needs a server of its own: it never
restarts the shared one (`TEST_DATABASE_URL`).

Agora gives up on a notification after three retries; a delivery that exhausts them is lost, and
finding it is reconciliation's job (tests/integration/test_reconcile.py). Here the NCS retry gaps
(at once, then 2 s, then 4 s: the last attempt 6 s after the first) are sized to cover the
outage, which is measured and asserted to be shorter, so every delivery answered 503 must be
accepted on a retry and the ledger must end exactly as the simulator's truth, with no repair.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from service import localdb, schema
from service.simulator import ncs, sessions
from tests.factories import APP_ID, Sql, admin, poll, with_database
from tests.simulation import Ledger, ledger, ours, states_entered_twice, truth

pytestmark = pytest.mark.chaos

# Not 5 s: uvicorn closes a connection idle that long, and reusing it just then is a lost attempt.
RETRY_GAPS_S = (0.0, 2.0, 4.0)
DELIVERY = ncs.DeliveryPolicy(
    retry_gaps_s=RETRY_GAPS_S, timeout_s=5.0, shuffle=True, duplicates=0.1
)
AGENTS, RATE, DURATION_S = 100, 20.0, 3.0
COMPLETE = (
    "SELECT count(*) FROM history h JOIN history_job j USING (agent_id)"
    " WHERE h.status = 'complete' AND j.turns_call = 'ok'"
)


@pytest.fixture
def own_database() -> Iterator[tuple[localdb.LocalServer, str]]:
    """A throw-away server of this test's own, with a database at head."""
    with localdb.temporary() as server:
        with admin(server.url) as conn:
            conn.execute('CREATE DATABASE "ledger"')
        url = with_database(server.url, "ledger", driver=True)
        schema.upgrade(url)
        yield server, url


def drive_sessions(run: Ledger) -> concurrent.futures.Future[sessions.Summary]:
    """Start the simulated sessions on the simulator's loop; the future ends with the last one."""

    async def drive() -> sessions.Summary:
        return await sessions.run(
            run.sim.backend,
            app_id=APP_ID,
            agents=AGENTS,
            rate=RATE,
            duration_s=DURATION_S,
            stop=asyncio.Event(),
            seed=11,
        )

    return asyncio.run_coroutine_threadsafe(drive(), run.sim.loop)


def answered_503(run: Ledger) -> int:
    return sum(any(a.status == 503 for a in d.attempts) for d in list(run.sim.sender.deliveries))


def test_a_restart_under_load_loses_and_doubles_nothing(
    own_database: tuple[localdb.LocalServer, str], tmp_path: Path
) -> None:
    server, url = own_database
    sql = Sql(url)
    env = {"HISTORY_LEASE_S": "3", "LOG_LEVEL": "info"}
    with ledger(url, tmp_path, sim={"delivery": DELIVERY, "seed": 5}, **env) as run:
        load = drive_sessions(run)
        poll(lambda: len(run.sim.sender.deliveries) >= 150, timeout=30)

        server.stop()
        down_at = time.monotonic()
        # Down for at least 1.5 s, and until deliveries have really been refused.
        poll(lambda: answered_503(run) >= 50 and time.monotonic() - down_at >= 1.5, timeout=10)
        server.start()
        outage_s = time.monotonic() - down_at

        summary = load.result(timeout=60)
        run.delivered(timeout=60)
        # Every session's history is complete (its 103 arrived, its job collected the turns).
        poll(lambda: sql.value(COMPLETE) == AGENTS, timeout=60)
        expected = truth(run)
        deliveries = list(run.sim.sender.deliveries)
        log = run.service.output()

    statuses = {a.status for d in deliveries for a in d.attempts}
    retried = [d for d in deliveries if any(a.status == 503 for a in d.attempts)]
    unanswered = sum(a.status is None for d in deliveries for a in d.attempts)
    print(
        f"outage {outage_s:.1f} s; {len(deliveries)} notifications, {len(retried)} answered 503"
        f" and accepted on a retry ({unanswered} attempts unanswered); sessions {summary}"
    )
    assert outage_s < sum(RETRY_GAPS_S), "the outage outlasted NCS's retries: resize the test"
    assert summary.started == AGENTS
    # Only 200 and 503 were answered (never a 500); an attempt without an answer (a keep-alive
    # connection closed as it was reused) is retried by NCS like a 503.
    assert 503 in statuses and statuses <= {200, 503, None}
    assert len(retried) >= 50
    assert all(d.outcome == "delivered" for d in deliveries)

    # Every notification answered 200 is stored exactly once, and nothing else is.
    stored = sql.rows("SELECT notice_id, count(*) AS copies FROM notification GROUP BY notice_id")
    assert {row["notice_id"]: row["copies"] for row in stored} == {
        d.notice_id: 1 for d in deliveries
    }
    # Final agents (state, times, PCU interval) are the simulator's truth.
    assert ours(sql) == expected
    assert states_entered_twice(sql) == []
    stopped = [a for a, row in expected.items() if row["state"] in ("STOPPED", "FAILED")]
    assert len(stopped) == AGENTS
    assert "unhandled_error" not in log and "worker_crashed" not in log
