"""Turn latency: each hour's turns, one by one, in its rollup row (`latency_bucket.by_turn`).

An hour's row of `latency_bucket` also holds its turns' end times and figures in end-time order
(`service.latency_ranks.TURN`), so a series whose buckets cut hours (a `from` off the hour, a step
that is not an hour or a day) takes the exact percentiles of any part of an hour from the rollup
instead of reading every turn of the range. Stored uncompressed (`EXTERNAL`): a read takes a
month of these at once, and compressing would cost every read its decompression. The hour rows
already folded are filled here from the turns; until a row holds as many turns as its count,
reads compute that hour from the turns.

Additive: the previous release keeps serving, and a row it folds meanwhile is left without the
turns (or with fewer than its count), which reads notice and compute from the turns. A row it
refolds with the same count but other turns (a turn deleted and another stored in the same
ended hour during the rollout) is not noticed: to be exact for such a rollout, run the UPDATE
below again by hand once it is done.

Revision ID: cece28fbc7d9
Revises: 8f3a61c0d2b4
Create Date: 2026-11-29 00:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "cece28fbc7d9"
down_revision: str | None = "8f3a61c0d2b4"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# As `service.latency._TURN` writes them, at this revision.
_FILL_HOUR_ROWS = r"""
    UPDATE latency_bucket AS b SET by_turn = (
        SELECT string_agg(
            int8send((extract(epoch FROM t.end_at) * 1000000)::int8)
            || set_byte('\x00'::bytea, 0, (t.e2e_latency_ms IS NULL)::int
                                          + 2 * (t.asr_ttlw IS NULL)::int
                                          + 4 * (t.llm_ttft IS NULL)::int
                                          + 8 * (t.tts_ttfb IS NULL)::int)
            || int4send(coalesce(t.e2e_latency_ms, 0)) || int4send(coalesce(t.asr_ttlw, 0))
            || int4send(coalesce(t.llm_ttft, 0)) || int4send(coalesce(t.tts_ttfb, 0)),
            '' ORDER BY t.end_at)
        FROM agent_turn AS t
        WHERE t.app_id = b.app_id AND t.end_at >= b.at AND t.end_at < b.at + interval '1 hour'
    )
    WHERE b.width = 3600
"""


def upgrade() -> None:
    op.add_column("latency_bucket", sa.Column("by_turn", sa.LargeBinary(), nullable=True))
    op.execute("ALTER TABLE latency_bucket ALTER COLUMN by_turn SET STORAGE EXTERNAL")
    op.execute(_FILL_HOUR_ROWS)


def downgrade() -> None:
    op.drop_column("latency_bucket", "by_turn")
