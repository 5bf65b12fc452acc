from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Final

import numpy as np
import psycopg
import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import create_engine

from service import error_hours, events, latency, latency_ranks, schema, tables, usage
from tests.factories import Sql


def test_upgrading_an_empty_database_matches_the_metadata_exactly(empty_database_url: str) -> None:
    schema.upgrade(empty_database_url)
    engine = create_engine(empty_database_url)
    with engine.connect() as conn:
        context = MigrationContext.configure(
            conn, opts={"compare_type": True, "compare_server_default": True}
        )
        differences = compare_metadata(context, tables.metadata)
        revision = context.get_current_revision()
    engine.dispose()
    assert differences == []
    assert revision == schema.head()


def test_downgrade_to_base_and_back_up(empty_database_url: str) -> None:
    schema.upgrade(empty_database_url)
    from alembic import command

    command.downgrade(schema.alembic_config(empty_database_url), "base")
    sql = Sql(empty_database_url)
    assert (
        sql.value(
            "SELECT count(*) FROM pg_tables WHERE schemaname = 'public' AND tablename <> 'alembic_version'"
        )
        == 0
    )
    schema.upgrade(empty_database_url)
    assert sql.value("SELECT version_num FROM alembic_version") == schema.head()


def test_upgrading_twice_is_a_no_op(empty_database_url: str) -> None:
    schema.upgrade(empty_database_url)
    schema.upgrade(empty_database_url)
    assert Sql(empty_database_url).value("SELECT version_num FROM alembic_version") == schema.head()


def test_transitions_are_append_only(sql: Sql) -> None:
    sql.execute("INSERT INTO agent (agent_id, app_id) VALUES ('a', 'app')")
    sql.execute(
        "INSERT INTO agent_transition (app_id, agent_id, from_state, to_state, cause, source,"
        " event_at) VALUES ('app', 'a', 'IDLE', 'RUNNING', 'agent_joined', 'webhook', now())"
    )
    with pytest.raises(psycopg.errors.RaiseException, match="append-only"):
        sql.execute("UPDATE agent_transition SET to_state = 'FAILED'")
    with pytest.raises(psycopg.errors.RaiseException, match="append-only"):
        sql.execute("DELETE FROM agent_transition")
    assert sql.rows("SELECT to_state FROM agent_transition") == [{"to_state": "RUNNING"}]


def test_the_database_refuses_an_unknown_state(sql: Sql) -> None:
    with pytest.raises(psycopg.errors.CheckViolation):
        sql.execute("INSERT INTO agent (agent_id, app_id, state) VALUES ('a', 'app', 'DANCING')")


def test_agents_of_the_previous_revision_survive_the_upgrade_keyed_by_their_app(
    empty_database_url: str,
) -> None:
    """Rows written before agents were keyed by (app_id, agent_id) keep every fact, gain their
    app_id in every table, and another app may then use the same agent_id."""
    schema.upgrade(empty_database_url, "ad5159c0ab68")
    sql = Sql(empty_database_url)
    sql.execute(
        "INSERT INTO agent (agent_id, app_id, name, channel, state, started_at, active_from)"
        " VALUES ('a1', 'app-one', 'support', 'sess-1', 'RUNNING', '2026-01-01T10:00:00Z',"
        " '2026-01-01T10:00:00Z')"
    )
    sql.execute("INSERT INTO history (agent_id, status) VALUES ('a1', 'pending')")
    sql.execute(
        "INSERT INTO agent_transition (agent_id, from_state, to_state, cause, source, event_at)"
        " VALUES ('a1', 'IDLE', 'RUNNING', 'agent_joined', 'webhook', '2026-01-01T10:00:00Z')"
    )
    sql.execute(
        "INSERT INTO agent_error (agent_id, notice_id, position, module, code)"
        " VALUES ('a1', 'n-1', 0, 'tts', 429)"
    )
    sql.execute(
        "INSERT INTO agent_metric (agent_id, notice_id, position, asr_ttlw, figures)"
        " VALUES ('a1', 'n-2', 0, 300, '{}')"
    )
    sql.execute(
        "INSERT INTO agent_turn (agent_id, turn_id, data, source) VALUES ('a1', 1, '{}', 'api')"
    )
    sql.execute(
        "INSERT INTO call_state (agent_id, notice_id, direction, state)"
        " VALUES ('a1', 'n-3', 'inbound', 'START')"
    )
    sql.execute("INSERT INTO history_job (agent_id, app_id) VALUES ('a1', 'app-one')")

    schema.upgrade(empty_database_url)

    for table in (
        "agent",
        "history",
        "agent_transition",
        "agent_error",
        "agent_metric",
        "agent_turn",
        "call_state",
        "history_job",
    ):
        assert sql.rows(f"SELECT app_id, agent_id FROM {table}") == [
            {"app_id": "app-one", "agent_id": "a1"}
        ], table
    assert sql.rows("SELECT name, name_at, channel_at, label_versions FROM agent") == [
        {
            "name": "support",
            "name_at": sql.value("SELECT started_at FROM agent"),
            "channel_at": sql.value("SELECT started_at FROM agent"),
            "label_versions": {},
        }
    ]
    # The same agent_id in another app is another agent now.
    sql.execute("INSERT INTO agent (app_id, agent_id) VALUES ('app-two', 'a1')")
    sql.execute("INSERT INTO history (app_id, agent_id) VALUES ('app-two', 'a1')")
    assert sql.value("SELECT count(*) FROM agent WHERE agent_id = 'a1'") == 2


