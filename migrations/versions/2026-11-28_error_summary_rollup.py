"""Error summary rollup: `error_hour`, and `errors` marks.

- `error_hour` holds, per app, UTC hour and (module, code), the errors, the distinct agents with
  one, the latest time and, for agents that had the same error before, how many hours back the
  previous one was (`service.error_hours`): the error summary sums it instead of grouping every
  error of the range by agent.
- `insight_change.kind` may be `errors`: that hour's rows need recomputing. Every hour holding a
  timed error is marked here, so the folder builds the table from the errors already stored; until
  it has, reads compute those hours from the errors.

Additive: the previous release keeps serving, and what it stores meanwhile marks nothing. To be
exact for a rollout that overlapped such writes, mark the hours again once it is done (the INSERT
below, run by hand).

Revision ID: 78a3277e51f9
Revises: d5e973cd9b1f
Create Date: 2026-11-28 16:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "78a3277e51f9"
down_revision: str | None = "d5e973cd9b1f"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_MARK_EVERY_HOUR = """
    INSERT INTO insight_change (app_id, kind, hour)
    SELECT DISTINCT app_id, 'errors', date_trunc('hour', event_at, 'UTC')
    FROM agent_error WHERE event_at IS NOT NULL
"""


def upgrade() -> None:
    op.drop_constraint(op.f("ck_insight_change_kind"), "insight_change", type_="check")
    op.create_check_constraint(
        op.f("ck_insight_change_kind"),
        "insight_change",
        "kind IN ('usage', 'latency', 'latency_label', 'errors')",
    )
    op.create_table(
        "error_hour",
        sa.Column("app_id", sa.Text(), nullable=False),
        sa.Column("hour", sa.DateTime(timezone=True), nullable=False),
        sa.Column("module", sa.Text(), nullable=True),
        sa.Column("code", sa.BigInteger(), nullable=True),
        sa.Column("errors", sa.BigInteger(), nullable=False),
        sa.Column("agents", sa.Integer(), nullable=False),
        sa.Column("last_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("gap_hours", postgresql.ARRAY(sa.Integer()), nullable=False),
        sa.Column("gap_agents", postgresql.ARRAY(sa.Integer()), nullable=False),
    )
    op.create_index(op.f("ix_error_hour_app_id_hour"), "error_hour", ["app_id", "hour"])
    op.execute(_MARK_EVERY_HOUR)


def downgrade() -> None:
    op.drop_index(op.f("ix_error_hour_app_id_hour"), table_name="error_hour")
    op.drop_table("error_hour")
    op.execute("DELETE FROM insight_change WHERE kind = 'errors'")
    op.drop_constraint(op.f("ck_insight_change_kind"), "insight_change", type_="check")
    op.create_check_constraint(
        op.f("ck_insight_change_kind"),
        "insight_change",
        "kind IN ('usage', 'latency', 'latency_label')",
    )
