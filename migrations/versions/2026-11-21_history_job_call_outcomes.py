"""History job: how each Agora call ended (history_call, turns_call).

A job taken over after its worker died redoes only the calls without an outcome, and a settled
call is never made again. Additive: safe to run before the new worker is rolled out.

Revision ID: fa18c83663e6
Revises: 734de7b631b0
Create Date: 2026-11-21 04:51:45.335645
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "fa18c83663e6"
down_revision: str | None = "734de7b631b0"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

OUTCOMES = "'ok', 'skipped', 'not_found', 'rejected', 'gave_up', 'not_configured'"


def upgrade() -> None:
    op.add_column("history_job", sa.Column("history_call", sa.Text(), nullable=True))
    op.add_column("history_job", sa.Column("turns_call", sa.Text(), nullable=True))
    op.create_check_constraint(
        op.f("ck_history_job_history_call"), "history_job", f"history_call IN ({OUTCOMES})"
    )
    op.create_check_constraint(
        op.f("ck_history_job_turns_call"), "history_job", f"turns_call IN ({OUTCOMES})"
    )


def downgrade() -> None:
    op.drop_constraint(op.f("ck_history_job_turns_call"), "history_job", type_="check")
    op.drop_constraint(op.f("ck_history_job_history_call"), "history_job", type_="check")
    op.drop_column("history_job", "turns_call")
    op.drop_column("history_job", "history_call")
