"""Reconciliation against Agora's REST API: the simulator's NCS loses webhooks, a pass repairs.

The service runs as a real process receiving the simulator's webhooks (those not lost on
purpose); passes run in-process (`reconcile.run_pass`) against the same database and simulator,
so their summaries can be asserted on, or as `convoai-ledger reconcile --once`.
"""

from __future__ import annotations

import asyncio
import dataclasses
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import psycopg
import pytest
from structlog.testing import capture_logs

from service import config, reconcile, worker
from service.simulator import ncs
from service.simulator.backend import Outgoing
from tests.factories import APP_ID, Sql, deliver, payload, poll
from tests.simulation import FAST_DELIVERY, Ledger, ledger, ours, states_entered_twice, truth

pytestmark = pytest.mark.slow

ACTIVE = "('STARTING', 'RUNNING', 'RECOVERING', 'STOPPING')"


def losing() -> ncs.DeliveryPolicy:
    """NCS that loses every 101 of agents named `unjoined…`, every 102 of those named `unleft…`,
    and both of those named `vanished…` (whose 103 and 112 still arrive)."""

    def lose(outgoing: Outgoing) -> bool:
        name = str(outgoing.payload.get("name", ""))
        return (outgoing.event_type == 101 and name.startswith(("unjoined", "vanished"))) or (
            outgoing.event_type == 102 and name.startswith(("unleft", "vanished"))
        )

    return dataclasses.replace(FAST_DELIVERY, lose=lose)


@contextmanager
def losing_ledger(database_url: str, log_dir: Path, **env: str) -> Iterator[Ledger]:
    with ledger(database_url, log_dir, with_worker=False, sim={"delivery": losing()}, **env) as run:
        yield run


def sent(run: Ledger) -> None:
    """Wait until every notification not lost on purpose has been delivered."""
    run.sim.run(lambda: run.sim.sender.drain(30), timeout=35)
    unsent = [d for d in run.sim.sender.deliveries if d.outcome not in ("delivered", "dropped")]
    assert not unsent, unsent


def settings_for(run: Ledger, **env: str) -> config.Settings:
    return config.load({**run.env, "RECONCILE_GRACE_S": "0", **env})


def reconcile_once(run: Ledger, **env: str) -> reconcile.Summary:
    async def once() -> reconcile.Summary:
        async with worker.open_deps(settings_for(run, **env)) as deps:
            return await reconcile.run_pass(deps, app_id=APP_ID)

    return asyncio.run(once())


def transitions(sql: Sql, agent_id: str) -> list[tuple[str, str, str, str]]:
    rows = sql.rows(
        "SELECT from_state, to_state, source, cause FROM agent_transition"
        " WHERE agent_id = %(id)s ORDER BY id",
        id=agent_id,
    )
    return [(r["from_state"], r["to_state"], r["source"], r["cause"]) for r in rows]


def stop_failing(run: Ledger, agent_id: str) -> None:
    run.sim.call(run.sim.backend.stop, agent_id, status="FAILED", message="RTC connection error")


