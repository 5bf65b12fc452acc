"""PCU rollup and threshold alarm; indexes for PCU reads and the agent list.

- `pcu_minute`, `pcu_hour`: per app and minute, the summary of the agents' active-interval
  edges in that minute and the edges themselves; per app and hour, prefix and suffix summaries of
  its minutes (see `service/pcu.py`). Kept by the ingest transaction. They are derived data that
  must equal what the agent rows say from the first request on, so this revision fills them from
  the agents already stored (nothing to do on a new database).
- `pcu_alarm`: each app's PCU level against its warning fraction and cap.
- agent: a CHECK that an interval never ends before it starts; edge indexes on `active_from` and
  `active_until`; a GiST index on `tstzrange(active_from, active_until)` (who was active at t);
  the list order `coalesce(started_at, first_seen_at) DESC, agent_id DESC`; `channel`.

Revision ID: ad5159c0ab68
Revises: c4391d06b56b
Create Date: 2026-11-21 04:51:28.661256
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "ad5159c0ab68"
down_revision: str | None = "c4391d06b56b"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# service.rollup.REBUILD_SQL as of this revision.
BACKFILL = """
    WITH point AS (
        SELECT app_id, to_timestamp(floor(extract(epoch FROM at) / 60) * 60) AS minute,
               at, sum(d) AS d
        FROM (
            SELECT app_id, active_from AS at, 1 AS d FROM agent WHERE active_from IS NOT NULL
            UNION ALL
            SELECT app_id, active_until, -1 FROM agent WHERE active_until IS NOT NULL
        ) AS edge
        GROUP BY 1, 2, 3
    ),
    
    minute_running AS (
        SELECT app_id, minute, at, d,
               (extract(epoch FROM at - minute) * 1000000)::int AS off,
               sum(d) OVER (PARTITION BY app_id, minute ORDER BY at) AS level
        FROM point
    ),
    minute_ranged AS (
        SELECT *,
               max(level) OVER (PARTITION BY app_id, minute ORDER BY at) AS up_to,
               max(level) OVER (PARTITION BY app_id, minute ORDER BY at DESC) AS from_on,
               sum(d * off::bigint) OVER (PARTITION BY app_id, minute ORDER BY at) AS wsum
        FROM minute_running
    ),
    minute_summary AS (
        SELECT app_id, minute, sum(d)::int AS delta,
               greatest(max(level), CASE WHEN min(at) > minute THEN 0 END)::int AS peak,
               sum(d * (60000000 - off))::bigint AS area_us,
               array_agg(off ORDER BY at) AS edge_at,
               array_agg(d::int ORDER BY at) AS edge_delta,
               array_agg(level::int ORDER BY at) AS edge_level,
               array_agg(up_to::int ORDER BY at) AS edge_pmax,
               array_agg(from_on::int ORDER BY at) AS edge_smax,
               array_agg(wsum::bigint ORDER BY at) AS edge_wsum
        FROM minute_ranged GROUP BY app_id, minute
    )
    INSERT INTO pcu_minute (app_id, minute, delta, peak, area_us, edge_at, edge_delta, edge_level, edge_pmax, edge_smax, edge_wsum)
    SELECT * FROM minute_summary
