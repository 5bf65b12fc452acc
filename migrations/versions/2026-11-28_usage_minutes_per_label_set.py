"""Usage by minute per label set: `usage_minute`.

`usage_minute` holds, per app, UTC hour and label set, the agent time, starts and FAILED stops
before each minute of the hour and the agents holding each minute's first instant
(`service.usage`): usage grouped by a label answers a bucket edge at any second from these and
the few agents that start or end in the part of a minute before the edge, instead of reading
the agents of every partial hour. Every hour `usage_hour` holds is marked here (an hour marked
already is not marked twice), so the folder rewrites it with its minutes; until it has, reads
compute those hours from the agents.

Additive: the previous release keeps serving, but a fold it runs meanwhile leaves an hour
without its minutes. To be exact for a rollout that overlapped such folds, mark the hours again
once it is done (the INSERT below, run by hand).

Revision ID: 8f3a61c0d2b4
Revises: 5b1d7c2e9a30
Create Date: 2026-11-28 22:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "8f3a61c0d2b4"
down_revision: str | None = "5b1d7c2e9a30"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_MARK_EVERY_HOUR = """
    INSERT INTO insight_change (app_id, kind, hour)
    SELECT DISTINCT u.app_id, 'usage', u.hour FROM usage_hour AS u
    WHERE NOT EXISTS (
        SELECT FROM insight_change AS c
        WHERE c.app_id = u.app_id AND c.kind = 'usage' AND c.hour = u.hour
    )
"""


def upgrade() -> None:
    op.create_table(
        "usage_minute",
        sa.Column("app_id", sa.Text(), nullable=False),
        sa.Column("hour", sa.DateTime(timezone=True), nullable=False),
        sa.Column("labels", postgresql.JSONB(astext_type=sa.Text()), nullable=False),
        sa.Column("first", sa.Integer(), nullable=False),
        sa.Column("agent_us", postgresql.ARRAY(sa.BigInteger()), nullable=False),
        sa.Column("level", postgresql.ARRAY(sa.Integer()), nullable=False),
        sa.Column("sessions", postgresql.ARRAY(sa.Integer()), nullable=False),
        sa.Column("failed", postgresql.ARRAY(sa.Integer()), nullable=False),
        sa.PrimaryKeyConstraint("app_id", "hour", "labels", name=op.f("pk_usage_minute")),
    )
    op.execute(_MARK_EVERY_HOUR)


def downgrade() -> None:
    op.drop_table("usage_minute")
