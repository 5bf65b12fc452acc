"""The threshold the PCU upkeep stores in SQL is `pcu.threshold`, for every count around the cap."""

from __future__ import annotations

import psycopg
import pytest

from service import pcu, rollup
from tests.factories import Sql


@pytest.mark.parametrize("warn_fraction", [0.5, 0.8, 1.0])
@pytest.mark.parametrize("cap", [1, 3, 20])
def test_the_settled_level_is_pcu_threshold(sql: Sql, cap: int, warn_fraction: float) -> None:
    params = {
        "app": "app-one",
        "active": rollup._ACTIVE,
        "cap": cap,
        "warn_at": warn_fraction * cap,
    }
    with psycopg.connect(sql.url, autocommit=True) as conn:
        conn.execute("INSERT INTO pcu_alarm (app_id) VALUES ('app-one')")
        previous = pcu.Threshold.NORMAL
        for current in range(cap + 2):
            if current:
                conn.execute(
                    "INSERT INTO agent (agent_id, app_id, state) VALUES (%s, 'app-one', 'RUNNING')",
                    [f"agent-{current}"],
                )
            row = conn.execute(rollup._SETTLE_SQL, params).fetchone()
            expected = pcu.threshold(current, cap=cap, warn_fraction=warn_fraction)

            assert row == (previous.value, expected.value, current)
            assert sql.value("SELECT level FROM pcu_alarm") == expected.value
            previous = expected
