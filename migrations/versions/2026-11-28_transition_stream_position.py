"""agent_transition: `xid`, the writing transaction's id, so the live stream reads it in order.

`GET /v1/stream` and the console read the transition log in `(xid, id)` order up to the oldest
transaction still running (`service/stream.py`): no row can then appear behind what was sent.
New rows take `pg_current_xact_id()` from the column's default, so the write path is unchanged;
existing rows get 0 (they sort before every new one, in `id` order). The column is added with a
constant default (no table rewrite) and the index built concurrently, so ingest goes on during
the migration. Additive: safe to run before the new release is rolled out.

Revision ID: 5d2e7c41a9b3
Revises: 8069b73b0ea9
Create Date: 2026-11-28 07:10:00
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "5d2e7c41a9b3"
down_revision: str | None = "8069b73b0ea9"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

INDEX = "ix_agent_transition_xid_id"


def upgrade() -> None:
    op.execute(
        "ALTER TABLE agent_transition ADD COLUMN IF NOT EXISTS xid bigint NOT NULL DEFAULT 0"
    )
    op.execute(
        "ALTER TABLE agent_transition ALTER COLUMN xid SET DEFAULT pg_current_xact_id()::text::bigint"
    )
    # CREATE INDEX CONCURRENTLY cannot run in a transaction; a build cut short leaves an invalid
    # index behind, which a rerun replaces.
    with op.get_context().autocommit_block():
        op.execute(f"DROP INDEX CONCURRENTLY IF EXISTS {INDEX}")
        op.execute(f"CREATE INDEX CONCURRENTLY {INDEX} ON agent_transition (xid, id)")


def downgrade() -> None:
    op.execute(f"DROP INDEX IF EXISTS {INDEX}")
    op.execute("ALTER TABLE agent_transition DROP COLUMN IF EXISTS xid")