def test_one_pass_repairs_lost_joins_and_leaves_across_list_pages(
    database_url: str, sql: Sql, tmp_path: Path
) -> None:
    with losing_ledger(database_url, tmp_path) as run:
        kept = [run.start(f"kept-{i}", turns=0) for i in range(60)]
        unjoined = [run.start(f"unjoined-{i}", turns=0) for i in range(50)]
        unleft = [run.start(f"unleft-{i}", turns=0) for i in range(30)]
        ended = [run.start(f"ended-{i}", turns=0) for i in range(10)]
        vanished = [run.start(f"vanished-{i}", turns=0) for i in range(5)]
        for number, agent_id in enumerate(unleft):
            if number % 5 == 0:
                stop_failing(run, agent_id)
            else:
                run.stop(agent_id)
        for agent_id in [*ended, *vanished]:
            run.stop(agent_id)
        sent(run)
        # The unjoined are unknown, the unleft still RUNNING, the vanished IDLE (103 and 112 only).
        assert sql.count("agent") == 105
        assert sql.value(f"SELECT count(*) FROM agent WHERE state IN {ACTIVE}") == 90
        assert sql.value("SELECT count(*) FROM agent WHERE state = 'IDLE'") == 5

        summary = reconcile_once(run)
        calls = {endpoint: run.calls(endpoint) for endpoint in ("list", "query")}
        again = reconcile_once(run)
        expected = truth(run)

    assert (summary.outcome, summary.repairs) == (
        "completed",
        {"adopted": 50, "closed": 35, "gone": 0},
    )
    assert (summary.listed, summary.queried, summary.agora_errors) == (110, 35, 0)
    # One listing per live state, the 110 RUNNING over two pages; a query per missing stop.
    assert calls == {"list": 4, "query": 35}
    assert ours(sql) == expected
    live = sum(1 for agent in expected.values() if agent["state"] == "RUNNING")
    assert sql.value(f"SELECT count(*) FROM agent WHERE state IN {ACTIVE}") == live == 110
    assert transitions(sql, unjoined[0]) == [("IDLE", "RUNNING", "reconcile", "reconcile_running")]
    assert transitions(sql, unleft[0])[-1] == (
        "RUNNING",
        "FAILED",
        "reconcile",
        "reconcile_failed",
    )
    assert transitions(sql, unleft[1])[-1] == (
        "RUNNING",
        "STOPPED",
        "reconcile",
        "reconcile_stopped",
    )
    assert transitions(sql, vanished[0]) == [
        ("IDLE", "RUNNING", "reconcile", "agent_joined"),  # implied by the stop's start_ts
        ("RUNNING", "STOPPED", "reconcile", "reconcile_stopped"),
    ]
    assert transitions(sql, kept[0]) == [("IDLE", "RUNNING", "webhook", "agent_joined")]
    jobs = {r["agent_id"] for r in sql.rows("SELECT agent_id FROM history_job")}
    assert jobs == set(unleft) | set(ended) | set(vanished)
    # The next pass finds nothing left to repair and changes nothing.
    assert (again.outcome, again.repairs, again.updated) == (
        "completed",
        {"adopted": 0, "closed": 0, "gone": 0},
        0,
    )
    assert states_entered_twice(sql) == []


def test_an_agent_agora_no_longer_knows_is_closed_when_last_seen_alive(
    database_url: str, sql: Sql, tmp_path: Path
) -> None:
    with losing_ledger(database_url, tmp_path) as run:
        agent_id = run.start("forgotten", turns=0)
        sent(run)
        assert reconcile_once(run).repairs == {"adopted": 0, "closed": 0, "gone": 0}
        seen = sql.value("SELECT seen_live_at FROM agent WHERE agent_id = %(id)s", id=agent_id)
        run.sim.call(run.sim.backend.agents.pop, agent_id)  # from now on its query answers 404
        summary = reconcile_once(run)
    assert seen is not None
    assert summary.repairs == {"adopted": 0, "closed": 0, "gone": 1}
    row = sql.rows("SELECT * FROM agent WHERE agent_id = %(id)s", id=agent_id)[0]
    assert (row["state"], row["stop_status"], row["stop_message"]) == (
        "STOPPED",
        "STOPPED",
        reconcile.GONE_MESSAGE,
    )
    assert row["stopped_at"] == row["active_until"] == seen
    assert transitions(sql, agent_id)[-1] == ("RUNNING", "STOPPED", "reconcile", "reconcile_gone")
    assert sql.value("SELECT count(*) FROM history_job WHERE agent_id = %(id)s", id=agent_id) == 1


