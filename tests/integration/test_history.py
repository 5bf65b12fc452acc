"""History on STOPPED (CONTRACT §5) end to end: simulator over real HTTP, service, worker, Postgres."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Callable
from pathlib import Path

import psycopg
import pytest
from starlette.testclient import TestClient

from service import config, history, jobs, worker
from service.simulator import server
from tests.factories import APP_ID, Sql, deliver, payload, poll, post, until
from tests.simulation import CUSTOMER_ID, CUSTOMER_SECRET, ledger, sim_app

pytestmark = pytest.mark.slow


def job(sql: Sql, agent_id: str) -> dict[str, object]:
    """The agent's history job ({} until the stop has been recorded)."""
    rows = sql.rows("SELECT * FROM history_job WHERE agent_id = %(id)s", id=agent_id)
    assert len(rows) <= 1
    return rows[0] if rows else {}


def test_a_transcript_sent_before_the_stop_completes_the_history_without_asking_agora(
    database_url: str, sql: Sql, tmp_path: Path
) -> None:
    with ledger(database_url, tmp_path) as run:
        agent_id = run.start("early-103")
        run.stop(agent_id, notify=[103, 102, 112])
        run.delivered()
        poll(lambda: job(sql, agent_id).get("status") == "done")
        history = run.history(agent_id)
        assert run.calls("history", agent_id) == 0
        assert run.calls("turns", agent_id) == 1
    assert history["status"] == "complete"
    assert history["source"] == "webhook"
    assert history["reason"] is None
    assert history["contents"] == [
        {"role": "user", "content": "question 0"},
        {"role": "assistant", "content": "answer 0"},
        {"role": "user", "content": "question 1"},
        {"role": "assistant", "content": "answer 1"},
    ]
    assert [t["turn_id"] for t in history["turns"]] == [1, 2]
    assert job(sql, agent_id)["history_call"] == "skipped"


def test_a_transcript_sent_after_the_stop_completes_the_waiting_history(
    database_url: str, sql: Sql, tmp_path: Path
) -> None:
    with ledger(database_url, tmp_path, HISTORY_GRACE_S="300") as run:
        agent_id = run.start("late-103")
        run.stop(agent_id, notify=[102, 112])
        # /history answers 404 once the agent stopped: the job waits out the grace period.
        poll(
            lambda: (
                job(sql, agent_id).get("status") == "queued"
                and job(sql, agent_id).get("turns_call")
            )
        )
        assert run.history(agent_id)["status"] == "pending"
        # The 103 arrives late, on its own.
        run.send(agent_id, 103, contents=[{"role": "user", "content": "late words"}])
        history = run.settled(agent_id)
        done = poll(lambda: (j := job(sql, agent_id)).get("status") == "done" and j)
        assert run.calls("history", agent_id) == 1
    assert (history["status"], history["source"]) == ("complete", "webhook")
    assert history["contents"] == [{"role": "user", "content": "late words"}]
    assert done["history_call"] == "not_found"


def test_without_a_webhook_the_transcript_from_the_history_api_is_kept(
    database_url: str, sql: Sql, tmp_path: Path
) -> None:
    with ledger(database_url, tmp_path, sim={"keep_history_after_stop": True}) as run:
        agent_id = run.start("api-only", turns=3)
        run.stop(agent_id, notify=[102])
        poll(lambda: job(sql, agent_id).get("status") == "done")
        history = run.history(agent_id)
        assert run.calls("history", agent_id) == 1
    assert (history["status"], history["source"], history["reason"]) == ("complete", "api", None)
    assert len(history["contents"]) == 6
    assert [t["source"] for t in history["turns"]] == ["api", "api", "api"]


def test_with_no_transcript_anywhere_the_history_is_unavailable_after_the_grace_period(
    database_url: str, sql: Sql, tmp_path: Path
) -> None:
    with ledger(database_url, tmp_path, HISTORY_GRACE_S="1") as run:
        agent_id = run.start("silent")
        run.stop(agent_id, notify=[102])
        history = run.settled(agent_id)
        assert run.calls("history", agent_id) == 1
        assert (history["status"], history["reason"]) == ("unavailable", "history_not_found")
        assert history["source"] is None and history["contents"] == []
        assert job(sql, agent_id).get("status") == "done"
        # A transcript that turns up later still completes it, and nothing is fetched again.
        run.send(agent_id, 103, contents=[{"role": "user", "content": "hi"}])
        poll(lambda: run.history(agent_id)["status"] == "complete")
        assert run.calls("history", agent_id) == 1


