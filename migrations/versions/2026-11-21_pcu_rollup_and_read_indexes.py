"""PCU rollup and threshold alarm; indexes for PCU reads and the agent list.

- `pcu_minute`: per app and minute, the summary of the agents' active-interval edges in that
  minute (see `service/pcu.py`), kept by the ingest transaction. It is derived data that must
  equal what the agent rows say from the first request on, so this revision fills it from the
  agents already stored (nothing to do on a new database).
- `pcu_alarm`: each app's PCU level against its warning fraction and cap.
- agent: a CHECK that an interval never ends before it starts; edge indexes on `active_from` and
  `active_until`; a GiST index on `tstzrange(active_from, active_until)` (who was active at t);
  the list order `coalesce(started_at, first_seen_at) DESC, agent_id DESC`.

Revision ID: ad5159c0ab68
Revises: 734de7b631b0
Create Date: 2026-11-21 04:51:28.661256
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "ad5159c0ab68"
down_revision: str | None = "734de7b631b0"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# The same statement as service.rollup.REBUILD_SQL, frozen here as of this revision.
BACKFILL = """
    INSERT INTO pcu_minute (app_id, minute, delta, peak, area_us)
    SELECT app_id, minute, sum(d)::int,
           greatest(max(level), CASE WHEN min(at) > minute THEN 0 END)::int,
           sum(d * (extract(epoch FROM minute + interval '1 minute' - at) * 1000000)::bigint)
    FROM (
        SELECT app_id, minute, at, d,
               sum(d) OVER (PARTITION BY app_id, minute ORDER BY at) AS level
        FROM (
            SELECT app_id, to_timestamp(floor(extract(epoch FROM at) / 60) * 60) AS minute,
                   at, sum(d) AS d
            FROM (
                SELECT app_id, active_from AS at, 1 AS d FROM agent
                WHERE active_from IS NOT NULL
                UNION ALL
                SELECT app_id, active_until, -1 FROM agent WHERE active_until IS NOT NULL
            ) AS edge
            GROUP BY app_id, minute, at
        ) AS point
    ) AS running
    GROUP BY app_id, minute
"""


def upgrade() -> None:
    op.create_table(
        "pcu_alarm",
        sa.Column("app_id", sa.Text(), nullable=False),
        sa.Column("level", sa.Text(), server_default="normal", nullable=False),
        sa.Column(
            "changed_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.CheckConstraint(
            "level IN ('normal', 'warning', 'cap')", name=op.f("ck_pcu_alarm_level")
        ),
        sa.PrimaryKeyConstraint("app_id", name=op.f("pk_pcu_alarm")),
    )
    op.create_table(
        "pcu_minute",
        sa.Column("app_id", sa.Text(), nullable=False),
        sa.Column("minute", sa.DateTime(timezone=True), nullable=False),
        sa.Column("delta", sa.Integer(), nullable=False),
        sa.Column("peak", sa.Integer(), nullable=False),
        sa.Column("area_us", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("app_id", "minute", name=op.f("pk_pcu_minute")),
    )
    op.create_check_constraint(
        op.f("ck_agent_active_interval"),
        "agent",
        "active_until IS NULL OR (active_from IS NOT NULL AND active_until >= active_from)",
    )
    op.create_index(
        "ix_agent_active_range",
        "agent",
        [sa.literal_column("tstzrange(active_from, active_until)")],
        unique=False,
        postgresql_using="gist",
        postgresql_where=sa.text("active_from IS NOT NULL"),
    )
    op.create_index(
        op.f("ix_agent_app_id_active_from"),
        "agent",
        ["app_id", "active_from"],
        unique=False,
        postgresql_where=sa.text("active_from IS NOT NULL"),
    )
    op.create_index(
        op.f("ix_agent_app_id_active_until"),
        "agent",
        ["app_id", "active_until"],
        unique=False,
        postgresql_where=sa.text("active_until IS NOT NULL"),
    )
    op.create_index(
        "ix_agent_listed_at",
        "agent",
        [sa.text("coalesce(started_at, first_seen_at) DESC"), sa.text("agent_id DESC")],
        unique=False,
    )
    op.execute(BACKFILL)


def downgrade() -> None:
    op.drop_index("ix_agent_listed_at", table_name="agent")
    op.drop_index(op.f("ix_agent_app_id_active_until"), table_name="agent")
    op.drop_index(op.f("ix_agent_app_id_active_from"), table_name="agent")
    op.drop_index("ix_agent_active_range", table_name="agent")
    op.drop_constraint(op.f("ck_agent_active_interval"), "agent", type_="check")
    op.drop_table("pcu_minute")
    op.drop_table("pcu_alarm")
