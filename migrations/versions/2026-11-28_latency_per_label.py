"""Turn latency per label pair: `latency_label_bucket`, and marks for label changes.

- `latency_label_bucket` holds, per app, hour or day and label pair (`key`, string `value`), the
  figures `latency_bucket` holds for the whole app, over the turns of the agents holding that
  pair (`service.latency`): a series with one `label.KEY=VALUE` takes them like the unfiltered
  one takes `latency_bucket`'s.
- `insight_change.kind` may be `latency_label`: the per-label figures of that hour need
  recomputing, the per-app ones do not (an agent's labels changed). Every hour the stored turns
  touch is marked so here, so the folder builds the new table from the turns already stored;
  until it has, reads compute those hours from the turns. The previous release's folder leaves
  these marks alone.

Additive: the previous release keeps serving. What it writes while it still runs is not all
seen by the new table: a label change it applies marks nothing, and a turn it (or this release)
stores for an hour that has ended may have its `latency` mark folded by its folder, which knows
nothing of the new table. Turns land in the current hour but for stragglers, and labels come
with an agent's first notifications, so this is rare; to be exact for a rollout that overlapped
such writes, mark the hours again once it is done (the INSERT below, run by hand).

Revision ID: d5e973cd9b1f
Revises: dbcc06e59ee8
Create Date: 2026-11-28 13:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "d5e973cd9b1f"
down_revision: str | None = "dbcc06e59ee8"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_MARK_EVERY_HOUR = """
    INSERT INTO insight_change (app_id, kind, hour)
    SELECT DISTINCT app_id, 'latency_label', date_trunc('hour', end_at, 'UTC')
    FROM agent_turn WHERE end_at IS NOT NULL
"""


def upgrade() -> None:
    op.drop_constraint(op.f("ck_insight_change_kind"), "insight_change", type_="check")
    op.create_check_constraint(
        op.f("ck_insight_change_kind"),
        "insight_change",
        "kind IN ('usage', 'latency', 'latency_label')",
    )
    op.create_table(
        "latency_label_bucket",
        sa.Column("app_id", sa.Text(), nullable=False),
        sa.Column("width", sa.Integer(), nullable=False),
        sa.Column("key", sa.Text(), nullable=False),
        sa.Column("value", sa.Text(), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("turns", sa.Integer(), nullable=False),
        sa.Column("e2e", postgresql.ARRAY(sa.Integer()), nullable=False),
        sa.Column("asr_ttlw", postgresql.ARRAY(sa.Integer()), nullable=False),
        sa.Column("llm_ttft", postgresql.ARRAY(sa.Integer()), nullable=False),
        sa.Column("tts_ttfb", postgresql.ARRAY(sa.Integer()), nullable=False),
        sa.CheckConstraint("width IN (3600, 86400)", name=op.f("ck_latency_label_bucket_width")),
        sa.PrimaryKeyConstraint(
            "app_id", "width", "key", "value", "at", name=op.f("pk_latency_label_bucket")
        ),
    )
    op.create_index(
        op.f("ix_latency_label_bucket_app_id_width_at"),
        "latency_label_bucket",
        ["app_id", "width", "at"],
    )
    op.execute(_MARK_EVERY_HOUR)


def downgrade() -> None:
    op.drop_index(
        op.f("ix_latency_label_bucket_app_id_width_at"), table_name="latency_label_bucket"
    )
    op.drop_table("latency_label_bucket")
    op.execute("DELETE FROM insight_change WHERE kind = 'latency_label'")
    op.drop_constraint(op.f("ck_insight_change_kind"), "insight_change", type_="check")
    op.create_check_constraint(
        op.f("ck_insight_change_kind"), "insight_change", "kind IN ('usage', 'latency')"
    )
