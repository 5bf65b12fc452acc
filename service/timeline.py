"""One agent's story in event-time order, merged from what the ledger holds about it.

The one implementation behind `GET /v1/agents/{agent_id}/timeline` and the console's agent page
(`service/console/timeline.py` only words it). Every kind comes from its own table:

    transition   agent_transition   event time                    from, to, cause, source
    error        agent_error        event time (else last)        module, code, message, turn_id
    metrics      agent_metric       event time (else last)        turn_id and the stage figures
    turn         agent_turn         end, else start (else last)   turn_id, times, latencies, types
    call_state   call_state         reported, else received       direction, state
    warning      agent.warning      its event time                text
    transcript   history            when it was stored            source, number of messages

Never a transcript's words or a turn's raw data: an erased or expired history has no turns and
no stored transcript, so it shows neither. Bounded: the answer holds the first `MAX_ITEMS` items
of the merged order and says `truncated` when there are more; each kind is read with
`LIMIT MAX_ITEMS + 1`, which is enough for the merge to be exact (the first N of the merge are
among the first N of each kind). Ties in time go by kind (the order above), then by the kind's
own order (row id, turn id), so the order is stable; items without a time come last.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, Final

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from service import queries

KINDS: Final = ("transition", "error", "metrics", "turn", "call_state", "warning", "transcript")
MAX_ITEMS: Final = 2000
# An error message in the timeline is cut here (the agent and `/v1/errors` answer it whole).
MAX_MESSAGE_CHARS: Final = 1000
STAGES: Final = ("asr_ttlw", "llm_ttft", "tts_ttfb")
METRIC_FIGURES: Final = ("asr_ttlw", "llm_ttfb", "llm_ttfs", "tts_ttfb")
_EARLIEST: Final = datetime.min.replace(tzinfo=UTC)

_KEY = "app_id = :app_id AND agent_id = :agent_id"
_SQL: Final = {
    "transition": f"""
        SELECT event_at AS at, from_state AS "from", to_state AS "to", cause, source, inferred
        FROM agent_transition WHERE {_KEY} ORDER BY event_at, id LIMIT :n""",
    "error": f"""
        SELECT event_at AS at, module, code, left(message, {MAX_MESSAGE_CHARS}) AS message,
               turn_id
        FROM agent_error WHERE {_KEY} ORDER BY event_at NULLS LAST, id LIMIT :n""",
    "metrics": f"""
        SELECT event_at AS at, turn_id, {", ".join(METRIC_FIGURES)}
        FROM agent_metric WHERE {_KEY} ORDER BY event_at NULLS LAST, id LIMIT :n""",
    # The stage columns may be unset on turns stored before they existed: `data` has them.
    "turn": f"""
        SELECT coalesce(end_at, start_at) AS at, turn_id, start_at, end_at, start_type,
               end_type, e2e_latency_ms, {", ".join(STAGES)},
               data->'metrics'->'segmented_latency_ms' AS segments
        FROM agent_turn WHERE {_KEY}
        ORDER BY coalesce(end_at, start_at) NULLS LAST, turn_id LIMIT :n""",
    "call_state": f"""
        SELECT coalesce(reported_at, received_at) AS at, direction, state
        FROM call_state WHERE {_KEY}
        ORDER BY coalesce(reported_at, received_at), id LIMIT :n""",
    "warning": f"""
        SELECT warning_at AS at, warning AS text
        FROM agent WHERE {_KEY} AND warning IS NOT NULL""",
    "transcript": f"""
        SELECT transcript_at AS at, source, jsonb_array_length(contents) AS messages
        FROM history
        WHERE {_KEY} AND transcript_at IS NOT NULL AND status NOT IN ('erased', 'expired')""",
}


async def read(
    conn: AsyncConnection,
    *,
    app_id: str,
    agent_id: str,
    kinds: Iterable[str] = KINDS,
    limit: int = MAX_ITEMS,
) -> dict[str, Any] | None:
    """The agent's timeline (`kinds` only), or None if the agent is unknown."""
    key = {"app_id": app_id, "agent_id": agent_id}
    if await conn.scalar(text(f"SELECT 1 FROM agent WHERE {_KEY}"), key) is None:
        return None
    found: list[tuple[str, Mapping[str, Any]]] = []
    for kind in KINDS:
        if kind in kinds:
            rows = await conn.execute(text(_SQL[kind]), {**key, "n": limit + 1})
            found += [(kind, dict(row)) for row in rows.mappings()]
    items = merge(found)
    return {
        "agent_id": agent_id,
        "app_id": app_id,
        "items": items[:limit],
        "truncated": len(items) > limit,
    }


def merge(found: Sequence[tuple[str, Mapping[str, Any]]]) -> list[dict[str, Any]]:
    """Rows of each kind, each kind in its own order, as items in timeline order (pure)."""
    ranked = sorted(
        enumerate(found),
        key=lambda pair: (
            pair[1][1]["at"] is None,
            pair[1][1]["at"] or _EARLIEST,
            KINDS.index(pair[1][0]),
            pair[0],
        ),
    )
    return [_item(kind, row) for _, (kind, row) in ranked]


def _item(kind: str, row: Mapping[str, Any]) -> dict[str, Any]:
    head = {"at": queries.rfc3339(row["at"]), "kind": kind}
    if kind == "turn":
        return {**head, **_turn(row)}
    fields = {name: value for name, value in row.items() if name != "at"}
    return {**head, **fields}


def _turn(row: Mapping[str, Any]) -> dict[str, Any]:
    figures = segments(row["segments"])
    return {
        "turn_id": row["turn_id"],
        "start_at": queries.rfc3339(row["start_at"]),
        "end_at": queries.rfc3339(row["end_at"]),
        "start_type": row["start_type"],
        "end_type": row["end_type"],
        "e2e_latency_ms": row["e2e_latency_ms"],
        **{stage: row[stage] if row[stage] is not None else figures.get(stage) for stage in STAGES},
    }


def segments(raw: object) -> dict[str, int]:
    """A turn's `segmented_latency_ms` by stage: 112 sends an object, the REST API a list of
    {name, latency}; only whole numbers are figures."""
    pairs: Iterable[tuple[object, object]] = ()
    if isinstance(raw, dict):
        pairs = raw.items()
    elif isinstance(raw, list):
        pairs = ((i.get("name"), i.get("latency")) for i in raw if isinstance(i, dict))
    return {
        str(name): value
        for name, value in pairs
        if type(value) is int and -(2**31) <= value < 2**31
    }
