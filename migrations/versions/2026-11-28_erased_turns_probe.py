"""The erased-turns trigger probes each inserted turn's history by its key.

`agent_turn_not_for_erased` (revision 458d73fa6583) deletes again the turns a statement inserted
for an agent whose history is erased or expired. It joined the inserted turns with `history` on
the status, which the planner may answer by reading every erased or expired history (a scan of
the whole table while it is small) once per statement, so once per write group. Same rule, now a
probe of `history`'s primary key per inserted turn: the same cost at any table size.

Revision ID: 02e48edec146
Revises: 78a3277e51f9
Create Date: 2026-11-28 16:30:00
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "02e48edec146"
down_revision: str | None = "78a3277e51f9"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

GONE = "('erased', 'expired')"

PROBE = f"""
CREATE OR REPLACE FUNCTION agent_turn_not_for_erased() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM agent_turn AS t
    USING inserted AS i
    WHERE t.app_id = i.app_id AND t.agent_id = i.agent_id AND t.turn_id = i.turn_id
      AND coalesce((SELECT h.status IN {GONE} FROM history AS h
                    WHERE h.app_id = i.app_id AND h.agent_id = i.agent_id), false);
    RETURN NULL;
END;
$$;
"""

JOIN = f"""
CREATE OR REPLACE FUNCTION agent_turn_not_for_erased() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM agent_turn AS t
    USING inserted AS i, history AS h
    WHERE t.app_id = i.app_id AND t.agent_id = i.agent_id AND t.turn_id = i.turn_id
      AND h.app_id = i.app_id AND h.agent_id = i.agent_id AND h.status IN {GONE};
    RETURN NULL;
END;
$$;
"""


def upgrade() -> None:
    op.execute(PROBE)


def downgrade() -> None:
    op.execute(JOIN)
