"""Ledger schema: notifications, agents, append-only transitions, event details, history.

Transitions are append-only: a trigger refuses UPDATE and DELETE on agent_transition.

Revision ID: 734de7b631b0
Revises:
Create Date: 2026-11-21 04:38:20.197035
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "734de7b631b0"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


APPEND_ONLY = """
CREATE FUNCTION agent_transition_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'agent_transition is append-only (% refused)', TG_OP;
END;
$$;
CREATE TRIGGER agent_transition_append_only
    BEFORE UPDATE OR DELETE ON agent_transition
    FOR EACH ROW EXECUTE FUNCTION agent_transition_append_only();
"""


def upgrade() -> None:
    op.create_table(
        "agent",
        sa.Column("agent_id", sa.Text(), nullable=False),
        sa.Column("app_id", sa.Text(), nullable=False),
        sa.Column("name", sa.Text(), nullable=True),
        sa.Column("channel", sa.Text(), nullable=True),
        sa.Column(
            "labels",
            postgresql.JSONB(astext_type=sa.Text()),
            server_default=sa.text("'{}'::jsonb"),
            nullable=False,
        ),
        sa.Column("state", sa.Text(), server_default="IDLE", nullable=False),
        sa.Column("state_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("stopped_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("stop_status", sa.Text(), nullable=True),
        sa.Column("stop_message", sa.Text(), nullable=True),
        sa.Column("active_from", sa.DateTime(timezone=True), nullable=True),
        sa.Column("active_until", sa.DateTime(timezone=True), nullable=True),
        sa.Column("warning", sa.Text(), nullable=True),
        sa.Column("warning_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_event_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column(
            "first_seen_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.Column(
            "updated_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.CheckConstraint(
            "state IN ('IDLE', 'STARTING', 'RUNNING', 'STOPPING', 'STOPPED', 'RECOVERING', 'FAILED')",
            name=op.f("ck_agent_state"),
        ),
        sa.PrimaryKeyConstraint("agent_id", name=op.f("pk_agent")),
    )
    op.create_index(
        op.f("ix_agent_app_id_started_at"), "agent", ["app_id", "started_at"], unique=False
    )
    op.create_index(op.f("ix_agent_app_id_state"), "agent", ["app_id", "state"], unique=False)
    op.create_table(
        "notification",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=False), nullable=False),
        sa.Column("app_id", sa.Text(), nullable=False),
        sa.Column("notice_id", sa.Text(), nullable=False),
        sa.Column("product_id", sa.Integer(), nullable=False),
        sa.Column("event_type", sa.Integer(), nullable=False),
        sa.Column("agent_id", sa.Text(), nullable=True),
        sa.Column("outcome", sa.Text(), nullable=False),
        sa.Column("event_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("notify_ms", sa.BigInteger(), nullable=True),
        sa.Column(
            "received_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.Column("body", postgresql.JSONB(astext_type=sa.Text()), nullable=False),
        sa.CheckConstraint(
            "outcome IN ('accepted', 'ignored')", name=op.f("ck_notification_outcome")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_notification")),
        sa.UniqueConstraint("app_id", "notice_id", name=op.f("uq_notification_app_id_notice_id")),
    )
    op.create_index(
        op.f("ix_notification_agent_id_event_at"),
        "notification",
        ["agent_id", "event_at"],
        unique=False,
        postgresql_where=sa.text("agent_id IS NOT NULL"),
    )
    op.create_index(
        op.f("ix_notification_received_at"), "notification", ["received_at"], unique=False
    )
    op.create_table(
        "agent_error",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=False), nullable=False),
        sa.Column("agent_id", sa.Text(), nullable=False),
        sa.Column("notice_id", sa.Text(), nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.Column("module", sa.Text(), nullable=True),
        sa.Column("code", sa.BigInteger(), nullable=True),
        sa.Column("message", sa.Text(), nullable=True),
        sa.Column("turn_id", sa.Text(), nullable=True),
        sa.Column("event_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column(
            "received_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.ForeignKeyConstraint(
            ["agent_id"], ["agent.agent_id"], name=op.f("fk_agent_error_agent_id_agent")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_agent_error")),
        sa.UniqueConstraint(
            "agent_id",
            "notice_id",
            "position",
            name=op.f("uq_agent_error_agent_id_notice_id_position"),
        ),
    )
    op.create_table(
        "agent_metric",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=False), nullable=False),
        sa.Column("agent_id", sa.Text(), nullable=False),
        sa.Column("notice_id", sa.Text(), nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.Column("turn_id", sa.Text(), nullable=True),
        sa.Column("asr_ttlw", sa.Integer(), nullable=True),
        sa.Column("llm_ttfb", sa.Integer(), nullable=True),
        sa.Column("llm_ttfs", sa.Integer(), nullable=True),
        sa.Column("tts_ttfb", sa.Integer(), nullable=True),
        sa.Column("figures", postgresql.JSONB(astext_type=sa.Text()), nullable=False),
        sa.Column("event_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["agent_id"], ["agent.agent_id"], name=op.f("fk_agent_metric_agent_id_agent")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_agent_metric")),
        sa.UniqueConstraint(
            "agent_id",
            "notice_id",
            "position",
            name=op.f("uq_agent_metric_agent_id_notice_id_position"),
        ),
    )
    op.create_table(
        "agent_transition",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=False), nullable=False),
        sa.Column("agent_id", sa.Text(), nullable=False),
        sa.Column("from_state", sa.Text(), nullable=False),
        sa.Column("to_state", sa.Text(), nullable=False),
        sa.Column("cause", sa.Text(), nullable=False),
        sa.Column("source", sa.Text(), nullable=False),
        sa.Column("notice_id", sa.Text(), nullable=True),
        sa.Column("inferred", sa.Boolean(), server_default=sa.text("false"), nullable=False),
        sa.Column("event_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column(
            "received_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.CheckConstraint(
            "from_state IN ('IDLE', 'STARTING', 'RUNNING', 'STOPPING', 'STOPPED', 'RECOVERING', 'FAILED')",
            name=op.f("ck_agent_transition_from_state"),
        ),
        sa.CheckConstraint(
            "source IN ('webhook', 'reconcile')", name=op.f("ck_agent_transition_source")
        ),
        sa.CheckConstraint(
            "to_state IN ('IDLE', 'STARTING', 'RUNNING', 'STOPPING', 'STOPPED', 'RECOVERING', 'FAILED')",
            name=op.f("ck_agent_transition_to_state"),
        ),
        sa.ForeignKeyConstraint(
            ["agent_id"], ["agent.agent_id"], name=op.f("fk_agent_transition_agent_id_agent")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_agent_transition")),
    )
    op.create_index(
        op.f("ix_agent_transition_agent_id_event_at"),
        "agent_transition",
        ["agent_id", "event_at"],
        unique=False,
    )
    op.create_table(
        "agent_turn",
        sa.Column("agent_id", sa.Text(), nullable=False),
        sa.Column("turn_id", sa.Integer(), nullable=False),
        sa.Column("start_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("end_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("start_type", sa.Text(), nullable=True),
        sa.Column("end_type", sa.Text(), nullable=True),
        sa.Column("e2e_latency_ms", sa.Integer(), nullable=True),
        sa.Column("data", postgresql.JSONB(astext_type=sa.Text()), nullable=False),
        sa.Column("source", sa.Text(), nullable=False),
        sa.CheckConstraint("source IN ('webhook', 'api')", name=op.f("ck_agent_turn_source")),
        sa.ForeignKeyConstraint(
            ["agent_id"], ["agent.agent_id"], name=op.f("fk_agent_turn_agent_id_agent")
        ),
        sa.PrimaryKeyConstraint("agent_id", "turn_id", name=op.f("pk_agent_turn")),
    )
    op.create_table(
        "call_state",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=False), nullable=False),
        sa.Column("agent_id", sa.Text(), nullable=False),
        sa.Column("notice_id", sa.Text(), nullable=False),
        sa.Column("direction", sa.Text(), nullable=False),
        sa.Column("state", sa.Text(), nullable=False),
        sa.Column("reported_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column(
            "received_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.CheckConstraint(
            "direction IN ('inbound', 'outbound')", name=op.f("ck_call_state_direction")
        ),
        sa.ForeignKeyConstraint(
            ["agent_id"], ["agent.agent_id"], name=op.f("fk_call_state_agent_id_agent")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_call_state")),
        sa.UniqueConstraint("agent_id", "notice_id", name=op.f("uq_call_state_agent_id_notice_id")),
    )
    op.create_table(
        "history",
        sa.Column("agent_id", sa.Text(), nullable=False),
        sa.Column("status", sa.Text(), server_default="pending", nullable=False),
        sa.Column("source", sa.Text(), nullable=True),
        sa.Column(
            "contents",
            postgresql.JSONB(astext_type=sa.Text()),
            server_default=sa.text("'[]'::jsonb"),
            nullable=False,
        ),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("transcript_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column(
            "updated_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.CheckConstraint(
            "source IS NULL OR source IN ('webhook', 'api')", name=op.f("ck_history_source")
        ),
        sa.CheckConstraint(
            "status IN ('pending', 'complete', 'unavailable')", name=op.f("ck_history_status")
        ),
        sa.ForeignKeyConstraint(
            ["agent_id"], ["agent.agent_id"], name=op.f("fk_history_agent_id_agent")
        ),
        sa.PrimaryKeyConstraint("agent_id", name=op.f("pk_history")),
    )
    op.create_table(
        "history_job",
        sa.Column("agent_id", sa.Text(), nullable=False),
        sa.Column("app_id", sa.Text(), nullable=False),
        sa.Column("status", sa.Text(), server_default="queued", nullable=False),
        sa.Column(
            "due_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False
        ),
        sa.Column(
            "stop_recorded_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.Column("attempts", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column("lease_owner", sa.Text(), nullable=True),
        sa.Column("lease_expires_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.CheckConstraint(
            "status IN ('queued', 'running', 'done')", name=op.f("ck_history_job_status")
        ),
        sa.ForeignKeyConstraint(
            ["agent_id"], ["agent.agent_id"], name=op.f("fk_history_job_agent_id_agent")
        ),
        sa.PrimaryKeyConstraint("agent_id", name=op.f("pk_history_job")),
    )
    op.execute(APPEND_ONLY)
    op.create_index(
        op.f("ix_history_job_due_at"),
        "history_job",
        ["due_at"],
        unique=False,
        postgresql_where=sa.text("status <> 'done'"),
    )


def downgrade() -> None:
    op.execute("DROP TRIGGER agent_transition_append_only ON agent_transition")
    op.execute("DROP FUNCTION agent_transition_append_only()")
    op.drop_index(
        op.f("ix_history_job_due_at"),
        table_name="history_job",
        postgresql_where=sa.text("status <> 'done'"),
    )
    op.drop_table("history_job")
    op.drop_table("history")
    op.drop_table("call_state")
    op.drop_table("agent_turn")
    op.drop_index(op.f("ix_agent_transition_agent_id_event_at"), table_name="agent_transition")
    op.drop_table("agent_transition")
    op.drop_table("agent_metric")
    op.drop_table("agent_error")
    op.drop_index(op.f("ix_notification_received_at"), table_name="notification")
    op.drop_index(
        op.f("ix_notification_agent_id_event_at"),
        table_name="notification",
        postgresql_where=sa.text("agent_id IS NOT NULL"),
    )
    op.drop_table("notification")
    op.drop_index(op.f("ix_agent_app_id_state"), table_name="agent")
    op.drop_index(op.f("ix_agent_app_id_started_at"), table_name="agent")
    op.drop_table("agent")