def test_turns_stored_before_the_per_label_rollup_are_marked_for_it(
    empty_database_url: str,
) -> None:
    """The revision that adds `latency_label_bucket` marks every hour holding turns (for the
    per-label rollup only, so the previous release's folder leaves them), and the folder then
    builds the rows of each label pair from them."""
    schema.upgrade(empty_database_url, "dbcc06e59ee8")
    sql = Sql(empty_database_url)
    sql.execute(
        "INSERT INTO agent (app_id, agent_id, labels) VALUES"
        """ ('app', 'a', '{"tier": "gold"}'), ('app', 'b', '{"tier": "free", "n": 1}')"""
    )
    sql.execute(
        "INSERT INTO agent_turn (app_id, agent_id, turn_id, end_at, e2e_latency_ms, data, source)"
        " VALUES ('app', 'a', 1, '2026-01-01T10:05:00Z', 900, '{}', 'api'),"
        " ('app', 'a', 2, '2026-01-01T10:50:00Z', 700, '{}', 'api'),"
        " ('app', 'b', 1, '2026-01-01T12:00:00Z', 500, '{}', 'api'),"
        " ('app', 'b', 2, NULL, 500, '{}', 'api')"
    )

    schema.upgrade(empty_database_url)

    day = datetime(2026, 1, 1, tzinfo=UTC)
    ten, noon = day + timedelta(hours=10), day + timedelta(hours=12)
    assert sql.rows("SELECT kind, hour FROM insight_change ORDER BY hour") == [
        {"kind": "latency_label", "hour": ten},
        {"kind": "latency_label", "hour": noon},
    ]
    with psycopg.connect(sql.url, autocommit=True) as conn:
        conn.execute(latency.FOLD_SQL, {"app": "app"})
    rows = sql.rows(
        "SELECT width, key, value, at, turns, e2e FROM latency_label_bucket"
        " ORDER BY width, key, value, at"
    )
    free, gold = [500] * 4, [700, 900, 900, 900]
    assert [tuple(row.values()) for row in rows] == [
        (3600, "tier", "free", noon, 1, free),
        (3600, "tier", "gold", ten, 2, gold),
        (86400, "tier", "free", day, 1, free),
        (86400, "tier", "gold", day, 2, gold),
    ]
    assert sql.value("SELECT count(*) FROM latency_bucket") == 0  # its marks were not taken