def test_rate_limits_and_outages_are_retried_until_the_history_arrives(
    database_url: str, tmp_path: Path
) -> None:
    with ledger(database_url, tmp_path, sim={"keep_history_after_stop": True}) as run:
        run.sim.call(run.sim.backend.inject, "history", [429, 503], retry_after="1")
        agent_id = run.start("flaky")
        run.stop(agent_id, notify=[102])
        history = run.settled(agent_id)
        calls = [c for c in run.sim.backend.calls if c.endpoint == "history"]
    assert [c.status for c in calls] == [429, 503, 200]
    assert calls[1].at - calls[0].at >= 0.95  # Retry-After: 1 was honoured
    assert (history["status"], history["source"]) == ("complete", "api")


def test_turns_spread_over_several_pages_are_all_stored(
    database_url: str, sql: Sql, tmp_path: Path
) -> None:
    with ledger(database_url, tmp_path) as run:
        agent_id = run.start("chatty", turns=450, quiet_turns=True)
        run.stop(agent_id, notify=[102, 103])
        poll(lambda: job(sql, agent_id).get("status") == "done")
        assert run.calls("turns", agent_id) == 3
    assert sql.value("SELECT count(*) FROM agent_turn WHERE source = 'api'") == 450
    assert sql.value("SELECT max(turn_id) FROM agent_turn") == 450


def test_a_long_session_of_thousands_of_turns_is_stored_once(
    database_url: str, sql: Sql, tmp_path: Path
) -> None:
    """8,000 turns were fetched 21 times and none stored: one insert held a bind parameter per
    field and turn, past the driver's limit."""
    with ledger(database_url, tmp_path) as run:
        agent_id = run.start("marathon", turns=8000, quiet_turns=True)
        run.stop(agent_id, notify=[102, 103])
        poll(lambda: job(sql, agent_id).get("status") == "done", timeout=60)
        assert run.calls("turns", agent_id) == 40
        assert job(sql, agent_id)["turns_call"] == "ok"
    assert sql.value("SELECT count(*) FROM agent_turn WHERE source = 'api'") == 8000
    assert sql.value("SELECT attempts FROM history_job") == 1


def test_a_job_whose_worker_died_is_taken_over_after_its_lease_and_done_once(
    database_url: str, sql: Sql, tmp_path: Path
) -> None:
    with ledger(
        database_url,
        tmp_path,
        with_worker=False,
        sim={"keep_history_after_stop": True},
        HISTORY_LEASE_S="1.5",
        LOG_LEVEL="info",
    ) as run:
        agent_id = run.start("orphan")
        run.sim.call(run.sim.backend.inject, "history", latency_s=30)
        run.stop(agent_id, notify=[102])
        run.delivered()
        first = run.worker("worker-a")
        owner = poll(lambda: job(sql, agent_id).get("lease_owner"))
        first.terminate(signal.SIGKILL)
        run.sim.call(run.sim.backend.inject, "history", latency_s=0)
        second = run.worker("worker-b")
        try:
            done = poll(lambda: (j := job(sql, agent_id)).get("status") == "done" and j, timeout=20)
            history = run.settled(agent_id)
        finally:
            second.terminate()
        log = second.output()
    assert done["attempts"] == 2  # claimed by the dead worker, then once more
    assert done["lease_owner"] is None and done["finished_at"] is not None
    assert (history["status"], history["source"]) == ("complete", "api")
    assert "history_job_taken_over" in log and str(owner) in log
    assert log.count('"history_settled"') == 1


