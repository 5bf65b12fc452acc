from __future__ import annotations

import psycopg
import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import create_engine

from service import schema, tables
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
        "INSERT INTO agent_transition (agent_id, from_state, to_state, cause, source, event_at)"
        " VALUES ('a', 'IDLE', 'RUNNING', 'agent_joined', 'webhook', now())"
    )
    with pytest.raises(psycopg.errors.RaiseException, match="append-only"):
        sql.execute("UPDATE agent_transition SET to_state = 'FAILED'")
    with pytest.raises(psycopg.errors.RaiseException, match="append-only"):
        sql.execute("DELETE FROM agent_transition")
    assert sql.rows("SELECT to_state FROM agent_transition") == [{"to_state": "RUNNING"}]


def test_the_database_refuses_an_unknown_state(sql: Sql) -> None:
    with pytest.raises(psycopg.errors.CheckViolation):
        sql.execute("INSERT INTO agent (agent_id, app_id, state) VALUES ('a', 'app', 'DANCING')")
