"""One agent's timeline in words for its console page (pure), and its transcript and turns.

What the timeline holds and in which order is `service.timeline`'s, the same answer as
`GET /v1/agents/{agent_id}/timeline`; this module only gives each item a title, a detail and a
tone.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from service import timeline as agent_timeline

SEGMENTS: Final = ("asr_ttlw", "llm_ttfb", "llm_ttfs", "tts_ttfb")


@dataclass(frozen=True, slots=True, kw_only=True)
class Item:
    at: str | None  # RFC 3339
    kind: str  # transition, error, metrics, turn, call_state, warning, transcript
    title: str
    detail: str
    tone: str = ""  # good, bad, warn or nothing


def build(items: Sequence[Mapping[str, Any]]) -> list[Item]:
    """The timeline's items (`service.timeline`), in their order, worded."""
    return [_WORDING[item["kind"]](item) for item in items]


def _transition(t: Mapping[str, Any]) -> Item:
    tone = {"FAILED": "bad", "STOPPED": "", "RUNNING": "good"}.get(t["to"], "")
    how = f"{t['cause']} via {t['source']}" + (" (inferred)" if t.get("inferred") else "")
    return Item(
        at=t["at"], kind="transition", title=f"{t['from']} → {t['to']}", detail=how, tone=tone
    )


def _error(e: Mapping[str, Any]) -> Item:
    where = " ".join(str(part) for part in (e.get("module"), e.get("code")) if part is not None)
    turn = f" (turn {e['turn_id']})" if e.get("turn_id") else ""
    return Item(
        at=e["at"],
        kind="error",
        title=f"error {where}".strip() + turn,
        detail=str(e.get("message") or ""),
        tone="bad",
    )


def _warning(warning: Mapping[str, Any]) -> Item:
    return Item(
        at=warning["at"], kind="warning", title="warning", detail=str(warning["text"]), tone="warn"
    )


def _turn(turn: Mapping[str, Any]) -> Item:
    latency = turn.get("e2e_latency_ms")
    parts = [
        f"{latency} ms end to end" if latency else None,
        turn.get("start_type"),
        turn.get("end_type"),
    ]
    return Item(
        at=turn["at"],
        kind="turn",
        title=f"turn {turn['turn_id']}",
        detail=" · ".join(str(p) for p in parts if p),
        tone="warn" if turn.get("end_type") == "interrupted" else "",
    )


def _call_state(call: Mapping[str, Any]) -> Item:
    return Item(
        at=call["at"],
        kind="call_state",
        title=f"{call['direction']} call",
        detail=_text(call.get("state")),
    )


def _transcript(transcript: Mapping[str, Any]) -> Item:
    return Item(
        at=transcript["at"],
        kind="transcript",
        title="transcript received",
        detail=f"{transcript['messages']} messages",
    )


def _metrics(figures: Mapping[str, Any]) -> Item:
    shown = [
        f"{name} {figures[name]} ms" for name in SEGMENTS if isinstance(figures.get(name), int)
    ]
    turn = figures.get("turn_id")
    return Item(
        at=figures["at"],
        kind="metrics",
        title=f"metrics, turn {turn}" if turn is not None else "metrics",
        detail=" · ".join(shown),
    )


_WORDING: Final = {
    "transition": _transition,
    "error": _error,
    "metrics": _metrics,
    "turn": _turn,
    "call_state": _call_state,
    "warning": _warning,
    "transcript": _transcript,
}


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


def _segments(data: object) -> dict[str, int]:
    metrics = data.get("metrics") if isinstance(data, dict) else None
    return agent_timeline.segments(
        metrics.get("segmented_latency_ms") if isinstance(metrics, dict) else None
    )


def pretty(payload: object, *, limit: int) -> str:
    """A stored payload as indented JSON, for the raw notifications, at most `limit` characters."""
    text = json.dumps(payload, indent=2, ensure_ascii=False, sort_keys=True)
    if len(text) <= limit:
        return text
    return text[:limit] + f"\n… cut at {limit:,} characters of {len(text):,}: the API has it whole"