def test_two_workers_racing_over_200_stopped_agents_do_every_job_exactly_once(
    database_url: str, sql: Sql, tmp_path: Path
) -> None:
    with ledger(
        database_url,
        tmp_path,
        with_worker=False,
        sim={"keep_history_after_stop": True},
        LOG_LEVEL="info",
    ) as run:
        agents = [run.start(f"agent-{i}", turns=1) for i in range(200)]
        for agent_id in agents:
            run.stop(agent_id, notify=[102])
        run.delivered(timeout=60)
        assert sql.value("SELECT count(*) FROM history_job WHERE status = 'queued'") == 200
        # Every job falls due at the same moment, once both workers are surely up.
        sql.execute("UPDATE history_job SET due_at = now() + interval '2 seconds'")
        workers = [run.worker(f"worker-{i}") for i in range(2)]
        try:
            poll(lambda: all('"worker_started"' in w.output() for w in workers))
            poll(
                lambda: sql.value("SELECT count(*) FROM history_job WHERE status = 'done'") == 200,
                timeout=60,
            )
        finally:
            for worker in workers:
                worker.terminate()
        history_calls = {a: run.calls("history", a) for a in agents}
        turns_calls = {a: run.calls("turns", a) for a in agents}
    assert set(history_calls.values()) == {1}
    assert set(turns_calls.values()) == {1}
    assert sql.rows("SELECT DISTINCT attempts FROM history_job") == [{"attempts": 1}]
    assert (
        sql.value("SELECT count(*) FROM history WHERE status = 'complete' AND source = 'api'")
        == 200
    )
    settled = [w.output().count('"history_settled"') for w in workers]
    assert sum(settled) == 200 and min(settled) > 0  # both took part


def test_a_worker_told_to_stop_finishes_its_job_first(
    database_url: str, sql: Sql, tmp_path: Path
) -> None:
    with ledger(
        database_url, tmp_path, with_worker=False, sim={"keep_history_after_stop": True}
    ) as run:
        agent_id = run.start("graceful")
        run.sim.call(run.sim.backend.inject, "history", latency_s=1.0)
        run.stop(agent_id, notify=[102])
        worker = run.worker("worker")
        poll(lambda: job(sql, agent_id).get("status") == "running")
        code = worker.terminate(signal.SIGTERM)
        assert code == 0
        assert job(sql, agent_id).get("status") == "done"
        assert run.history(agent_id)["status"] == "complete"


def test_a_transcript_committed_while_the_job_settles_still_completes_the_job(
    client: TestClient, sql: Sql, make_settings: Callable[..., config.Settings]
) -> None:
    """The job reads the history as pending just as a 103 commits: it must not wait out the
    grace period (it did, requeued with the 103's expedite already past)."""
    post(client, deliver(101, payload("a1", start_ts=1751400000)))
    post(client, deliver(102, payload("a1", start_ts=1751400000, stop_ts=1751400612)))
    with server.in_thread([sim_app()]) as sim:  # it knows no a1: /history and /turns are 404
        settings = make_settings(
            AGORA_API_BASE_URL=sim.api_base_url,
            AGORA_CUSTOMER_ID=CUSTOMER_ID,
            AGORA_CUSTOMER_SECRET=CUSTOMER_SECRET,
            HISTORY_GRACE_S="600",
        )
        # The 103's transaction, stored but not yet committed when the job settles.
        with psycopg.connect(sql.url) as webhook:
            webhook.execute(
                "UPDATE history SET status = 'complete', source = 'webhook' WHERE agent_id = 'a1'"
            )

            async def scenario() -> history.Settled:
                async with worker.open_deps(settings) as deps:
                    async with deps.engine.begin() as conn:
                        claimed = await jobs.claim(conn, owner=deps.owner, lease_s=30)
                    assert claimed is not None
                    task = asyncio.create_task(history.run_job(deps, claimed))
                    await until(lambda: task.done() or sql.value(WAITING_ON_A_LOCK) > 0)
                    webhook.execute(EXPEDITE)
                    webhook.commit()
                    return await asyncio.wait_for(task, timeout=10)

            settled = asyncio.run(scenario())
    assert settled == "complete"
    assert job(sql, "a1")["status"] == "done"


WAITING_ON_A_LOCK = (
    "SELECT count(*) FROM pg_stat_activity"
    " WHERE datname = current_database() AND wait_event_type = 'Lock'"
)
# What the 103's transaction does after storing the transcript (`jobs.expedite`).
EXPEDITE = (
    "UPDATE history_job SET due_at = now()"
    " WHERE agent_id = 'a1' AND status = 'queued' AND due_at > now()"
)