def test_errors_stored_before_the_error_rollup_are_marked_for_it(empty_database_url: str) -> None:
    """The revision that adds `error_hour` marks every hour holding timed errors, and the folder
    then builds its rows from them."""
    schema.upgrade(empty_database_url, "d5e973cd9b1f")
    sql = Sql(empty_database_url)
    sql.execute("INSERT INTO agent (app_id, agent_id) VALUES ('app', 'a'), ('app', 'b')")
    sql.execute(
        "INSERT INTO agent_error (app_id, agent_id, notice_id, position, module, code, event_at)"
        " VALUES ('app', 'a', 'n1', 0, 'llm', 500, '2026-01-01T10:05:00Z'),"
        " ('app', 'a', 'n2', 0, 'llm', 500, '2026-01-01T12:50:00Z'),"
        " ('app', 'b', 'n3', 0, 'llm', 500, '2026-01-01T12:00:00Z'),"
        " ('app', 'b', 'n4', 0, NULL, NULL, NULL)"
    )

    schema.upgrade(empty_database_url)

    day = datetime(2026, 1, 1, tzinfo=UTC)
    ten, noon = day + timedelta(hours=10), day + timedelta(hours=12)
    assert sql.rows("SELECT kind, hour FROM insight_change ORDER BY hour") == [
        {"kind": "errors", "hour": ten},
        {"kind": "errors", "hour": noon},
    ]
    with psycopg.connect(sql.url, autocommit=True) as conn:
        conn.execute(error_hours.FOLD_SQL, {"app": "app"})
    rows = sql.rows(
        "SELECT hour, module, code, errors, agents, gap_hours, gap_agents FROM error_hour"
        " ORDER BY hour"
    )
    assert [tuple(row.values()) for row in rows] == [
        (ten, "llm", 500, 1, 1, [], []),
        (noon, "llm", 500, 2, 2, [2], [1]),
    ]
    assert sql.value("SELECT count(*) FROM insight_change") == 0


def test_hours_folded_before_the_minute_counts_are_marked_for_them(
    empty_database_url: str,
) -> None:
    """The revision that adds `usage_count` marks every hour `usage_hour` holds, and the folder
    then writes that hour's starts and FAILED stops by minute."""
    schema.upgrade(empty_database_url, "02e48edec146")
    sql = Sql(empty_database_url)
    hour = datetime(2026, 1, 1, 10, tzinfo=UTC)
    sql.execute(
        "INSERT INTO agent (app_id, agent_id, state, active_from, active_until, stopped_at)"
        " VALUES ('app', 'a', 'STOPPED', %(a)s, %(b)s, %(b)s),"
        " ('app', 'b', 'FAILED', %(c)s, %(d)s, %(d)s)",
        a=hour + timedelta(minutes=5, seconds=59),
        b=hour + timedelta(minutes=20),
        c=hour + timedelta(minutes=5),
        d=hour + timedelta(minutes=59, seconds=30),
    )
    # As the previous release's folder left it.
    sql.execute(
        "INSERT INTO usage_hour (app_id, hour, labels, agent_us, sessions, failed)"
        " VALUES ('app', %(h)s, '{}', 4320000000, 2, 1)",
        h=hour,
    )

    schema.upgrade(empty_database_url)

    assert sql.rows("SELECT kind, hour FROM insight_change") == [{"kind": "usage", "hour": hour}]
    with psycopg.connect(sql.url, autocommit=True) as conn:
        conn.execute(usage.FOLD_SQL, {"app": "app"})
    row = sql.rows("SELECT hour, sessions, failed FROM usage_count")
    assert row == [
        {"hour": hour, "sessions": [0] * 6 + [2] * 55, "failed": [0] * 60 + [1]},
    ]
    assert sql.value("SELECT count(*) FROM insight_change") == 0