"""

# service.rollup.REBUILD_HOURS_SQL as of this revision.
BACKFILL_HOURS = """
    WITH target AS (
        SELECT DISTINCT app_id,
               to_timestamp(floor(extract(epoch FROM minute) / 3600) * 3600) AS hour
        FROM pcu_minute
    ),
    minute_now AS (SELECT app_id, minute, delta, peak, area_us FROM pcu_minute),
    
    slot AS (
        SELECT t.app_id, t.hour, k, m.minute IS NOT NULL AS present,
               coalesce(m.delta, 0) AS delta, coalesce(m.peak, 0) AS peak,
               coalesce(m.area_us, 0) AS area
        FROM target AS t
        CROSS JOIN generate_series(0, 59) AS k
        LEFT JOIN minute_now AS m
            ON m.app_id = t.app_id AND m.minute = t.hour + k * interval '1 minute'
    ),
    hour_level AS (
        SELECT *, sum(delta) OVER (PARTITION BY app_id, hour ORDER BY k) - delta AS cum
        FROM slot
    ),
    hour_running AS (
        SELECT *,
               sum(cum::bigint * 60000000 + area) OVER (PARTITION BY app_id, hour ORDER BY k)
                   AS area_after,
               max(cum + peak) OVER (PARTITION BY app_id, hour ORDER BY k) AS pmax_after,
               max(cum + peak) OVER (PARTITION BY app_id, hour ORDER BY k DESC) AS smax_from
        FROM hour_level
    ),
    hour_summary AS (
        SELECT app_id, hour, bool_or(present) AS present,
               array_prepend(0, array_agg((cum + delta)::int ORDER BY k)) AS cum,
               array_prepend(0::bigint, array_agg(area_after::bigint ORDER BY k)) AS area,
               array_prepend(0, array_agg(pmax_after::int ORDER BY k)) AS pmax,
               array_append(array_agg(smax_from::int ORDER BY k), 0) AS smax
        FROM hour_running GROUP BY app_id, hour
    ),
    hour_cleared AS (
        DELETE FROM pcu_hour AS h USING hour_summary AS s
        WHERE h.app_id = s.app_id AND h.hour = s.hour AND NOT s.present
    )
    INSERT INTO pcu_hour (app_id, hour, cum, area, pmax, smax)
    SELECT app_id, hour, cum, area, pmax, smax FROM hour_summary WHERE present
    ON CONFLICT (app_id, hour) DO UPDATE
    SET cum = excluded.cum, area = excluded.area, pmax = excluded.pmax, smax = excluded.smax
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
        sa.Column("edge_at", postgresql.ARRAY(sa.Integer()), nullable=False),
        sa.Column("edge_delta", postgresql.ARRAY(sa.Integer()), nullable=False),
        sa.Column("edge_level", postgresql.ARRAY(sa.Integer()), nullable=False),
        sa.Column("edge_pmax", postgresql.ARRAY(sa.Integer()), nullable=False),
        sa.Column("edge_smax", postgresql.ARRAY(sa.Integer()), nullable=False),
        sa.Column("edge_wsum", postgresql.ARRAY(sa.BigInteger()), nullable=False),
        sa.PrimaryKeyConstraint("app_id", "minute", name=op.f("pk_pcu_minute")),
    )
    op.create_table(
        "pcu_hour",
        sa.Column("app_id", sa.Text(), nullable=False),
        sa.Column("hour", sa.DateTime(timezone=True), nullable=False),
        sa.Column("cum", postgresql.ARRAY(sa.Integer()), nullable=False),
        sa.Column("area", postgresql.ARRAY(sa.BigInteger()), nullable=False),
        sa.Column("pmax", postgresql.ARRAY(sa.Integer()), nullable=False),
        sa.Column("smax", postgresql.ARRAY(sa.Integer()), nullable=False),
        sa.PrimaryKeyConstraint("app_id", "hour", name=op.f("pk_pcu_hour")),
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
    op.create_index(op.f("ix_agent_channel"), "agent", ["channel"], unique=False)
    op.create_index(
        "ix_agent_listed_at",
        "agent",
        [sa.text("coalesce(started_at, first_seen_at) DESC"), sa.text("agent_id DESC")],
        unique=False,
    )
    op.execute(BACKFILL)
    op.execute(BACKFILL_HOURS)


def downgrade() -> None:
    op.drop_index("ix_agent_listed_at", table_name="agent")
    op.drop_index(op.f("ix_agent_channel"), table_name="agent")
    op.drop_index(op.f("ix_agent_app_id_active_until"), table_name="agent")
    op.drop_index(op.f("ix_agent_app_id_active_from"), table_name="agent")
    op.drop_index("ix_agent_active_range", table_name="agent")
    op.drop_constraint(op.f("ck_agent_active_interval"), "agent", type_="check")
    op.drop_table("pcu_hour")
    op.drop_table("pcu_minute")
    op.drop_table("pcu_alarm")
