"""PCU changes are recorded by the write path and folded into the rollup off the request path.

`pcu_change` holds what a transaction changed (moved interval edges, and whether an agent holds a
slot now) until the folder (`service.rollup.fold`) rewrites the touched minutes and hours and
settles the threshold alarm; `pcu_alarm.current` is the count the alarm was settled at. The
rollup is exact for every committed agent when this runs (the previous release kept it in the
same transaction), so nothing needs folding yet: the new table starts empty.

Revision ID: 8069b73b0ea9
Revises: bb82bfb92db0
Create Date: 2026-11-28 08:40:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "8069b73b0ea9"
down_revision: str | None = "bb82bfb92db0"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "pcu_change",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=False), nullable=False),
        sa.Column("app_id", sa.Text(), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("delta", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column("live", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_pcu_change")),
    )
    op.create_index(op.f("ix_pcu_change_app_id_at"), "pcu_change", ["app_id", "at"])
    op.add_column(
        "pcu_alarm",
        sa.Column("current", sa.Integer(), server_default=sa.text("0"), nullable=False),
    )
    op.execute(
        "UPDATE pcu_alarm AS a SET current = (SELECT count(*) FROM agent"
        " WHERE agent.app_id = a.app_id"
        " AND state IN ('STARTING', 'RUNNING', 'RECOVERING', 'STOPPING'))"
    )


def downgrade() -> None:
    op.drop_column("pcu_alarm", "current")
    op.drop_index(op.f("ix_pcu_change_app_id_at"), table_name="pcu_change")
    op.drop_table("pcu_change")
