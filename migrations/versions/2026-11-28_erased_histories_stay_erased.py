"""An erased or expired history holds no transcript, and nothing written later brings it back.

`service/erasure.py` deletes an agent's transcript, turns and the transcript in its stored raw
103 (and the turns in its raw 112) and sets the history `erased` or `expired`. This revision makes
the database keep it that way, whichever write path comes later (a 103 or 112 delivered again or
late, the history worker's fetch from Agora, `reapply`):

- `history`: a CHECK that an erased or expired history's `contents` is empty and its `source`
  null; a trigger that skips any update taking it back to another status (a transcript stored
  later changes nothing; the row answers `erased` or `expired` for good).
- `agent_turn`: a statement trigger that deletes again the turns a statement inserted for an
  agent whose history is erased or expired (one join per statement, not a lookup per row: a 112
  or an Agora fetch may carry thousands of turns).

The write path strips a 103's transcript and a 112's turns it stores for such an agent itself,
after taking the agent's row. Writers and erasures take the agent's row `FOR UPDATE` (the history
worker `FOR KEY SHARE`) before they write about an agent, so they take turns: what a write does
for an agent is either seen and deleted by an erasure, or done after it and stripped.

Revision ID: 458d73fa6583
Revises: 5d2e7c41a9b3
Create Date: 2026-11-29 09:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "458d73fa6583"
down_revision: str | None = "5d2e7c41a9b3"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

GONE = "('erased', 'expired')"

TRIGGERS = f"""
CREATE FUNCTION history_stays_erased() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF OLD.status IN {GONE} THEN
        IF NEW.status NOT IN {GONE} THEN
            RETURN NULL;
        END IF;
        NEW.contents := '[]'::jsonb;
        NEW.source := NULL;
        NEW.transcript_at := NULL;
    END IF;
    RETURN NEW;
END;
$$;
CREATE TRIGGER history_stays_erased
    BEFORE UPDATE ON history
    FOR EACH ROW EXECUTE FUNCTION history_stays_erased();

CREATE FUNCTION agent_turn_not_for_erased() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM agent_turn AS t
    USING inserted AS i, history AS h
    WHERE t.app_id = i.app_id AND t.agent_id = i.agent_id AND t.turn_id = i.turn_id
      AND h.app_id = i.app_id AND h.agent_id = i.agent_id AND h.status IN {GONE};
    RETURN NULL;
END;
$$;
CREATE TRIGGER agent_turn_not_for_erased
    AFTER INSERT ON agent_turn
    REFERENCING NEW TABLE AS inserted
    FOR EACH STATEMENT EXECUTE FUNCTION agent_turn_not_for_erased();
"""


def upgrade() -> None:
    op.create_check_constraint(
        op.f("ck_history_erased_empty"),
        "history",
        f"status NOT IN {GONE} OR (contents = '[]'::jsonb AND source IS NULL)",
    )
    op.execute(TRIGGERS)


def downgrade() -> None:
    op.execute(
        "DROP TRIGGER agent_turn_not_for_erased ON agent_turn;"
        " DROP FUNCTION agent_turn_not_for_erased();"
        " DROP TRIGGER history_stays_erased ON history;"
        " DROP FUNCTION history_stays_erased();"
    )
    op.drop_constraint(op.f("ck_history_erased_empty"), "history", type_="check")
