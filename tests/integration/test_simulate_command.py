"""`convoai-ledger simulate` against a running service: sessions in, histories collected."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.factories import Sql, environment, poll
from tests.processes import ServiceProcess, free_port, serving
from tests.simulation import FAST

pytestmark = pytest.mark.slow


def test_simulated_sessions_flow_through_the_service_and_their_histories_are_collected(
    database_url: str, sql: Sql, tmp_path: Path
) -> None:
    sim_port = free_port()
    env = environment(
        database_url,
        **{
            **FAST,
            "AGORA_API_BASE_URL": f"http://127.0.0.1:{sim_port}/api/conversational-ai-agent",
        },
    )
    with serving(env, tmp_path, args=("serve", "--with-worker")) as (service,):
        simulate = ServiceProcess(
            [
                "simulate",
                "--target",
                service.url,
                "--port",
                str(sim_port),
                "--agents",
                "6",
                "--rate",
                "30",
                "--duration",
                "0.4",
                "--seed",
                "5",
                "--exit-when-done",
            ],
            {**env, "LOG_LEVEL": "info"},
            tmp_path / "simulate.log",
        )
        try:
            code = simulate.process.wait(timeout=60)
        finally:
            simulate.terminate()
        output = simulate.output()
        assert code == 0, output
        poll(lambda: sql.value("SELECT count(*) FROM history_job WHERE status = 'done'") == 6)
    assert sql.value("SELECT count(*) FROM agent WHERE state IN ('STOPPED', 'FAILED')") == 6
    assert sql.value("SELECT count(*) FROM history WHERE status = 'complete'") == 6
    assert sql.value("SELECT count(*) FROM agent_turn") >= 12
    assert '"simulation_finished"' in output