def test_hours_folded_before_the_minutes_per_label_set_are_marked_for_them(
    empty_database_url: str,
) -> None:
    """The revision that adds `usage_minute` marks every hour `usage_hour` holds (once), and the
    folder then writes that hour's figures by minute."""
    schema.upgrade(empty_database_url, "5b1d7c2e9a30")
    sql = Sql(empty_database_url)
    hour = datetime(2026, 1, 1, 10, tzinfo=UTC)
    minutes = [hour + timedelta(minutes=m) for m in range(61)]
    a = (minutes[5] + timedelta(seconds=59), minutes[20])  # STOPPED
    b = (minutes[5], minutes[59] + timedelta(seconds=30))  # FAILED
    sql.execute(
        "INSERT INTO agent (app_id, agent_id, state, active_from, active_until, stopped_at, labels)"
        " VALUES ('app', 'a', 'STOPPED', %(a0)s, %(a1)s, %(a1)s, '{\"tier\": \"gold\"}'),"
        " ('app', 'b', 'FAILED', %(b0)s, %(b1)s, %(b1)s, '{\"tier\": \"gold\"}')",
        a0=a[0],
        a1=a[1],
        b0=b[0],
        b1=b[1],
    )
    # As the previous release's folder left it, with one hour marked already.
    sql.execute(
        "INSERT INTO usage_hour (app_id, hour, labels, agent_us, sessions, failed)"
        " VALUES ('app', %(h)s, '{\"tier\": \"gold\"}', 4111000000, 2, 1),"
        " ('app', %(h)s, '{}', 1, 0, 0)",
        h=hour,
    )
    sql.execute(
        "INSERT INTO insight_change (app_id, kind, hour) VALUES ('app', 'usage', %(h)s)", h=hour
    )

    schema.upgrade(empty_database_url)

    assert sql.rows("SELECT kind, hour FROM insight_change") == [{"kind": "usage", "hour": hour}]
    with psycopg.connect(sql.url, autocommit=True) as conn:
        conn.execute(usage.FOLD_SQL, {"app": "app"})

    def overlap_us(interval: tuple[datetime, datetime], until: datetime) -> int:
        return max(0, int((min(interval[1], until) - max(interval[0], hour)).total_seconds() * 1e6))

    # Minutes 5 (both start) to 59 (b fails), each with the figures up to and including it.
    row = sql.rows("SELECT labels, first, agent_us, level, sessions, failed FROM usage_minute")
    assert row == [
        {
            "labels": {"tier": "gold"},
            "first": 5,
            "agent_us": [overlap_us(a, m) + overlap_us(b, m) for m in minutes[6:]],
            "level": [sum(s < m < e for s, e in (a, b)) for m in minutes[5:60]],
            "sessions": [2] * 55,
            "failed": [0] * 54 + [1],
        }
    ]
    assert row[0]["agent_us"][-1] == 4111 * 10**6  # as usage_hour
    assert sql.value("SELECT count(*) FROM insight_change") == 0


# `by_turn` as revision cece28fbc7d9 wrote it: 25 bytes a turn, `end_at` in µs since the epoch.
_TURN_25: Final = np.dtype(
    [("end_us", ">i8"), ("lacks", "u1"), ("e2e", ">i4"), *((s, ">i4") for s in events.STAGES)]
)