def test_agent_ids_that_are_not_plain_are_neither_adopted_nor_queried(
    database_url: str, sql: Sql, tmp_path: Path
) -> None:
    listed, held = "../../../../admin/secret", "q?evil=1&"
    with losing_ledger(database_url, tmp_path) as run:
        for name, agent_id in [("unjoined-odd", listed), ("unleft-odd", held)]:
            run.sim.call(
                run.sim.backend.join, APP_ID, name=name, channel=f"ch-{name}", agent_id=agent_id
            )
        plain = run.start("unjoined-plain", turns=0)
        run.stop(held)  # its 102 is lost: we hold it RUNNING, Agora no longer lists it
        sent(run)
        before = run.sim.call(lambda: len(run.sim.backend.requests))
        with capture_logs() as logs:
            summary = reconcile_once(run)
        asked = run.sim.call(lambda: run.sim.backend.requests[before:])
    assert (summary.outcome, summary.listed, summary.not_plain) == ("completed", 2, 2)
    assert summary.repairs == {"adopted": 1, "closed": 0, "gone": 0}  # the plain one only
    assert summary.queried == 0
    assert asked and all(target.split("?")[0].endswith(f"/{APP_ID}/agents") for target in asked)
    assert sql.value("SELECT state FROM agent WHERE agent_id = %(id)s", id=plain) == "RUNNING"
    assert sql.value("SELECT count(*) FROM agent WHERE agent_id = %(id)s", id=listed) == 0
    assert sql.value("SELECT state FROM agent WHERE agent_id = %(id)s", id=held) == "RUNNING"
    skipped = [e for e in logs if e["event"] == "reconcile_agent_id_not_plain"]
    assert sorted((e["agent_id"], e["listed"]) for e in skipped) == [(listed, True), (held, False)]


def test_nothing_agora_reports_overrides_a_stop_we_already_hold(
    database_url: str, sql: Sql, tmp_path: Path
) -> None:
    with losing_ledger(database_url, tmp_path) as run:
        agent_id = run.start("stopped-here", turns=0)
        sent(run)
        left = deliver(102, payload(agent_id, start_ts=int(time.time()), status="STOPPED"))
        answer = httpx.post(
            f"{run.service.url}/v1/webhooks/agora/{APP_ID}",
            content=left.body,
            headers=left.headers,
            timeout=5,
        )
        assert answer.status_code == 200
        summary = reconcile_once(run)  # Agora still lists it RUNNING
    assert (summary.listed, summary.repairs, summary.updated) == (
        1,
        {"adopted": 0, "closed": 0, "gone": 0},
        0,
    )
    assert sql.value("SELECT state FROM agent WHERE agent_id = %(id)s", id=agent_id) == "STOPPED"
    assert [t[2] for t in transitions(sql, agent_id)] == ["webhook", "webhook"]


def test_a_pass_cut_short_by_agora_503s_repairs_nothing_wrongly_and_the_next_completes(
    database_url: str, sql: Sql, tmp_path: Path
) -> None:
    with losing_ledger(database_url, tmp_path, AGORA_RETRY_ATTEMPTS="2") as run:
        for i in range(95):
            run.start(f"kept-{i}", turns=0)
        unjoined = [run.start(f"unjoined-{i}", turns=0) for i in range(10)]
        unleft = [run.start(f"unleft-{i}", turns=0) for i in range(10)]
        for agent_id in unleft:
            run.stop(agent_id)
        sent(run)
        before = ours(sql)

        # The second page of the RUNNING listing answers 503, twice: nothing may change.
        run.sim.call(run.sim.backend.inject, "list", [503, 503], after=2)
        listing_failed = reconcile_once(run)
        assert ours(sql) == before
        assert sql.value("SELECT count(*) FROM agent_transition WHERE source = 'reconcile'") == 0

        # The listing works, then queries fail after three: a partial pass, each repair whole.
        run.sim.call(run.sim.backend.inject, "query", [503] * 30, after=3)
        query_failed = reconcile_once(run)
        run.sim.call(run.sim.backend.faults["query"].statuses.clear)
        partial = ours(sql)

        completed = reconcile_once(run)
        expected = truth(run)

    assert (listing_failed.outcome, listing_failed.agora_errors) == ("failed", 1)
    assert listing_failed.repairs == {"adopted": 0, "closed": 0, "gone": 0}
    assert query_failed.outcome == "failed" and query_failed.agora_errors >= 1
    assert query_failed.repairs == {"adopted": 10, "closed": 3, "gone": 0}
    for agent_id in unjoined:
        assert partial[agent_id] == expected[agent_id]
    for agent_id in unleft:  # either repaired exactly, or untouched
        assert partial[agent_id] in (expected[agent_id], before[agent_id])
    assert sum(partial[a] == expected[a] for a in unleft) == 3
    assert completed.outcome == "completed"
    assert completed.repairs == {"adopted": 0, "closed": 7, "gone": 0}
    assert ours(sql) == expected
    assert states_entered_twice(sql) == []


