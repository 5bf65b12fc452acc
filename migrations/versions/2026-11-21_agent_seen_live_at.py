"""Agent: seen_live_at, when a reconciliation pass last saw Agora list or report it live.

An agent Agora no longer knows (its query answers 404) is closed at the last time we know it was
alive; this column is the reconciliation side of that knowledge. Additive and nullable: safe to
run before the new worker is rolled out.

Revision ID: c4391d06b56b
Revises: fa18c83663e6
Create Date: 2026-11-21 05:23:14.426147
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "c4391d06b56b"
down_revision: str | None = "fa18c83663e6"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("agent", sa.Column("seen_live_at", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    op.drop_column("agent", "seen_live_at")
