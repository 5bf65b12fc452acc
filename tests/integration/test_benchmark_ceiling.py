"""The ingest benchmark's ceiling script runs on the current schema and stores what it says.

`benchmarks/ceiling.py` is a fixed pgbench script (a notification under its unique key, an agent
upsert, one transition, COMMIT). If a migration broke it, `make bench` would fail minutes in;
here it fails at once, and the rows it leaves must be the ones the script claims to write.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from benchmarks import bench_ingest, ceiling
from tests.factories import Sql


def test_the_ceiling_script_stores_a_notification_an_agent_and_a_transition_each_time(
    sql: Sql, tmp_path: Path
) -> None:
    body = bench_ingest.ceiling_body()
    script = ceiling.write_script(tmp_path)
    run = ceiling.command(sql.url, app_id="bench-app", body=body, clients=1, script=script)
    run[1:1] = ["-t", "3"]

    done = subprocess.run(run, capture_output=True, text=True, check=False)

    assert done.returncode == 0, done.stderr
    notifications = sql.rows("SELECT app_id, notice_id, outcome, body FROM notification")
    assert len(notifications) == 3
    assert len({row["notice_id"] for row in notifications}) == 3
    assert {row["app_id"] for row in notifications} == {"bench-app"}
    assert {row["outcome"] for row in notifications} == {"accepted"}
    assert all(row["body"] == json.loads(body) for row in notifications)
    assert json.loads(body)["eventType"] == 111
    assert sql.value("SELECT count(*) FROM agent WHERE state = 'RUNNING'") == 3
    transitions = sql.rows("SELECT agent_id, notice_id, to_state FROM agent_transition")
    assert len(transitions) == 3
    assert {row["to_state"] for row in transitions} == {"RUNNING"}
    assert {row["notice_id"] for row in transitions} == {row["notice_id"] for row in notifications}