def test_turns_stored_by_a_job_and_by_a_112_at_the_same_moment_do_not_deadlock(
    client: TestClient, sql: Sql, make_settings: Callable[..., config.Settings]
) -> None:
    """A webhook holds the agent's row and stores turns; a job stores the same turns meanwhile.
    The job used to insert first and then wait for the agent row (its foreign key), while the
    webhook waited for the job's insert: PostgreSQL aborted one of them."""
    post(client, deliver(101, payload("a1", start_ts=1751400000)))
    post(client, deliver(102, payload("a1", start_ts=1751400000, stop_ts=1751400612)))
    with server.in_thread([sim_app()]) as sim:
        sim.call(sim.backend.join, APP_ID, name="a1", channel="chan-a1", agent_id="a1")
        sim.call(sim.backend.talk, "a1", user="hi", assistant="hello", quiet=True)
        settings = make_settings(
            AGORA_API_BASE_URL=sim.api_base_url,
            AGORA_CUSTOMER_ID=CUSTOMER_ID,
            AGORA_CUSTOMER_SECRET=CUSTOMER_SECRET,
        )
        # The 112's transaction: the agent row locked first, as every webhook does.
        with psycopg.connect(sql.url) as webhook:
            webhook.execute("SELECT 1 FROM agent WHERE agent_id = 'a1' FOR UPDATE")

            async def scenario() -> history.Settled:
                async with worker.open_deps(settings) as deps:
                    async with deps.engine.begin() as conn:
                        claimed = await jobs.claim(conn, owner=deps.owner, lease_s=30)
                    assert claimed is not None
                    task = asyncio.create_task(history.run_job(deps, claimed))
                    await until(lambda: task.done() or sql.value(WAITING_ON_A_LOCK) > 0)
                    await asyncio.to_thread(
                        webhook.execute,
                        "INSERT INTO agent_turn (app_id, agent_id, turn_id, data, source)"
                        f" VALUES ('{APP_ID}', 'a1', 1, '{{}}', 'webhook') ON CONFLICT DO NOTHING",
                    )
                    webhook.commit()
                    return await asyncio.wait_for(task, timeout=10)

            settled = asyncio.run(scenario())
    assert settled == "complete"
    assert sql.rows("SELECT turn_id, source FROM agent_turn") == [
        {"turn_id": 1, "source": "webhook"}
    ]
    assert job(sql, "a1")["turns_call"] == "ok"


# Ids a notification may carry that must never reach a URL (CONTRACT §3, "Agent ids never steer
# requests"): a path climb, a query, an encoded slash, a non-ASCII letter, one char too long.
NOT_PLAIN = ["../../../../admin/secret", "q?evil=1&", "a%2Fb", "agënt-1", "a" * 129]


def test_agent_ids_that_are_not_plain_never_reach_agora_and_their_histories_end_unavailable(
    database_url: str, sql: Sql, tmp_path: Path
) -> None:
    with ledger(database_url, tmp_path, HISTORY_GRACE_S="1") as run:
        plain = run.start("plain")  # the control: its calls do reach the simulator
        for number, agent_id in enumerate(NOT_PLAIN):
            run.sim.call(
                run.sim.backend.join,
                APP_ID,
                name=f"odd-{number}",
                channel=f"channel-odd-{number}",
                agent_id=agent_id,
            )
            run.stop(agent_id, notify=[102])
        run.stop(plain, notify=[102])
        run.delivered()
        poll(lambda: all(job(sql, a).get("status") == "done" for a in [plain, *NOT_PLAIN]))
        asked = run.sim.call(lambda: [target.split("?")[0] for target in run.sim.backend.requests])
    project = f"{server.API_PATH}/v2/projects/{APP_ID}"
    assert f"{project}/agents/{plain}/history" in asked
    assert set(asked) <= {
        f"{project}/agents",  # reconciliation's listing
        f"{project}/agents/{plain}",
        f"{project}/agents/{plain}/history",
        f"{project}/agents/{plain}/turns",
    }
    for agent_id in NOT_PLAIN:
        history = sql.rows(
            "SELECT status, reason FROM history WHERE agent_id = %(id)s", id=agent_id
        )
        assert history == [{"status": "unavailable", "reason": "agent_id_not_plain"}], agent_id
        done = job(sql, agent_id)
        assert (done["history_call"], done["turns_call"]) == ("invalid_id", "invalid_id")
