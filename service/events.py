"""Agora NCS notifications as values (pure: no I/O).

`parse(body)` validates a verified raw body once, at the edge, and returns a `Notification`: the
envelope, the decoded body (stored verbatim as jsonb) and, for the ConvoAI events we act on, a typed
`Event`. Anything malformed raises `MalformedEvent` with a detail naming the field.

Field names and meanings quote Agora's "Notification event types" page (docs.agora.io,
conversational-ai/develop/event-types). Where the docs are loose we accept every documented
variant: `turn_id` as integer or string, timestamps in seconds or milliseconds, `name` and
`labels` absent on older payloads.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final, Literal

from service.errors import MalformedEvent

CONVOAI_PRODUCT_ID: Final = 17

AGENT_JOINED: Final = 101
AGENT_LEFT: Final = 102
AGENT_HISTORY: Final = 103
AGENT_EXPIRE: Final = 104
AGENT_ERROR: Final = 110
AGENT_METRICS: Final = 111
TURNS_FINISHED: Final = 112
INBOUND_CALL_STATE: Final = 201
OUTBOUND_CALL_STATE: Final = 202

EVENT_NAMES: Final[Mapping[int, str]] = {
    AGENT_JOINED: "agent_joined",
    AGENT_LEFT: "agent_left",
    AGENT_HISTORY: "agent_history",
    AGENT_EXPIRE: "agent_expire",
    AGENT_ERROR: "agent_error",
    AGENT_METRICS: "agent_metrics",
    TURNS_FINISHED: "turns_finished",
    INBOUND_CALL_STATE: "inbound_call_state",
    OUTBOUND_CALL_STATE: "outbound_call_state",
}

# Console "Check" sends test callbacks with channelName `test_webhook` and uid `12121212`.
TEST_CHANNEL: Final = "test_webhook"
TEST_UID: Final = 12121212

# Unix seconds below this (2000-01-01) are placeholders such as 111's `start_ts: 1000`.
_EARLIEST_S: Final = 946_684_800
_LATEST_S: Final = 7_258_118_400  # 2200-01-01
_MS_THRESHOLD: Final = 1_000_000_000_000  # larger values are milliseconds

# What the tables can hold. Integers go into PostgreSQL `integer` columns (32-bit) unless noted,
# `bigint` for notifyMs and vendor error codes; a value out of range is malformed, not a failed
# insert. `channel` is indexed, and a btree entry holds at most 2,704 bytes: Agora's channel names
# are far shorter, and 256 characters (as agent_id) stay under that in any encoding.
_INT32: Final = 2**31
_INT64: Final = 2**63
_MAX_ID_CHARS: Final = 256

IgnoreReason = Literal["not_convoai", "unknown_event_type", "test_callback"]


@dataclass(frozen=True, slots=True, kw_only=True)
class AgentEvent:
    """Fields every ConvoAI agent event carries (`name` since v2.6, `labels` since Dec 2025)."""

    agent_id: str
    name: str | None
    channel: str | None
    labels: Mapping[str, Any] | None
    started_at: datetime | None  # `start_ts`: when the agent was created


@dataclass(frozen=True, slots=True, kw_only=True)
class AgentJoined(AgentEvent):
    """101: "the agent joined the RTC channel"."""


@dataclass(frozen=True, slots=True, kw_only=True)
class AgentLeft(AgentEvent):
    """102: "the agent left the channel"; `status` STOPPED or FAILED, `message` says why."""

    stopped_at: datetime | None
    status: str
    message: str | None


@dataclass(frozen=True, slots=True, kw_only=True)
class Message:
    role: str
    content: str
    extra: Mapping[str, Any]  # speech_start_ms etc., only with a custom LLM


@dataclass(frozen=True, slots=True, kw_only=True)
class AgentHistory(AgentEvent):
    """103: short-term memory sent once after the agent stops (up to `llm.max_history`)."""

    stopped_at: datetime | None
    contents: tuple[Message, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class AgentExpire(AgentEvent):
    """104: the agent's RTC token is about to expire; a warning, the agent keeps running."""

    message: str | None


@dataclass(frozen=True, slots=True, kw_only=True)
class ErrorItem:
    module: str | None
    code: int | None
    message: str | None
    turn_id: str | None


