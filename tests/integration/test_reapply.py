"""Nothing verified is lost: a notification that fails to apply is kept `unapplied` (in a second
transaction) and `convoai-ledger reapply` applies it once it can."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import Iterator

import pytest
from starlette.testclient import TestClient

from service import config, db, reapply
from service.app import create_app
from tests.factories import APP_ID, Sql, deliver, environment, payload, post, reader_headers

BOOM = """
CREATE FUNCTION refuse_boom() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.message = 'boom' THEN RAISE EXCEPTION 'refused for the test'; END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER refuse_boom BEFORE INSERT ON agent_error
    FOR EACH ROW EXECUTE FUNCTION refuse_boom();
"""


@pytest.fixture
def settings(database_url: str) -> config.Settings:
    return config.load(environment(database_url))


@pytest.fixture
def client(settings: config.Settings) -> Iterator[TestClient]:
    with TestClient(create_app(settings)) as test_client:
        yield test_client


def run_reapply(settings: config.Settings) -> reapply.Summary:
    async def run() -> reapply.Summary:
        engine = db.create_engine(settings.sqlalchemy_url)
        try:
            return await reapply.run(engine, settings, app_id=APP_ID)
        finally:
            await engine.dispose()

    return asyncio.run(run())


def test_a_notification_that_fails_to_apply_is_kept_then_reapplied(
    client: TestClient, sql: Sql, settings: config.Settings
) -> None:
    sql.execute(BOOM)
    post(client, deliver(101, payload("a1", start_ts=1751400000)))
    errors = [{"module": "tts", "code": 429, "message": "boom"}]
    failing = deliver(110, payload("a1", errors=errors))
    response = post(client, failing)
    assert (response.status_code, response.json()) == (200, {"status": "unapplied"})
    assert post(client, failing).json() == {"status": "duplicate"}
    assert sql.count("agent_error") == 0
    [listed] = client.get(f"/v1/apps/{APP_ID}/notifications", headers=reader_headers()).json()[
        "items"
    ]
    assert listed["notice_id"] == failing.notice_id
    assert listed["problem"].startswith("applying failed: ")

    # Still failing: it stays listed.
    assert run_reapply(settings) == reapply.Summary(app_id=APP_ID, still_unapplied=1)
    assert (
        sql.value("SELECT outcome FROM notification WHERE notice_id = %(n)s", n=failing.notice_id)
        == "unapplied"
    )

    sql.execute("DROP TRIGGER refuse_boom ON agent_error")
    assert run_reapply(settings) == reapply.Summary(app_id=APP_ID, applied=1)
    assert sql.rows("SELECT module, code, message FROM agent_error") == [
        {"module": "tts", "code": 429, "message": "boom"}
    ]
    assert sql.rows(
        "SELECT outcome, problem, agent_id FROM notification WHERE notice_id = %(n)s",
        n=failing.notice_id,
    ) == [{"outcome": "accepted", "problem": None, "agent_id": "a1"}]
    listed_now = client.get(f"/v1/apps/{APP_ID}/notifications", headers=reader_headers())
    assert listed_now.json()["items"] == []
    # Applying again changes nothing.
    assert run_reapply(settings) == reapply.Summary(app_id=APP_ID)
    assert sql.count("agent_error") == 1


def test_a_stop_kept_unapplied_is_applied_with_its_whole_lifecycle(
    client: TestClient, sql: Sql, settings: config.Settings
) -> None:
    """An older release left a 102 unapplied: reapply stops the agent and queues its history."""
    post(client, deliver(101, payload("a1", start_ts=1751400000)))
    stop = deliver(102, payload("a1", start_ts=1751400000, stop_ts=1751400612, status="FAILED"))
    sql.execute(
        "INSERT INTO notification (app_id, notice_id, product_id, event_type, outcome, problem,"
        " body) VALUES (%(app)s, %(n)s, 17, 102, 'unapplied', 'not understood', %(body)s::jsonb)",
        app=APP_ID,
        n=stop.notice_id,
        body=stop.body.decode(),
    )
    assert run_reapply(settings) == reapply.Summary(app_id=APP_ID, applied=1)
    assert sql.rows("SELECT state, active_until IS NOT NULL AS closed FROM agent") == [
        {"state": "FAILED", "closed": True}
    ]
    assert sql.count("history_job") == 1
    assert post(client, stop).json() == {"status": "duplicate"}


def test_what_this_release_still_cannot_apply_stays_listed(
    client: TestClient, sql: Sql, settings: config.Settings, database_url: str
) -> None:
    post(client, deliver(102, {"name": "no agent id"}))
    done = subprocess.run(
        [sys.executable, "-m", "service", "reapply", "--app", APP_ID],
        env={**environment(database_url), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert f"{APP_ID}: 0 applied, 1 still unapplied" in done.stdout
    assert sql.rows(
        "SELECT outcome, problem LIKE 'payload.agent_id%%' AS why FROM notification"
    ) == [{"outcome": "unapplied", "why": True}]
    unknown = subprocess.run(
        [sys.executable, "-m", "service", "reapply", "--app", "nobody"],
        env={**environment(database_url), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert unknown.returncode == 2 and "unknown app" in unknown.stderr
