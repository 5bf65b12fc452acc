"""One agent's story in event-time order, merged from what the ledger holds (pure).

Transitions, errors and the warning come from the agent (`queries.agent_detail`), turns from its
history (`queries.agent_history`); metrics (111), call states (201/202) and the transcript's
arrival (103) from its stored notifications (`queries.agent_events`), so they show as long as
those are kept (`NOTIFICATION_RETENTION_DAYS`). Items without a time sort last.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final

from service import events

_LATEST: Final = datetime.max.replace(tzinfo=UTC)
SEGMENTS: Final = ("asr_ttlw", "llm_ttfb", "llm_ttfs", "tts_ttfb")


@dataclass(frozen=True, slots=True, kw_only=True)
class Item:
    at: str | None  # RFC 3339
    kind: str  # transition, error, metrics, turn, call_state, warning, transcript
    title: str
    detail: str
    tone: str = ""  # good, bad, warn or nothing


def build(
    *,
    agent: Mapping[str, Any],
    history: Mapping[str, Any] | None,
    notifications: Sequence[Mapping[str, Any]],
) -> list[Item]:
    items = [
        *(_transition(t) for t in agent["transitions"]),
        *(_error(e) for e in agent["errors"]),
        *_warning(agent.get("warning")),
        *(_turn(t) for t in (history or {}).get("turns", [])),
        *(item for n in notifications for item in _from_notification(n)),
    ]
    return sorted(items, key=_sort_key)


def _sort_key(item: Item) -> datetime:
    if item.at is None:
        return _LATEST
    try:
        return datetime.fromisoformat(item.at)
    except ValueError:
        return _LATEST


def _transition(t: Mapping[str, Any]) -> Item:
    tone = {"FAILED": "bad", "STOPPED": "", "RUNNING": "good"}.get(t["to"], "")
    how = f"{t['cause']} via {t['source']}" + (" (inferred)" if t.get("inferred") else "")
    return Item(
        at=t["event_at"], kind="transition", title=f"{t['from']} → {t['to']}", detail=how, tone=tone
    )


def _error(e: Mapping[str, Any]) -> Item:
    where = " ".join(str(part) for part in (e.get("module"), e.get("code")) if part is not None)
    turn = f" (turn {e['turn_id']})" if e.get("turn_id") else ""
    return Item(
        at=e.get("at"),
        kind="error",
        title=f"error {where}".strip() + turn,
        detail=str(e.get("message") or ""),
        tone="bad",
    )


def _warning(warning: Mapping[str, Any] | None) -> list[Item]:
    if not warning:
        return []
    return [
        Item(
            at=warning.get("at"),
            kind="warning",
            title="warning",
            detail=str(warning.get("message") or ""),
            tone="warn",
        )
    ]


def _turn(turn: Mapping[str, Any]) -> Item:
    latency = turn.get("e2e_latency_ms")
    parts = [
        f"{latency} ms end to end" if latency else None,
        turn.get("start_type"),
        turn.get("end_type"),
    ]
    return Item(
        at=turn.get("end_at") or turn.get("start_at"),
        kind="turn",
        title=f"turn {turn['turn_id']}",
        detail=" · ".join(str(p) for p in parts if p),
        tone="warn" if turn.get("end_type") == "interrupted" else "",
    )


def _from_notification(n: Mapping[str, Any]) -> list[Item]:
    raw = n.get("payload")
    payload: Mapping[str, Any] = raw if isinstance(raw, dict) else {}
    at = n.get("event_time") or n.get("received_at")
    kind = n.get("event_type")
    if kind == events.AGENT_METRICS:
        return [_metrics(at, m) for m in payload.get("metrics") or [] if isinstance(m, dict)]
    if kind in (events.INBOUND_CALL_STATE, events.OUTBOUND_CALL_STATE):
        direction = "inbound" if kind == events.INBOUND_CALL_STATE else "outbound"
        return [
            Item(
                at=at,
                kind="call_state",
                title=f"{direction} call",
                detail=_text(payload.get("state")),
            )
        ]
    if kind == events.AGENT_HISTORY:
        contents = payload.get("contents")
        count = len(contents) if isinstance(contents, list) else 0
        return [
            Item(at=at, kind="transcript", title="transcript received", detail=f"{count} messages")
        ]
    return []


def _metrics(at: str | None, figures: Mapping[str, Any]) -> Item:
    shown = [
        f"{name} {figures[name]} ms" for name in SEGMENTS if isinstance(figures.get(name), int)
    ]
    turn = figures.get("turn_id")
    return Item(
        at=at,
        kind="metrics",
        title=f"metrics, turn {turn}" if turn is not None else "metrics",
        detail=" · ".join(shown),
    )


def _text(value: object) -> str:
    if value is None:
        return ""
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)


def conversation(history: Mapping[str, Any] | None) -> list[dict[str, str]]:
    """The transcript as messages: `side` user, agent or other, and the text."""
    messages = []
    for item in (history or {}).get("contents", []):
        role = _text(item.get("role"))
        side = "user" if role == "user" else "agent" if role == "assistant" else "other"
        messages.append(
            {"role": role or "unknown", "side": side, "text": _text(item.get("content"))}
        )
    return messages


def turns(history: Mapping[str, Any] | None) -> list[dict[str, Any]]:
    """The history's turns, each with `segments`: its segmented latencies by name (112 sends an
    object, the REST API a list of {name, latency})."""
    return [
        {**turn, "segments": _segments(turn.get("data"))}
        for turn in (history or {}).get("turns", [])
    ]


def _segments(data: object) -> dict[str, Any]:
    metrics = data.get("metrics") if isinstance(data, dict) else None
    raw = metrics.get("segmented_latency_ms") if isinstance(metrics, dict) else None
    if isinstance(raw, dict):
        return raw
    if isinstance(raw, list):
        return {
            str(item.get("name")): item.get("latency") for item in raw if isinstance(item, dict)
        }
    return {}


def pretty(payload: object, *, limit: int) -> str:
    """A stored payload as indented JSON, for the raw notifications, at most `limit` characters."""
    text = json.dumps(payload, indent=2, ensure_ascii=False, sort_keys=True)
    if len(text) <= limit:
        return text
    return text[:limit] + f"\n… cut at {limit:,} characters of {len(text):,}: the API has it whole"