def test_a_pass_killed_half_way_leaves_whole_repairs_and_releases_its_lease(
    database_url: str, sql: Sql, tmp_path: Path
) -> None:
    with losing_ledger(database_url, tmp_path) as run:
        unleft = [run.start(f"unleft-{i}", turns=0) for i in range(16)]
        for agent_id in unleft:
            run.stop(agent_id)
        sent(run)
        run.sim.call(run.sim.backend.inject, "query", latency_s=0.5)
        env = {**run.env, "RECONCILE_GRACE_S": "0", "LOG_LEVEL": "error"}
        command = [sys.executable, "-m", "service", "reconcile", "--once"]
        process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL)
        try:
            poll(lambda: sql.value("SELECT count(*) FROM history_job") > 0)
        finally:
            process.kill()
            process.wait()
        closed = sql.value("SELECT count(*) FROM agent WHERE state = 'STOPPED'")
        # Every agent is either untouched or wholly repaired: stop, interval, transition, job.
        assert (
            sql.rows(
                "SELECT agent_id FROM agent a WHERE (state = 'STOPPED') <> ("
                " stopped_at IS NOT NULL AND active_until IS NOT NULL"
                " AND EXISTS (SELECT 1 FROM history_job j WHERE j.agent_id = a.agent_id)"
                " AND EXISTS (SELECT 1 FROM agent_transition t"
                "  WHERE t.agent_id = a.agent_id AND t.cause = 'reconcile_stopped'))"
            )
            == []
        )
        run.sim.call(run.sim.backend.inject, "query", latency_s=0)
        rest = reconcile_once(run)
        expected = truth(run)
    assert 0 < closed < 16
    assert (rest.outcome, rest.repairs["closed"]) == ("completed", 16 - closed)
    assert ours(sql) == expected
    assert states_entered_twice(sql) == []


def test_two_workers_reconciling_at_once_record_every_repair_once(
    database_url: str, sql: Sql, tmp_path: Path
) -> None:
    with losing_ledger(database_url, tmp_path) as run:
        unjoined = [run.start(f"unjoined-{i}", turns=0) for i in range(20)]
        unleft = [run.start(f"unleft-{i}", turns=0) for i in range(10)]
        for agent_id in unleft:
            run.stop(agent_id)
        sent(run)
        run.sim.call(run.sim.backend.inject, "list", latency_s=0.3)
        settings = settings_for(run)

        async def race() -> list[reconcile.Summary]:
            async with worker.open_deps(settings) as one, worker.open_deps(settings) as two:
                return list(
                    await asyncio.gather(
                        reconcile.run_pass(one, app_id=APP_ID),
                        reconcile.run_pass(two, app_id=APP_ID),
                    )
                )

        summaries = asyncio.run(race())
        expected = truth(run)
    assert sorted(s.outcome for s in summaries) == ["completed", "skipped"]
    assert sum(s.repairs["adopted"] for s in summaries) == 20
    assert sum(s.repairs["closed"] for s in summaries) == 10
    assert ours(sql) == expected
    assert states_entered_twice(sql) == []
    assert all(len(transitions(sql, a)) == 1 for a in unjoined)
    assert all(len(transitions(sql, a)) == 2 for a in unleft)


def test_a_pass_is_skipped_while_another_process_holds_the_apps_lease(
    database_url: str, sql: Sql, tmp_path: Path
) -> None:
    with losing_ledger(database_url, tmp_path) as run:
        run.start("unjoined-0", turns=0)
        sent(run)
        with psycopg.connect(sql.url, autocommit=True) as holder:
            holder.execute("SELECT pg_advisory_lock(%s)", (reconcile.lock_key(APP_ID),))
            skipped = reconcile_once(run)
            assert run.calls("list") == 0
        completed = reconcile_once(run)
    assert (skipped.outcome, skipped.repairs["adopted"]) == ("skipped", 0)
    assert (completed.outcome, completed.repairs["adopted"]) == ("completed", 1)


