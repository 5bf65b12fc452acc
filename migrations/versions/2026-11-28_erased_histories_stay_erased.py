"""An erased or expired history holds no transcript, and nothing written later brings it back.

`service/erasure.py` deletes an agent's transcript, turns and the transcript in its stored raw
103 (and the turns in its raw 112) and sets the history `erased` or `expired`. This revision makes
the database keep it that way, whichever write path comes later (a 103 or 112 delivered again or
late, the history worker's fetch from Agora, `reapply`):

- `history`: a CHECK that an erased or expired history's `contents` is empty and its `source`
  null; a trigger that skips any update taking it back to another status (a transcript stored
  later changes nothing; the row answers `erased` or `expired` for good).
- `agent_turn`: a trigger that skips inserting a turn for an agent whose history is erased or
  expired.
- `notification`: a trigger that stores a 103 or 112 for such an agent without its `contents` or
  `turns` (and without `raw`, the exact bytes).

The two insert triggers take `FOR KEY SHARE` on the history row, which conflicts only with the
`FOR UPDATE` an erasure takes first: a write racing an erasure either waits for it and then sees
the history erased, or holds the erasure back until it commits, so the erasure's own deletes see
its rows. Ordinary updates of the history (`FOR NO KEY UPDATE`) never wait for these locks.

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

CREATE FUNCTION history_is_erased(p_app_id text, p_agent_id text) RETURNS boolean
LANGUAGE plpgsql AS $$
DECLARE
    gone boolean;
BEGIN
    SELECT status IN {GONE} INTO gone FROM history
        WHERE app_id = p_app_id AND agent_id = p_agent_id
        FOR KEY SHARE;
    RETURN coalesce(gone, false);
END;
$$;

CREATE FUNCTION agent_turn_not_for_erased() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF history_is_erased(NEW.app_id, NEW.agent_id) THEN
        RETURN NULL;
    END IF;
    RETURN NEW;
END;
$$;
CREATE TRIGGER agent_turn_not_for_erased
    BEFORE INSERT ON agent_turn
    FOR EACH ROW EXECUTE FUNCTION agent_turn_not_for_erased();

CREATE FUNCTION notification_without_erased_transcript() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF history_is_erased(NEW.app_id, NEW.agent_id) THEN
        NEW.body := NEW.body #- CASE NEW.event_type
            WHEN 103 THEN '{{payload,contents}}'::text[]
            ELSE '{{payload,turns}}'::text[]
        END;
        NEW.raw := NULL;
    END IF;
    RETURN NEW;
END;
$$;
CREATE TRIGGER notification_without_erased_transcript
    BEFORE INSERT ON notification
    FOR EACH ROW
    WHEN (NEW.event_type IN (103, 112) AND NEW.agent_id IS NOT NULL)
    EXECUTE FUNCTION notification_without_erased_transcript();
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
        "DROP TRIGGER notification_without_erased_transcript ON notification;"
        " DROP FUNCTION notification_without_erased_transcript();"
        " DROP TRIGGER agent_turn_not_for_erased ON agent_turn;"
        " DROP FUNCTION agent_turn_not_for_erased();"
        " DROP FUNCTION history_is_erased(text, text);"
        " DROP TRIGGER history_stays_erased ON history;"
        " DROP FUNCTION history_stays_erased();"
    )
    op.drop_constraint(op.f("ck_history_erased_empty"), "history", type_="check")
