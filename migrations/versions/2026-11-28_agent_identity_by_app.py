"""Agents are identified by (app_id, agent_id); notifications that cannot be applied are kept.

- `agent`'s key becomes `(app_id, agent_id)`, and every table about an agent (transitions,
  errors, metrics, turns, call states, history, history job) gains `app_id`, filled from the
  agent, with keys and foreign keys on the pair: a notification for one app can never reach
  another app's agent, even with the same `agent_id`.
- `agent` gains what keeps its record independent of arrival order: `name_at`, `channel_at` (the
  event time each came from; the earliest wins) and `label_versions` (per key, the event time and
  noticeId of its value; the latest wins). Existing names and channels are dated at the agent's
  start (or first sighting); existing labels carry no version, so the next one reported wins.
- `notification.outcome` may be `unapplied`, with the `problem`; `raw` keeps the exact bytes of a
  body jsonb cannot hold.
- A history job's call may end `invalid_id` (an agent_id that is never sent to Agora); a history
  may be `erased` or `expired`.

This is a contract step for the agent key: a release before it cannot write to the new tables.
Run it, then roll out this release (README, Deploy order); deliveries the old pods fail in
between are answered 5xx, which Agora retries.

Revision ID: bb82bfb92db0
Revises: ad5159c0ab68
Create Date: 2026-11-28 07:05:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "bb82bfb92db0"
down_revision: str | None = "ad5159c0ab68"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Tables about one agent, with their unique key (besides the surrogate `id`, where they have one).
CHILDREN: Sequence[tuple[str, tuple[str, ...] | None, str | None]] = (
    # (table, unique columns after agent_id, "pk" when that key is the primary key)
    ("agent_transition", None, None),
    ("agent_error", ("notice_id", "position"), "uq"),
    ("agent_metric", ("notice_id", "position"), "uq"),
    ("agent_turn", ("turn_id",), "pk"),
    ("call_state", ("notice_id",), "uq"),
    ("history", (), "pk"),
    ("history_job", (), "pk"),
)
OUTCOMES_BEFORE = "'ok', 'skipped', 'not_found', 'rejected', 'gave_up', 'not_configured'"
OUTCOMES = OUTCOMES_BEFORE + ", 'invalid_id'"


def _key_name(table: str, columns: Sequence[str], kind: str) -> str:
    return f"pk_{table}" if kind == "pk" else f"uq_{table}_{'_'.join(columns)}"


def upgrade() -> None:
    # The backfill updates transitions, which the append-only trigger would refuse.
    op.execute("ALTER TABLE agent_transition DISABLE TRIGGER agent_transition_append_only")
    for table, _, _ in CHILDREN:
        if table != "history_job":
            op.add_column(table, sa.Column("app_id", sa.Text(), nullable=True))
        op.execute(
            f"UPDATE {table} AS c SET app_id = a.app_id FROM agent AS a"
            " WHERE a.agent_id = c.agent_id AND c.app_id IS DISTINCT FROM a.app_id"
        )
        op.alter_column(table, "app_id", nullable=False)
        op.drop_constraint(op.f(f"fk_{table}_agent_id_agent"), table, type_="foreignkey")
    op.execute("ALTER TABLE agent_transition ENABLE TRIGGER agent_transition_append_only")

    op.drop_constraint(op.f("pk_agent"), "agent", type_="primary")
    op.create_primary_key(op.f("pk_agent"), "agent", ["app_id", "agent_id"])
    for table, unique, kind in CHILDREN:
        if unique is not None and kind is not None:
            op.drop_constraint(
                op.f(_key_name(table, ["agent_id", *unique], kind)),
                table,
                type_="primary" if kind == "pk" else "unique",
            )
            columns = ["app_id", "agent_id", *unique]
            if kind == "pk":
                op.create_primary_key(op.f(f"pk_{table}"), table, columns)
            else:
                op.create_unique_constraint(op.f(_key_name(table, columns, kind)), table, columns)
        op.create_foreign_key(
            op.f(f"fk_{table}_app_id_agent"),
            table,
            "agent",
            ["app_id", "agent_id"],
            ["app_id", "agent_id"],
        )

    op.drop_index(op.f("ix_agent_transition_agent_id_event_at"), table_name="agent_transition")
    op.create_index(
        op.f("ix_agent_transition_app_id_agent_id_event_at"),
        "agent_transition",
        ["app_id", "agent_id", "event_at"],
    )
    op.drop_index(op.f("ix_agent_listed_at"), table_name="agent")
    op.create_index(
        op.f("ix_agent_listed_at"),
        "agent",
        [
            sa.text("coalesce(started_at, first_seen_at) DESC"),
            sa.text("app_id DESC"),
            sa.text("agent_id DESC"),
        ],
    )
    op.create_index(op.f("ix_agent_agent_id"), "agent", ["agent_id"])

    op.add_column("agent", sa.Column("name_at", sa.DateTime(timezone=True), nullable=True))
    op.add_column("agent", sa.Column("channel_at", sa.DateTime(timezone=True), nullable=True))
    op.add_column(
        "agent",
        sa.Column(
            "label_versions",
            postgresql.JSONB(astext_type=sa.Text()),
            server_default=sa.text("'{}'::jsonb"),
            nullable=False,
        ),
    )
    op.execute(
        "UPDATE agent SET"
        " name_at = CASE WHEN name IS NOT NULL THEN coalesce(started_at, first_seen_at) END,"
        " channel_at = CASE WHEN channel IS NOT NULL THEN coalesce(started_at, first_seen_at) END"
        " WHERE name IS NOT NULL OR channel IS NOT NULL"
    )

    op.add_column("notification", sa.Column("problem", sa.Text(), nullable=True))
    op.add_column("notification", sa.Column("raw", sa.LargeBinary(), nullable=True))
    op.drop_constraint(op.f("ck_notification_outcome"), "notification", type_="check")
    op.create_check_constraint(
        op.f("ck_notification_outcome"),
        "notification",
        "outcome IN ('accepted', 'ignored', 'unapplied')",
    )
    op.drop_index(op.f("ix_notification_agent_id_event_at"), table_name="notification")
    op.create_index(
        op.f("ix_notification_app_id_agent_id_event_at"),
        "notification",
        ["app_id", "agent_id", "event_at"],
        postgresql_where=sa.text("agent_id IS NOT NULL"),
    )
    op.create_index(
        op.f("ix_notification_unapplied"),
        "notification",
        ["app_id", sa.text("received_at DESC"), sa.text("id DESC")],
        postgresql_where=sa.text("outcome = 'unapplied'"),
    )

    for column in ("history_call", "turns_call"):
        op.drop_constraint(op.f(f"ck_history_job_{column}"), "history_job", type_="check")
        op.create_check_constraint(
            op.f(f"ck_history_job_{column}"), "history_job", f"{column} IN ({OUTCOMES})"
        )
    op.drop_constraint(op.f("ck_history_status"), "history", type_="check")
    op.create_check_constraint(
        op.f("ck_history_status"),
        "history",
        "status IN ('pending', 'complete', 'unavailable', 'erased', 'expired')",
    )


def downgrade() -> None:
    # Only possible while no agent_id is used by two apps.
    op.execute(
        """
        DO $$ BEGIN
            IF EXISTS (SELECT FROM agent GROUP BY agent_id HAVING count(*) > 1) THEN
                RAISE EXCEPTION 'an agent_id is used by several apps: cannot downgrade';
            END IF;
        END $$
        """
    )
    op.drop_constraint(op.f("ck_history_status"), "history", type_="check")
    op.create_check_constraint(
        op.f("ck_history_status"), "history", "status IN ('pending', 'complete', 'unavailable')"
    )
    for column in ("history_call", "turns_call"):
        op.drop_constraint(op.f(f"ck_history_job_{column}"), "history_job", type_="check")
        op.create_check_constraint(
            op.f(f"ck_history_job_{column}"), "history_job", f"{column} IN ({OUTCOMES_BEFORE})"
        )
    op.drop_index(op.f("ix_notification_unapplied"), table_name="notification")
    op.drop_index(op.f("ix_notification_app_id_agent_id_event_at"), table_name="notification")
    op.create_index(
        op.f("ix_notification_agent_id_event_at"),
        "notification",
        ["agent_id", "event_at"],
        postgresql_where=sa.text("agent_id IS NOT NULL"),
    )
    op.execute("DELETE FROM notification WHERE outcome = 'unapplied'")
    op.drop_constraint(op.f("ck_notification_outcome"), "notification", type_="check")
    op.create_check_constraint(
        op.f("ck_notification_outcome"), "notification", "outcome IN ('accepted', 'ignored')"
    )
    op.drop_column("notification", "raw")
    op.drop_column("notification", "problem")
    op.drop_column("agent", "label_versions")
    op.drop_column("agent", "channel_at")
    op.drop_column("agent", "name_at")

    op.drop_index(op.f("ix_agent_agent_id"), table_name="agent")
    op.drop_index(op.f("ix_agent_listed_at"), table_name="agent")
    op.create_index(
        op.f("ix_agent_listed_at"),
        "agent",
        [sa.text("coalesce(started_at, first_seen_at) DESC"), sa.text("agent_id DESC")],
    )
    op.drop_index(
        op.f("ix_agent_transition_app_id_agent_id_event_at"), table_name="agent_transition"
    )
    op.create_index(
        op.f("ix_agent_transition_agent_id_event_at"), "agent_transition", ["agent_id", "event_at"]
    )
    for table, unique, kind in CHILDREN:
        op.drop_constraint(op.f(f"fk_{table}_app_id_agent"), table, type_="foreignkey")
        if unique is not None and kind is not None:
            op.drop_constraint(
                op.f(_key_name(table, ["app_id", "agent_id", *unique], kind)),
                table,
                type_="primary" if kind == "pk" else "unique",
            )
    op.drop_constraint(op.f("pk_agent"), "agent", type_="primary")
    op.create_primary_key(op.f("pk_agent"), "agent", ["agent_id"])
    for table, unique, kind in CHILDREN:
        if unique is not None and kind is not None:
            columns = ["agent_id", *unique]
            if kind == "pk":
                op.create_primary_key(op.f(f"pk_{table}"), table, columns)
            else:
                op.create_unique_constraint(op.f(_key_name(table, columns, kind)), table, columns)
        op.create_foreign_key(
            op.f(f"fk_{table}_agent_id_agent"), table, "agent", ["agent_id"], ["agent_id"]
        )
        if table != "history_job":
            op.drop_column(table, "app_id")
