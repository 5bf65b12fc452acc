"""The ingest benchmark's pgbench script runs the service's statements on the current schema.

`benchmarks/bench_ingest.py` measures the database's ceiling with pgbench running what the
service runs per notification (its first statement and PCU upkeep taken from the service's own
modules). If a migration or a statement change broke that script, the benchmark would fail much
later; here it fails at once, and the rows it leaves must be those of real notifications.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

from benchmarks import bench_ingest
from service import localdb
from tests.factories import Sql


def test_the_ceiling_script_stores_what_the_service_would(sql: Sql, tmp_path: Path) -> None:
    script = tmp_path / "ceiling.sql"
    script.write_text(bench_ingest.ceiling_script(bench_ingest.LIFECYCLE))
    sample = bench_ingest.notifications(1, prefix="sample")
    bodies = [f"-Dbody{event}={body.decode()}" for event, body, _ in sample]
    done = subprocess.run(
        [
            *(str(localdb.bin_path() / "pgbench"), "-n", "-M", "prepared", "-c", "1", "-t", "3"),
            *("-f", str(script), f"-Dapp={bench_ingest.APP_ID}", *bodies, sql.url),
        ],
        capture_output=True,
        text=True,
        check=False,
    )

    assert done.returncode == 0, done.stderr
    assert sql.value("SELECT count(*) FROM notification") == 9
    agents = sql.rows("SELECT state, active_from, active_until FROM agent")
    assert len(agents) == 3
    assert {agent["state"] for agent in agents} == {"STOPPED"}
    assert all(agent["active_until"] >= agent["active_from"] for agent in agents)
    assert sql.value("SELECT count(*) FROM agent_transition") == 6
    assert sql.value("SELECT count(*) FROM agent_metric") == 3
    assert sql.value("SELECT count(*) FROM history WHERE status = 'pending'") == 3
    assert sql.value("SELECT count(*) FROM history_job") == 3
    assert sql.value("SELECT count(*) FROM pcu_minute") >= 1
    assert sql.value("SELECT level FROM pcu_alarm") == "normal"
