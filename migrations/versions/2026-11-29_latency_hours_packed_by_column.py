"""Turn latency: an hour's turns (`latency_bucket.by_turn`) packed column by column, in about half
the bytes.

`by_turn` held 25 bytes a turn (`end_at` in µs since the epoch, a byte of figures lacking, four
int4). It now holds a format byte (2) and a byte of flags, then each turn's `end_at` as µs since
the hour's start (uint32), a byte per turn of figures lacking only when some turn of the hour
lacks one, and each figure's values in 16 bits when all the hour's fit [0, 65535], else int4:
12 bytes a turn as latencies usually are, 21 at most (`service.latency._PACKED`). A read of a
month from an odd second fetches every hour's row, and reading them out of TOAST was most of
its database time. Every hour row is repacked here from the turns, in one statement: 35 s for
a month of 5,000,000 turns on PostgreSQL 15 (about 7 µs a turn; 16 and later sort once for the
columns' ordered aggregates), so a database of up to ~80,000,000 turns stays within the migrate
Job's 600 s deadline (`deploy/kubernetes/base/migrate-job.yaml`); run `convoai-ledger migrate`
by hand for more.

During the rollout, the previous release reads a repacked row as one that does not hold its
turns (its length is never 25 bytes a turn) and computes that hour from the turns, and a row it
folds meanwhile is in the previous format, which this release computes from the turns too:
both exact. Rows the previous release folded during the rollout stay in its format until their
hour is folded again: to read them packed, run `_PACK` below again by hand once it is done.
The downgrade packs every hour row in the previous format again.

Revision ID: d216e87a78e6
Revises: cece28fbc7d9
Create Date: 2026-11-29 05:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "d216e87a78e6"
down_revision: str | None = "cece28fbc7d9"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_TURNS_OF_HOUR = """
        FROM agent_turn AS t
        WHERE t.app_id = b.app_id AND t.end_at >= b.at AND t.end_at < b.at + interval '1 hour'
"""
_LACKS = """(1 * (t.e2e_latency_ms IS NULL)::int + 2 * (t.asr_ttlw IS NULL)::int
             + 4 * (t.llm_ttft IS NULL)::int + 8 * (t.tts_ttfb IS NULL)::int)"""
_NARROW = "coalesce(min(t.{0}) >= 0 AND max(t.{0}) <= 65535, true)"


def _column(name: str) -> str:
    return f"""
        || CASE WHEN {_NARROW.format(name)}
           THEN string_agg(substring(int4send(coalesce(t.{name}, 0)) FROM 3), '' ORDER BY t.end_at)
           ELSE string_agg(int4send(coalesce(t.{name}, 0)), '' ORDER BY t.end_at) END"""


_FIGURES = ("e2e_latency_ms", "asr_ttlw", "llm_ttft", "tts_ttfb")

# As `service.latency._PACKED` writes an hour's turns, at this revision.
_PACK = rf"""
    UPDATE latency_bucket AS b SET by_turn = (
        SELECT set_byte(set_byte('\x0000'::bytea, 0, 2), 1,
                        {" + ".join(f"{1 << i} * ({_NARROW.format(f)})::int" for i, f in enumerate(_FIGURES))}
                        + 16 * coalesce(bool_or({_LACKS} > 0), false)::int)
        || string_agg(substring(int8send((extract(epoch FROM t.end_at - b.at) * 1000000)::int8)
                                FROM 5), '' ORDER BY t.end_at)
        || coalesce(CASE WHEN bool_or({_LACKS} > 0)
                    THEN string_agg(set_byte('\x00'::bytea, 0, {_LACKS}), '' ORDER BY t.end_at)
                    END, '')
        {"".join(_column(f) for f in _FIGURES)}
        {_TURNS_OF_HOUR}
    )
    WHERE b.width = 3600
"""

# As the previous revision (`cece28fbc7d9`) fills them: 25 bytes a turn.
_UNPACK = rf"""
    UPDATE latency_bucket AS b SET by_turn = (
        SELECT string_agg(
            int8send((extract(epoch FROM t.end_at) * 1000000)::int8)
            || set_byte('\x00'::bytea, 0, {_LACKS})
            || int4send(coalesce(t.e2e_latency_ms, 0)) || int4send(coalesce(t.asr_ttlw, 0))
            || int4send(coalesce(t.llm_ttft, 0)) || int4send(coalesce(t.tts_ttfb, 0)),
            '' ORDER BY t.end_at)
        {_TURNS_OF_HOUR}
    )
    WHERE b.width = 3600
"""


def upgrade() -> None:
    op.execute(_PACK)


def downgrade() -> None:
    op.execute(_UNPACK)
