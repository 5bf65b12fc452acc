"""Webhook counts: deliveries per app, minute, answer and reason (the console's webhook health).

Duplicates and refusals store nothing else, so each serving process counts its answers in
memory and adds them here every few seconds (`service.webhook_counts`). Additive: safe to run
before the new release is rolled out (the old one never writes here).

Revision ID: dbcc06e59ee8
Revises: 3c9e1f7a2d41
Create Date: 2026-11-28 11:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "dbcc06e59ee8"
down_revision: str | None = "3c9e1f7a2d41"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_OUTCOMES = (
    "accepted",
    "ignored",
    "unapplied",
    "duplicate",
    "rejected",
    "unavailable",
    "error",
)


def upgrade() -> None:
    op.create_table(
        "webhook_count",
        sa.Column("app_id", sa.Text(), nullable=False),
        sa.Column("minute", sa.DateTime(timezone=True), nullable=False),
        sa.Column("outcome", sa.Text(), nullable=False),
        sa.Column("reason", sa.Text(), server_default="", nullable=False),
        sa.Column("count", sa.BigInteger(), nullable=False),
        sa.CheckConstraint(
            "outcome IN (" + ", ".join(f"'{o}'" for o in _OUTCOMES) + ")",
            name=op.f("ck_webhook_count_outcome"),
        ),
        sa.PrimaryKeyConstraint(
            "app_id", "minute", "outcome", "reason", name=op.f("pk_webhook_count")
        ),
    )
    op.create_index(op.f("ix_webhook_count_minute"), "webhook_count", ["minute"])


def downgrade() -> None:
    op.drop_index(op.f("ix_webhook_count_minute"), table_name="webhook_count")
    op.drop_table("webhook_count")
