"""Usage counts by minute: `usage_count`, and an index of FAILED stops.

`usage_count` holds, per app and UTC hour, the agents that started and those that became FAILED
with their stop before each minute of the hour (`service.usage`): usage without a label answers
any bucket, from any second, from these counts and the area under the app's concurrency instead
of reading the agents of every partial hour. Every hour `usage_hour` holds is marked here, so the
folder rewrites it with its counts; until it has, reads compute those hours from the agents.

Additive: the previous release keeps serving, but a fold it runs meanwhile leaves an hour without
its counts. To be exact for a rollout that overlapped such folds, mark the hours again once it is
done (the INSERT below, run by hand). `ix_agent_failed_stop` holds only FAILED agents: counting
the FAILED stops of a part of a minute no longer visits every agent that stopped in it.

Revision ID: 5b1d7c2e9a30
Revises: 02e48edec146
Create Date: 2026-11-28 18:45:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "5b1d7c2e9a30"
down_revision: str | None = "02e48edec146"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_MARK_EVERY_HOUR = """
    INSERT INTO insight_change (app_id, kind, hour)
    SELECT DISTINCT app_id, 'usage', hour FROM usage_hour
"""


def upgrade() -> None:
    op.create_table(
        "usage_count",
        sa.Column("app_id", sa.Text(), nullable=False),
        sa.Column("hour", sa.DateTime(timezone=True), nullable=False),
        sa.Column("sessions", postgresql.ARRAY(sa.Integer()), nullable=False),
        sa.Column("failed", postgresql.ARRAY(sa.Integer()), nullable=False),
        sa.PrimaryKeyConstraint("app_id", "hour", name=op.f("pk_usage_count")),
    )
    op.create_index(
        "ix_agent_failed_stop",
        "agent",
        ["app_id", "stopped_at"],
        postgresql_where=sa.text("state = 'FAILED' AND stopped_at IS NOT NULL"),
    )
    op.execute(_MARK_EVERY_HOUR)


def downgrade() -> None:
    op.drop_index("ix_agent_failed_stop", table_name="agent")
    op.drop_table("usage_count")