def test_starts_and_stops_younger_than_the_grace_are_left_to_their_webhooks(
    database_url: str, sql: Sql, tmp_path: Path
) -> None:
    with losing_ledger(database_url, tmp_path) as run:
        unjoined = run.start("unjoined-0", turns=0)
        unleft = run.start("unleft-0", turns=0)
        run.stop(unleft)
        sent(run)
        summary = reconcile_once(run, RECONCILE_GRACE_S="600")
    assert (summary.outcome, summary.deferred) == ("completed", 2)
    assert summary.repairs == {"adopted": 0, "closed": 0, "gone": 0}
    assert sql.rows("SELECT agent_id FROM agent") == [{"agent_id": unleft}]
    assert sql.value("SELECT state FROM agent") == "RUNNING"
    assert unjoined not in ours(sql)


class Clock:
    """The simulator's clock, set back to start sessions in the past."""

    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.time() + self.offset


def test_agents_older_than_the_session_limit_are_queried_on_every_pass(
    database_url: str, sql: Sql, tmp_path: Path
) -> None:
    clock = Clock()
    sim = {"delivery": losing(), "clock": clock}
    with ledger(database_url, tmp_path, with_worker=False, sim=sim) as run:
        clock.offset = -80 * 3600
        overdue = run.start("ancient", turns=0)
        unleft = run.start("unleft-ancient", turns=0)
        clock.offset = 0
        run.stop(unleft)
        sent(run)
        first = reconcile_once(run)
        second = reconcile_once(run)
        queries = run.calls("query", overdue)
        expected = truth(run)
    assert (first.listed, first.overdue, first.repairs["closed"]) == (0, 1, 1)
    assert (second.overdue, second.repairs["closed"]) == (1, 0)
    assert queries == 2
    assert ours(sql) == expected


def reconcile_command(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "service", "reconcile", *args],
        env={"PATH": "", **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_the_reconcile_command_prints_a_summary_and_fails_when_agora_does(
    database_url: str, sql: Sql, tmp_path: Path
) -> None:
    with losing_ledger(database_url, tmp_path) as run:
        run.start("unjoined-0", turns=0)
        sent(run)
        env = {**run.env, "RECONCILE_GRACE_S": "0", "LOG_LEVEL": "error"}
        done = reconcile_command(env, "--once", "--app", APP_ID)
        unreachable = {
            **env,
            "AGORA_API_BASE_URL": "http://127.0.0.1:9/api/conversational-ai-agent",
            "AGORA_RETRY_ATTEMPTS": "1",
        }
        failed = reconcile_command(unreachable, "--once")
        unknown = reconcile_command(env, "--once", "--app", "nope")
    assert done.returncode == 0, done.stderr
    (line,) = done.stdout.splitlines()
    assert line.startswith(f"{APP_ID}: completed in ")
    assert "1 listed live" in line and "repairs: 1 adopted, 0 closed, 0 gone" in line
    assert sql.value("SELECT state FROM agent") == "RUNNING"
    assert failed.returncode == 1
    (line,) = failed.stdout.splitlines()
    assert line.startswith(f"{APP_ID}: failed (Agora list failed) in ")
    assert line.endswith("1 Agora errors")
    assert unknown.returncode == 2 and "unknown app 'nope'" in unknown.stderr


def test_the_worker_reconciles_every_interval(database_url: str, sql: Sql, tmp_path: Path) -> None:
    with ledger(
        database_url,
        tmp_path,
        sim={"delivery": losing()},
        RECONCILE_INTERVAL_S="0.3",
        RECONCILE_GRACE_S="0",
    ) as run:
        unjoined = run.start("unjoined-0", turns=0)
        unleft = run.start("unleft-0", turns=0)
        run.stop(unleft)
        poll(
            lambda: (
                sql.rows("SELECT agent_id, state FROM agent ORDER BY state")
                == [
                    {"agent_id": unjoined, "state": "RUNNING"},
                    {"agent_id": unleft, "state": "STOPPED"},
                ]
            )
        )
    assert sql.rows("SELECT agent_id FROM history_job") == [{"agent_id": unleft}]
    assert transitions(sql, unjoined) == [("IDLE", "RUNNING", "reconcile", "reconcile_running")]