def test_hours_folded_before_their_turns_were_kept_by_turn_are_filled_then_packed(
    empty_database_url: str,
) -> None:
    """The revision that adds `latency_bucket.by_turn` fills it for every hour row from the
    turns (day rows have none); the next one packs them by column as the folder now writes
    them, and its downgrade restores the first form."""
    schema.upgrade(empty_database_url, "8f3a61c0d2b4")
    sql = Sql(empty_database_url)
    sql.execute("INSERT INTO agent (app_id, agent_id) VALUES ('app', 'a'), ('app', 'b')")
    sql.execute(
        "INSERT INTO agent_turn (app_id, agent_id, turn_id, end_at, e2e_latency_ms, asr_ttlw,"
        " llm_ttft, tts_ttfb, data, source) VALUES"
        " ('app', 'a', 1, '2026-01-01T10:50:00.000001Z', -2147483648, 5, NULL, 2147483647,"
        " '{}', 'api'),"
        " ('app', 'b', 1, '2026-01-01T10:05:00Z', NULL, NULL, 0, 9, '{}', 'api'),"
        " ('app', 'b', 2, '2026-01-01T11:00:00Z', 1, 2, 3, 65535, '{}', 'api'),"
        " ('app', 'b', 3, NULL, 500, NULL, NULL, NULL, '{}', 'api'),"
        " ('app', 'b', 4, '2026-01-01T11:59:59.999999Z', 65536, 0, 7, 8, '{}', 'api')"
    )
    day = datetime(2026, 1, 1, tzinfo=UTC)
    ten, eleven = day + timedelta(hours=10), day + timedelta(hours=11)
    # As the previous release's folder left them (the figures are not the point here).
    sql.execute(
        "INSERT INTO latency_bucket (app_id, width, at, turns, e2e, asr_ttlw, llm_ttft, tts_ttfb)"
        " SELECT 'app', w, at, n, '{1,1,1,1}', '{1,1}', '{1,1}', '{1,1}'"
        " FROM (VALUES (3600, %(ten)s::timestamptz, 2), (3600, %(eleven)s, 2),"
        " (86400, %(day)s, 4)) AS v(w, at, n)",
        ten=ten,
        eleven=eleven,
        day=day,
    )

    def by_turn() -> dict[tuple[int, datetime], bytes | None]:
        rows = sql.rows("SELECT width, at, by_turn FROM latency_bucket")
        return {(row["width"], row["at"]): row["by_turn"] for row in rows}

    schema.upgrade(empty_database_url, "cece28fbc7d9")
    filled = by_turn()
    assert filled[(86400, day)] is None
    us = 1_767_261_600 * 10**6  # 10:00
    assert np.frombuffer(filled[(3600, ten)] or b"", _TURN_25).tolist() == [
        (us + 5 * 60 * 10**6, 0b0011, 0, 0, 0, 9),
        (us + 50 * 60 * 10**6 + 1, 0b0100, -(2**31), 5, 0, 2**31 - 1),
    ]
    assert np.frombuffer(filled[(3600, eleven)] or b"", _TURN_25).tolist() == [
        (us + 3600 * 10**6, 0, 1, 2, 3, 65535),
        (us + 2 * 3600 * 10**6 - 1, 0, 65536, 0, 7, 8),
    ]

    schema.upgrade(empty_database_url)
    packed = by_turn()
    assert packed[(86400, day)] is None
    # Flags: bit f for figure f in 16 bits, bit 4 for a byte per turn of figures lacking.
    assert (packed[(3600, ten)] or b"")[:2] == bytes([2, 0b10110])
    assert (packed[(3600, eleven)] or b"")[:2] == bytes([2, 0b01110])
    assert [len(packed[(3600, at)] or b"") for at in (ten, eleven)] == [
        2 + 2 * (4 + 1 + 4 + 2 + 2 + 4),
        2 + 2 * (4 + 4 + 2 + 2 + 2),
    ]
    turns = latency_ranks.Turns.decode(
        [(us, packed[(3600, ten)] or b""), (us + 3600 * 10**6, packed[(3600, eleven)] or b"")]
    )
    assert turns.end_us.tolist() == [
        us + 5 * 60 * 10**6,
        us + 50 * 60 * 10**6 + 1,
        us + 3600 * 10**6,
        us + 2 * 3600 * 10**6 - 1,
    ]
    assert [values.tolist() for _, values in turns.by_figure] == [
        [-(2**31), 1, 65536],
        [5, 2, 0],
        [0, 3, 7],
        [9, 2**31 - 1, 65535, 8],
    ]
    assert [ends.tolist() for ends, _ in turns.by_figure][:2] == [
        [us + 50 * 60 * 10**6 + 1, us + 3600 * 10**6, us + 2 * 3600 * 10**6 - 1],
        [us + 50 * 60 * 10**6 + 1, us + 3600 * 10**6, us + 2 * 3600 * 10**6 - 1],
    ]
    # The folder writes the same, and a read takes these rows as holding their turns.
    sql.execute(
        "INSERT INTO insight_change (app_id, kind, hour) VALUES ('app', 'latency', %(h)s),"
        " ('app', 'latency', %(h1)s)",
        h=ten,
        h1=eleven,
    )
    with psycopg.connect(sql.url, autocommit=True) as conn:
        conn.execute(latency.FOLD_SQL, {"app": "app"})
    assert by_turn() == packed
    whole = sql.value(
        "SELECT count(*) FROM (SELECT turns, by_turn, substring(by_turn FROM 1 FOR 2) AS head"
        f" FROM latency_bucket WHERE width = 3600) AS b WHERE {latency.PACKED_WHOLE}"
    )
    assert whole == 2

    from alembic import command

    command.downgrade(schema.alembic_config(empty_database_url), "cece28fbc7d9")
    assert by_turn() == filled
