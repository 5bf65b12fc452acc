"""Insight: error and turn indexes, turn stage figures, usage and latency rollups.

- `agent_error` by app and time (GET /v1/errors, the error summary); `agent` indexes for agents
  still holding a slot, stop times and names (usage, the agent list's new filters).
- `agent_turn` gains the stages of `segmented_latency_ms` (`asr_ttlw`, `llm_ttft`, `tts_ttfb`),
  filled here from the stored turns (a 112's object or a `/turns` list), and an index of the turns
  by end time carrying the figures.
- `insight_change` marks the (app, hour) a transaction changed for usage or latency, and
  `usage_hour` / `latency_bucket` hold what the folders computed (`service.usage`,
  `service.latency`). Every hour that existing agents and turns touch is marked here, so the
  folders build the rollups of the data already stored; until they have, reads compute those
  hours from the rows.

Revision ID: 3c9e1f7a2d41
Revises: 458d73fa6583
Create Date: 2026-11-28 10:30:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "3c9e1f7a2d41"
down_revision: str | None = "458d73fa6583"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# A stage's figure from a turn's `segmented_latency_ms`: an object (112) or a list of
# {name, latency} (`/turns`); only plain integers are kept.
_STAGE = """
    (SELECT CASE WHEN v ~ '^[0-9]{{1,9}}(\\.0+)?$' THEN v::numeric::int END
     FROM (SELECT CASE jsonb_typeof(s)
                      WHEN 'object' THEN s->>'{name}'
                      WHEN 'array' THEN (SELECT e->>'latency' FROM jsonb_array_elements(s) AS e
                                         WHERE jsonb_typeof(e) = 'object'
                                           AND e->>'name' = '{name}' LIMIT 1)
                  END AS v
           FROM (SELECT data->'metrics'->'segmented_latency_ms' AS s) AS seg) AS stage)"""


def upgrade() -> None:
    op.create_index(
        "ix_agent_error_app_id_event_at",
        "agent_error",
        ["app_id", sa.text("event_at DESC"), sa.text("id DESC")],
    )
    op.create_index(
        "ix_agent_open_interval",
        "agent",
        ["app_id", "active_from"],
        postgresql_where=sa.text("active_from IS NOT NULL AND active_until IS NULL"),
    )
    op.create_index(
        "ix_agent_long_interval",
        "agent",
        ["app_id", "active_from"],
        postgresql_where=sa.text(
            "active_from IS NOT NULL AND active_until - active_from > interval '1 day'"
        ),
    )
    op.create_index(
        op.f("ix_agent_app_id_stopped_at"),
        "agent",
        ["app_id", "stopped_at"],
        postgresql_where=sa.text("stopped_at IS NOT NULL"),
    )
    op.create_index(
        op.f("ix_agent_app_id_name"),
        "agent",
        ["app_id", "name"],
        postgresql_where=sa.text("name IS NOT NULL"),
    )
    for name in ("asr_ttlw", "llm_ttft", "tts_ttfb"):
        op.add_column("agent_turn", sa.Column(name, sa.Integer(), nullable=True))
    op.execute(
        "UPDATE agent_turn SET "
        + ", ".join(
            f"{name} = {_STAGE.format(name=name)}" for name in ("asr_ttlw", "llm_ttft", "tts_ttfb")
        )
        + " WHERE jsonb_typeof(data->'metrics'->'segmented_latency_ms') IN ('object', 'array')"
    )
    op.create_index(
        op.f("ix_agent_turn_app_id_end_at"),
        "agent_turn",
        ["app_id", "end_at"],
        postgresql_include=["e2e_latency_ms", "asr_ttlw", "llm_ttft", "tts_ttfb", "agent_id"],
        postgresql_where=sa.text("end_at IS NOT NULL"),
    )
    op.create_table(
        "insight_change",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=False), nullable=False),
        sa.Column("app_id", sa.Text(), nullable=False),
        sa.Column("kind", sa.Text(), nullable=False),
        sa.Column("hour", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint("kind IN ('usage', 'latency')", name=op.f("ck_insight_change_kind")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_insight_change")),
    )
    op.create_index(
        op.f("ix_insight_change_app_id_kind_hour"), "insight_change", ["app_id", "kind", "hour"]
    )
    op.create_table(
        "usage_hour",
        sa.Column("app_id", sa.Text(), nullable=False),
        sa.Column("hour", sa.DateTime(timezone=True), nullable=False),
        sa.Column("labels", postgresql.JSONB(astext_type=sa.Text()), nullable=False),
        sa.Column("agent_us", sa.BigInteger(), nullable=False),
        sa.Column("sessions", sa.Integer(), nullable=False),
        sa.Column("failed", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("app_id", "hour", "labels", name=op.f("pk_usage_hour")),
    )
    op.create_table(
        "latency_bucket",
        sa.Column("app_id", sa.Text(), nullable=False),
        sa.Column("width", sa.Integer(), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("turns", sa.Integer(), nullable=False),
        sa.Column("e2e", postgresql.ARRAY(sa.Integer()), nullable=False),
        sa.Column("asr_ttlw", postgresql.ARRAY(sa.Integer()), nullable=False),
        sa.Column("llm_ttft", postgresql.ARRAY(sa.Integer()), nullable=False),
        sa.Column("tts_ttfb", postgresql.ARRAY(sa.Integer()), nullable=False),
        sa.CheckConstraint("width IN (3600, 86400)", name=op.f("ck_latency_bucket_width")),
        sa.PrimaryKeyConstraint("app_id", "width", "at", name=op.f("pk_latency_bucket")),
    )
    # Mark what the stored agents and turns touch, for the folders to build.
    op.execute(
        """
        INSERT INTO insight_change (app_id, kind, hour)
        SELECT DISTINCT app_id, 'usage', h
        FROM agent,
             LATERAL generate_series(date_trunc('hour', active_from, 'UTC'),
                                     date_trunc('hour', coalesce(active_until, active_from), 'UTC'),
                                     interval '1 hour') AS h
        WHERE active_from IS NOT NULL
          AND (active_until IS NULL OR active_until - active_from <= interval '1 day')
        UNION
        SELECT DISTINCT app_id, 'usage', date_trunc('hour', active_from, 'UTC')
        FROM agent WHERE active_until - active_from > interval '1 day'
        UNION
        SELECT DISTINCT app_id, 'usage', date_trunc('hour', stopped_at, 'UTC')
        FROM agent WHERE state = 'FAILED' AND stopped_at IS NOT NULL
        UNION
        SELECT DISTINCT app_id, 'latency', date_trunc('hour', end_at, 'UTC')
        FROM agent_turn WHERE end_at IS NOT NULL
        """
    )


def downgrade() -> None:
    op.drop_table("latency_bucket")
    op.drop_table("usage_hour")
    op.drop_index(op.f("ix_insight_change_app_id_kind_hour"), table_name="insight_change")
    op.drop_table("insight_change")
    op.drop_index(op.f("ix_agent_turn_app_id_end_at"), table_name="agent_turn")
    for name in ("tts_ttfb", "llm_ttft", "asr_ttlw"):
        op.drop_column("agent_turn", name)
    op.drop_index(op.f("ix_agent_app_id_name"), table_name="agent")
    op.drop_index(op.f("ix_agent_app_id_stopped_at"), table_name="agent")
    op.drop_index("ix_agent_long_interval", table_name="agent")
    op.drop_index("ix_agent_open_interval", table_name="agent")
    op.drop_index("ix_agent_error_app_id_event_at", table_name="agent_error")