@dataclass(frozen=True, slots=True, kw_only=True)
class AgentError(AgentEvent):
    """110: module errors; "not necessarily terminal" (a following 102 says whether it ended)."""

    errors: tuple[ErrorItem, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class MetricItem:
    turn_id: str | None
    figures: Mapping[str, Any]  # asr_ttlw, llm_ttfb, llm_ttfs, tts_ttfb (ms) and any others


@dataclass(frozen=True, slots=True, kw_only=True)
class AgentMetrics(AgentEvent):
    """111: per-turn latency metrics."""

    metrics: tuple[MetricItem, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class Turn:
    turn_id: int
    start_at: datetime | None
    end_at: datetime | None
    start_type: str | None
    end_type: str | None
    e2e_latency_ms: int | None
    data: Mapping[str, Any]  # the whole turn object as Agora sent it


@dataclass(frozen=True, slots=True, kw_only=True)
class TurnsFinished(AgentEvent):
    """112: turn data after the session ends; `is_truncated` past 200 turns."""

    stopped_at: datetime | None
    total_turn_count: int | None
    is_truncated: bool
    turns: tuple[Turn, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class CallState(AgentEvent):
    """201 inbound / 202 outbound SIP call state (`START`, `ANSWERED`, `HANGUP`, ...)."""

    direction: Literal["inbound", "outbound"]
    state: str
    reported_at: datetime | None  # `report_ms`


Event = (
    AgentJoined
    | AgentLeft
    | AgentHistory
    | AgentExpire
    | AgentError
    | AgentMetrics
    | TurnsFinished
    | CallState
)


@dataclass(frozen=True, slots=True, kw_only=True)
class Notification:
    """One verified NCS delivery."""

    notice_id: str
    product_id: int
    event_type: int
    notify_ms: int | None  # NCS send time; changes on every retry
    sid: str | None
    body: Mapping[str, Any]  # the decoded body, stored as received
    event: Event | None  # None when ignored
    ignored: IgnoreReason | None
    occurred_at: datetime | None  # best event time: payload times first, then notifyMs

    @property
    def agent_id(self) -> str | None:
        return self.event.agent_id if self.event is not None else None

    @property
    def event_name(self) -> str:
        return EVENT_NAMES.get(self.event_type, f"event_{self.event_type}")


def build(
    event_type: int,
    payload: Mapping[str, Any],
    *,
    notice_id: str,
    notify_ms: int,
    product_id: int = CONVOAI_PRODUCT_ID,
    sid: str | None = None,
) -> bytes:
    """A notification body as NCS sends it (compact JSON); the inverse of `parse`."""
    document: dict[str, Any] = {
        "noticeId": notice_id,
        "productId": product_id,
        "eventType": event_type,
        "notifyMs": notify_ms,
    }
    if sid is not None:
        document["sid"] = sid
    document["payload"] = payload
    return json.dumps(document, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def parse(body: bytes) -> Notification:
    """Decode and validate a verified body; raise `MalformedEvent` naming what is wrong."""
    document = _decode(body)
    notice_id = _field(document, "noticeId", str, required=True)
    if not notice_id.strip():
        raise MalformedEvent("noticeId must not be empty")
    if len(notice_id) > _MAX_ID_CHARS:
        raise MalformedEvent("noticeId is longer than 256 characters")
    product_id = _int_field(document, "productId", required=True)
    event_type = _int_field(document, "eventType", required=True)
    notify_ms = _int_field(document, "notifyMs", limit=_INT64)
    sid = _field(document, "sid", str)
    payload = _field(document, "payload", dict, required=True)
    ignored = _ignore_reason(product_id, event_type, payload)
    event = None if ignored else _parse_event(event_type, payload)
    return Notification(
        notice_id=notice_id,
        product_id=product_id,
        event_type=event_type,
        notify_ms=notify_ms,
        sid=sid,
        body=document,
        event=event,
        ignored=ignored,
        occurred_at=_occurred_at(event, notify_ms),
    )


def timestamp(value: object) -> datetime | None:
    """A Unix time in seconds or milliseconds (> 1e12) as aware UTC; None when implausible."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    seconds = value / 1000 if value >= _MS_THRESHOLD else float(value)
    if not _EARLIEST_S <= seconds <= _LATEST_S:
        return None
    return datetime.fromtimestamp(seconds, tz=UTC)


def _decode(body: bytes) -> dict[str, Any]:
    try:
        document = json.loads(body, parse_constant=_reject_constant)
    except (ValueError, RecursionError) as exc:
        raise MalformedEvent(f"body is not valid JSON: {_reason(exc)}") from None
    if not isinstance(document, dict):
        raise MalformedEvent("body must be a JSON object")
    _check_storable(document, "body")
    return document


def _reason(exc: Exception) -> str:
    if isinstance(exc, json.JSONDecodeError):
        return f"{exc.msg} at position {exc.pos}"
    if isinstance(exc, RecursionError):
        return "nested too deeply"
    return str(exc)


def _reject_constant(name: str) -> None:
    raise ValueError(f"{name} is not a JSON number")


def _check_storable(value: object, where: str, depth: int = 0) -> None:
    """PostgreSQL jsonb cannot hold NUL characters, lone surrogates or infinite numbers (JSON
    such as 1e400 decodes to one); reject them up front."""
    if depth > 64:
        raise MalformedEvent(f"{where} is nested too deeply")
    if isinstance(value, float) and not math.isfinite(value):
        raise MalformedEvent(f"{where} is a number out of range")
    if isinstance(value, str):
        if "\x00" in value:
            raise MalformedEvent(f"{where} contains a NUL character")
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise MalformedEvent(f"{where} contains an unpaired surrogate") from None
    elif isinstance(value, dict):
        for key, item in value.items():
            _check_storable(key, where, depth + 1)
            _check_storable(item, f"{where}.{key}", depth + 1)
    elif isinstance(value, list):
        for index, item in enumerate(value):
            _check_storable(item, f"{where}[{index}]", depth + 1)


def _ignore_reason(
    product_id: int, event_type: int, payload: Mapping[str, Any]
) -> IgnoreReason | None:
    if product_id != CONVOAI_PRODUCT_ID:
        return "not_convoai"
    if event_type not in EVENT_NAMES:
        return "unknown_event_type"
    channel = payload.get("channel", payload.get("channelName"))
    if channel == TEST_CHANNEL or payload.get("uid") in (TEST_UID, str(TEST_UID)):
        return "test_callback"
    return None


def _parse_event(event_type: int, payload: Mapping[str, Any]) -> Event:
    base = _agent_fields(payload)
    if event_type == AGENT_JOINED:
        return AgentJoined(**base)
    if event_type == AGENT_LEFT:
        status = (_field(payload, "status", str, where="payload") or "STOPPED").strip().upper()
        return AgentLeft(
            **base,
            stopped_at=_time_field(payload, "stop_ts"),
            status=status,
            message=_field(payload, "message", str, where="payload"),
        )
    if event_type == AGENT_HISTORY:
        return AgentHistory(
            **base,
            stopped_at=_time_field(payload, "stop_ts"),
            contents=tuple(_message(m, i) for i, m in enumerate(_list(payload, "contents"))),
        )
    if event_type == AGENT_EXPIRE:
        return AgentExpire(**base, message=_field(payload, "message", str, where="payload"))
    if event_type == AGENT_ERROR:
        return AgentError(
            **base, errors=tuple(_error(e, i) for i, e in enumerate(_list(payload, "errors")))
        )
    if event_type == AGENT_METRICS:
        return AgentMetrics(
            **base, metrics=tuple(_metric(m, i) for i, m in enumerate(_list(payload, "metrics")))
        )
    if event_type == TURNS_FINISHED:
        truncated = _field(payload, "is_truncated", bool, where="payload")
        return TurnsFinished(
            **base,
            stopped_at=_time_field(payload, "stop_ts"),
            total_turn_count=_int_field(payload, "total_turn_count", where="payload"),
            is_truncated=bool(truncated),
            turns=tuple(
                parse_turn(t, f"payload.turns[{i}]") for i, t in enumerate(_list(payload, "turns"))
            ),
        )
    return CallState(
        **base,
        direction="inbound" if event_type == INBOUND_CALL_STATE else "outbound",
        state=_field(payload, "state", str, where="payload", required=True),
        reported_at=timestamp(_int_field(payload, "report_ms", where="payload", limit=None)),
    )


def _agent_fields(payload: Mapping[str, Any]) -> dict[str, Any]:
    agent_id = _field(payload, "agent_id", str, where="payload", required=True)
    if not agent_id.strip() or len(agent_id) > _MAX_ID_CHARS:
        raise MalformedEvent(
            f"payload.agent_id must be a non-empty string of at most {_MAX_ID_CHARS} characters"
        )
    channel = _field(payload, "channel", str, where="payload")
    if channel is not None and len(channel) > _MAX_ID_CHARS:
        raise MalformedEvent(f"payload.channel must be at most {_MAX_ID_CHARS} characters")
    return {
        "agent_id": agent_id,
        "name": _field(payload, "name", str, where="payload"),
        "channel": channel,
        "labels": _field(payload, "labels", dict, where="payload"),
        "started_at": _time_field(payload, "start_ts"),
    }


def _message(item: object, index: int) -> Message:
    where = f"payload.contents[{index}]"
    if not isinstance(item, dict):
        raise MalformedEvent(f"{where} must be an object")
    role = _field(item, "role", str, where=where) or "unknown"
    content = _field(item, "content", str, where=where) or ""
    extra = {k: v for k, v in item.items() if k not in ("role", "content")}
    return Message(role=role, content=content, extra=extra)


def _error(item: object, index: int) -> ErrorItem:
    where = f"payload.errors[{index}]"
    if not isinstance(item, dict):
        raise MalformedEvent(f"{where} must be an object")
    return ErrorItem(
        module=_field(item, "module", str, where=where),
        code=_int_field(item, "code", where=where, limit=_INT64),
        message=_field(item, "message", str, where=where),
        turn_id=_turn_id(item, where),
    )


def _metric(item: object, index: int) -> MetricItem:
    where = f"payload.metrics[{index}]"
    if not isinstance(item, dict):
        raise MalformedEvent(f"{where} must be an object")
    figures = {k: v for k, v in item.items() if k != "turn_id"}
    for key in ("asr_ttlw", "llm_ttfb", "llm_ttfs", "tts_ttfb"):
        _number_field(item, key, where)
    return MetricItem(turn_id=_turn_id(item, where), figures=figures)


def parse_turn(item: object, where: str) -> Turn:
    """One turn object, as 112 sends it and `GET …/turns` answers it."""
    if not isinstance(item, dict):
        raise MalformedEvent(f"{where} must be an object")
    turn_id = _int_field(item, "turn_id", where=where, required=True)
    start = _field(item, "start", dict, where=where) or {}
    end = _field(item, "end", dict, where=where) or {}
    metrics = _field(item, "metrics", dict, where=where) or {}
    return Turn(
        turn_id=turn_id,
        start_at=timestamp(_int_field(start, "start_at", where=f"{where}.start", limit=None)),
        end_at=timestamp(_int_field(end, "end_at", where=f"{where}.end", limit=None)),
        start_type=_field(start, "type", str, where=f"{where}.start"),
        end_type=_field(end, "type", str, where=f"{where}.end"),
        e2e_latency_ms=_int_field(metrics, "e2e_latency_ms", where=f"{where}.metrics"),
        data=item,
    )


def _turn_id(item: Mapping[str, Any], where: str) -> str | None:
    value = item.get("turn_id")
    if value is None or value == "":
        return None
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise MalformedEvent(f"{where}.turn_id must be an integer or a string")
    return str(value)


def _occurred_at(event: Event | None, notify_ms: int | None) -> datetime | None:
    """Event time, never arrival: the payload's own time where the event has one."""
    own: datetime | None = None
    if isinstance(event, AgentJoined):
        own = event.started_at
    elif isinstance(event, AgentLeft | AgentHistory | TurnsFinished):
        own = event.stopped_at
    elif isinstance(event, CallState):
        own = event.reported_at
    return own or timestamp(notify_ms)


def _field(
    document: Mapping[str, Any],
    key: str,
    kind: type[Any] | tuple[type[Any], ...],
    *,
    where: str = "",
    required: bool = False,
) -> Any:
    name = f"{where}.{key}" if where else key
    value = document.get(key)
    if value is None:
        if required:
            raise MalformedEvent(f"{name} is required")
        return None
    if not isinstance(value, kind) or (kind is not bool and isinstance(value, bool)):
        described = (
            "an integer" if isinstance(kind, tuple) else _KIND_NAMES.get(kind, kind.__name__)
        )
        raise MalformedEvent(f"{name} must be {described}")
    return value


_KIND_NAMES: Final[Mapping[type[Any], str]] = {
    str: "a string",
    dict: "an object",
    list: "an array",
    bool: "a boolean",
    int: "an integer",
}


def _int_field(
    document: Mapping[str, Any],
    key: str,
    *,
    where: str = "",
    required: bool = False,
    limit: int | None = _INT32,
) -> Any:
    """An integer (or integral float) in [-limit, limit); `limit=None` for times, which
    `timestamp()` bounds."""
    name = f"{where}.{key}" if where else key
    value = _field(document, key, (int, float), where=where, required=required)
    if isinstance(value, float):
        if not value.is_integer():
            raise MalformedEvent(f"{name} must be an integer")
        value = int(value)
    if value is not None and limit is not None and not -limit <= value < limit:
        raise MalformedEvent(f"{name} is out of range")
    return value


def _number_field(document: Mapping[str, Any], key: str, where: str) -> None:
    """A figure kept in an integer column: any number within its range."""
    value = document.get(key)
    if value is not None and (isinstance(value, bool) or not isinstance(value, int | float)):
        raise MalformedEvent(f"{where}.{key} must be a number")
    if value is not None and not -_INT32 <= value < _INT32:
        raise MalformedEvent(f"{where}.{key} is out of range")


def _time_field(payload: Mapping[str, Any], key: str) -> datetime | None:
    return timestamp(_int_field(payload, key, where="payload", limit=None))


def _list(payload: Mapping[str, Any], key: str) -> list[Any]:
    return _field(payload, key, list, where="payload") or []
