"""Agora NCS notifications as values (pure: no I/O).

`parse(body)` reads a verified raw body once, at the edge, and returns a `Notification`: the
envelope, the body as it will be stored and, for the ConvoAI events we act on, a typed `Event`.
Only the envelope can make a body invalid (`MalformedEvent`, 400): a JSON object with `noticeId`
(string or integer), `productId` and `eventType` (integers) and `payload` (object). The payload is
read leniently (`service.fields`): what has no plain meaning is left out and noted in `problems`;
a notification whose agent cannot be identified (no usable `payload.agent_id`) is `unusable`,
stored and answered `unapplied` (CONTRACT §3, Hardening).

Field names and meanings quote Agora's "Notification event types" page (docs.agora.io,
conversational-ai/develop/event-types). Where the docs are loose we accept every documented
variant: `turn_id` as integer or string, timestamps in seconds or milliseconds, `name` and
`labels` absent on older payloads, `status` as a name or Agora's integer enum.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final, Literal

import orjson

from service import fields
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

# Agora's agent status enum (query/list API); 102's `status` may carry the integer.
STATUS_CODES: Final[Mapping[int, str]] = {
    0: "IDLE",
    1: "STARTING",
    2: "RUNNING",
    3: "STOPPING",
    4: "STOPPED",
    5: "RECOVERING",
    6: "FAILED",
}

# Console "Check" sends test callbacks with channelName `test_webhook` and uid `12121212`.
TEST_CHANNEL: Final = "test_webhook"
TEST_UID: Final = 12121212

# Ids are keys and index entries: a btree entry holds at most 2,704 bytes, and Agora's ids and
# channel names are far shorter than 256 characters in any encoding.
MAX_ID_CHARS: Final = 256
# The stages of a turn's `segmented_latency_ms` we keep (ms): ASR time to last word, LLM time to
# first token, TTS time to first byte.
STAGES: Final = ("asr_ttlw", "llm_ttft", "tts_ttfb")
# A number that may be too large for a float: a three-digit exponent or 309 digits in a row.
_MAYBE_INFINITE: Final = re.compile(rb"[eE][+]?0*[1-9][0-9]{2}|[0-9]{309}")
# Labels are a few of the caller's own ids (tenant, session): bounded so one body cannot grow every
# later write of its agent.
MAX_LABELS: Final = 64
MAX_LABEL_CHARS: Final = 1024
# Free-form values (a turn as sent, a message's other fields, labels) are kept in their rows up to
# this many levels of arrays and objects; what nests deeper is left out there (and noted), kept
# in the raw notification. A body may nest about a thousand levels; a row's JSON stays within
# what every encoder on the way takes.
MAX_FREE_DEPTH: Final = 100
# Python refuses to turn longer digit strings into ints; such a number is absurd for any field.
_MAX_INT_DIGITS: Final = 4000
# What a body's numbers may need beyond a plain reading (`_plain_numbers`): a run of 19 digits
# or more where a number's digits start (after `:`, `,`, `[`, `.`, white space, or a minus sign
# after one of them), or an exponent of three digits or more. Without either no number is too
# long for an integer of 64 bits (orjson reads longer ones as floats), too large for a double
# (`_MAYBE_INFINITE`) or for `numeric` (`_LONG_NUMBER`): the regular expressions, which cost
# tens of microseconds a body, then need not run. The body is mapped to the shapes of its
# characters (C speed) and the shapes searched for; a false alarm (digits in a string) only
# costs the slow way.
_SHAPES: Final = bytes(
    ord("0") if chr(c).isdigit() and c < 128
    else ord(" ") if c in b":,[. \t\r\n"
    else c if c in b"+-"
    else ord("e") if c in b"eE"
    else ord("x")
    for c in range(256)
)  # fmt: skip
# At most this many arrays and objects in a body read by orjson (see `_loads`).
_FAST_NESTING: Final = 256
_NOT_PLAIN: Final = (b" " + b"0" * 19, b" -" + b"0" * 19, b"e000", b"e+000", b"e-000")
# jsonb holds no NUL character and no unpaired surrogate: a body whose JSON escapes one is stored
# with them replaced (and its exact bytes beside it).
_UNSTORABLE: Final = re.compile(rb"\\u(?:0000|[dD][89a-fA-F][0-9a-fA-F]{2})")
_REPLACEMENT: Final = "\ufffd"
# Every escape in a JSON text, surrogate pairs first and whole, so that an escaped backslash is
# never read as the start of another escape.
_ESCAPE: Final = re.compile(
    r"\\u[dD][89abAB][0-9a-fA-F]{2}\\u[dD][c-fC-F][0-9a-fA-F]{2}|\\u([0-9a-fA-F]{4})|\\.", re.S
)
# jsonb keeps numbers as `numeric`: at most 131,072 digits before the point and 16,383 after it
# (and before PostgreSQL 15 no exponent beyond ±1000). A body with a number past that is stored
# with the number as a string of its digits (and its exact bytes beside it). Only a long run of
# digits or a four-digit exponent can make one.
_LONG_NUMBER: Final = re.compile(rb"[0-9]{15000}|[eE][+-]?[0-9]{4}")
_STRING_OR_NUMBER: Final = re.compile(
    r'"[^"\\]*(?:\\.[^"\\]*)*"|-?(0|[1-9][0-9]*)(?:\.([0-9]+))?(?:[eE]([+-]?[0-9]+))?', re.S
)

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
    # `metrics.segmented_latency_ms` by stage (ms): an object in 112, [{name, latency}] in `/turns`.
    stages: Mapping[str, int] = field(default_factory=dict)


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
    state: str | None
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
    json: str  # the body as stored (jsonb): as received, unless jsonb cannot hold it
    raw: bytes | None  # the exact bytes, when `json` had to differ from them
    event: Event | None  # None when ignored or unusable
    ignored: IgnoreReason | None
    unusable: str | None = None  # why the event cannot be applied (no usable agent)
    problems: str | None = None  # what was left out while reading the payload
    occurred_at: datetime | None  # best event time: payload times first, then notifyMs

    @property
    def agent_id(self) -> str | None:
        return self.event.agent_id if self.event is not None else None

    @property
    def event_name(self) -> str:
        return EVENT_NAMES.get(self.event_type, f"event_{self.event_type}")

    @property
    def problem(self) -> str | None:
        """What the stored notification's `problem` says: why it is unapplied, else what was
        left out."""
        return self.unusable or self.problems


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


def parse(body: bytes, *, received_at: datetime | None = None) -> Notification:
    """Read a verified body; raise `MalformedEvent` only for a bad envelope.

    `received_at` bounds plausible times (a day after it at most); it defaults to now.
    """
    received_at = received_at or datetime.now(UTC)
    plain = _plain_numbers(body)
    document, stored, raw = _decode(body, plain=plain)
    notice_id = _notice_id(document.get("noticeId"))
    product_id = _envelope_int(document, "productId")
    event_type = _envelope_int(document, "eventType")
    payload = document.get("payload")
    if not isinstance(payload, dict):
        raise MalformedEvent(
            "payload is required" if payload is None else "payload must be an object"
        )
    problems = fields.Problems()
    notify_ms = fields.integer(document.get("notifyMs"), "notifyMs", problems, limit=fields.INT64)
    sid = fields.text(document.get("sid"), "sid", problems)
    ignored = _ignore_reason(product_id, event_type, payload)
    event, unusable = None, None
    if ignored is None:
        try:
            walk = body.count(b"[") + body.count(b"{") > MAX_FREE_DEPTH or (
                not plain and _MAYBE_INFINITE.search(body) is not None
            )
            reader = _Reader(payload, problems, received_at, walk=walk)
            event = reader.event(event_type)
        except _Unusable as exc:
            unusable = str(exc)
    return Notification(
        notice_id=notice_id,
        product_id=product_id,
        event_type=event_type,
        notify_ms=notify_ms,
        sid=sid,
        json=stored,
        raw=raw,
        event=event,
        ignored=ignored,
        unusable=unusable,
        problems=problems.summary(),
        occurred_at=_occurred_at(event, notify_ms, received_at),
    )


def timestamp(value: object) -> datetime | None:
    """A Unix time in seconds or milliseconds (> 1e12) as aware UTC, truncated to the unit;
    None when implausible (before 2000, or more than a day ahead)."""
    return fields.timestamp(
        value if isinstance(value, int | float) else None,
        "time",
        fields.Problems(),
        received_at=datetime.now(UTC),
    )


def parse_turn(item: object, where: str, *, received_at: datetime | None = None) -> Turn:
    """One turn object, as 112 sends it and `GET …/turns` answers it; `MalformedEvent` when it
    has no usable `turn_id`. Its other fields are read leniently."""
    problems = fields.Problems()
    turn = _Reader({}, problems, received_at or datetime.now(UTC)).turn(item, where)
    if turn is None:
        raise MalformedEvent(problems.summary() or f"{where} is not a turn")
    return turn


class _Unusable(Exception):
    """The event's agent cannot be identified."""


def _plain_numbers(body: bytes) -> bool:
    """Whether every number of `body` reads as it is (see `_SHAPES`)."""
    shapes = body.translate(_SHAPES)
    return not any(shape in shapes for shape in _NOT_PLAIN)


def _decode(body: bytes, *, plain: bool) -> tuple[dict[str, Any], str, bytes | None]:
    """The decoded object, the JSON text to store and, when that text is not the body itself,
    the body's exact bytes."""
    try:
        text = body.decode("utf-8")
        document = _loads(body, text, plain=plain)
    except (ValueError, RecursionError) as exc:
        raise MalformedEvent(f"body is not valid JSON: {_reason(exc)}") from None
    if not isinstance(document, dict):
        raise MalformedEvent("body must be a JSON object")
    stored, raw = text, None
    if _UNSTORABLE.search(body) is not None:
        document, stored, raw = _storable(document), _ESCAPE.sub(_storable_escape, text), body
    if not plain and _LONG_NUMBER.search(body) is not None:
        held = _STRING_OR_NUMBER.sub(_number_as_held, stored)
        if held != stored:
            stored, raw = held, body
    return document, stored, raw


def _loads(body: bytes, text: str, *, plain: bool) -> Any:
    """The JSON document: orjson's reading (several times faster), the same as the stdlib's for
    every body it accepts whose numbers are `plain`; the stdlib's for the rest, which says what
    is wrong (or reads what orjson refuses: an unpaired surrogate escape, a number past a
    double). A body of many arrays and objects is left to the stdlib too: it refuses nesting
    deeper than Python's recursion allows, where orjson's own limit is a little deeper."""
    if plain and body.count(b"[") + body.count(b"{") <= _FAST_NESTING:
        try:
            return orjson.loads(body)
        except orjson.JSONDecodeError:
            pass
    return json.loads(text, parse_constant=_reject_constant, parse_int=_parse_int)


def _label_fits(value: Any) -> bool:
    """Whether `value` as JSON (`json.dumps`) takes at most `MAX_LABEL_CHARS`; a short string is
    known to without encoding it (a character takes at most 12 as JSON, the quotes 2)."""
    if isinstance(value, str) and 12 * len(value) + 2 <= MAX_LABEL_CHARS:
        return True
    return len(json.dumps(value)) <= MAX_LABEL_CHARS


def _number_as_held(match: re.Match[str]) -> str:
    """A JSON string as it is; a number as it is if `numeric` holds it, else as a string."""
    whole, fraction, exponent = match.group(1), match.group(2) or "", match.group(3) or "0"
    if whole is None:
        return match.group(0)
    if len(exponent) <= 6 and abs(int(exponent)) <= 1000:
        scale = len(fraction) - int(exponent)
        if scale <= 16_383 and (whole == "0" or len(whole) + int(exponent) <= 131_072):
            return match.group(0)
    return f'"{match.group(0)}"'


def _reason(exc: Exception) -> str:
    if isinstance(exc, json.JSONDecodeError):
        return f"{exc.msg} at position {exc.pos}"
    if isinstance(exc, RecursionError):
        return "nested too deeply"
    if isinstance(exc, UnicodeDecodeError):
        return "not UTF-8"
    return str(exc)


def _reject_constant(name: str) -> None:
    raise ValueError(f"{name} is not a JSON number")


def _parse_int(digits: str) -> int | float:
    # Longer digit strings cannot become ints; as infinity they read as absurd, not invalid.
    if len(digits) > _MAX_INT_DIGITS:
        return float("-inf") if digits.startswith("-") else float("inf")
    return int(digits)


def _storable_escape(match: re.Match[str]) -> str:
    """A JSON escape as jsonb can hold it: NUL and unpaired surrogates become U+FFFD."""
    single = match.group(1)
    if single is not None and (
        single == "0000" or (single[0] in "dD" and single[1] in "89abcdefABCDEF")
    ):
        return "\\ufffd"
    return match.group(0)


def _storable(value: Any) -> Any:
    """`value` with NUL characters and unpaired surrogates replaced, as jsonb can hold it."""
    return fields.rebuild(value, _storable_scalar, key=_storable_text)[0]


def _storable_scalar(value: Any) -> Any:
    return _storable_text(value) if isinstance(value, str) else value


def _storable_text(value: str) -> str:
    if "\x00" in value:
        value = value.replace("\x00", _REPLACEMENT)
    return value.encode("utf-8", "surrogatepass").decode("utf-8", "replace")


def _notice_id(value: object) -> str:
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    if value is None:
        raise MalformedEvent("noticeId is required")
    if not isinstance(value, str):
        raise MalformedEvent("noticeId must be a string or an integer")
    if not value.strip():
        raise MalformedEvent("noticeId must not be empty")
    if len(value) > MAX_ID_CHARS or "\x00" in value or _REPLACEMENT in value:
        raise MalformedEvent(f"noticeId must be at most {MAX_ID_CHARS} plain characters")
    return value


def _envelope_int(document: Mapping[str, Any], key: str) -> int:
    value = document.get(key)
    if value is None:
        raise MalformedEvent(f"{key} is required")
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise MalformedEvent(f"{key} must be an integer")
    if not -fields.INT32 <= value < fields.INT32:
        raise MalformedEvent(f"{key} is out of range")
    return value


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


class _Reader:
    """Reads one payload leniently, noting what it leaves out in `problems`."""

    def __init__(
        self,
        payload: Mapping[str, Any],
        problems: fields.Problems,
        received_at: datetime,
        *,
        walk: bool = True,
    ) -> None:
        self.payload, self.problems, self.received_at = payload, problems, received_at
        # Free-form values are kept as sent; only a body that may hold a number too large for a
        # float, or nests more than `MAX_FREE_DEPTH` levels, needs them walked (`free`).
        self.walk = walk

    def free(self, value: Any, where: str) -> tuple[Any, bool]:
        """A free-form value as kept (see `MAX_FREE_DEPTH`), and whether a part nested too
        deeply was left out of it (noted)."""
        if not self.walk:
            return value, False
        kept, cut = fields.rebuild(value, fields.finite_number, depth=MAX_FREE_DEPTH)
        if cut:
            self.problems.add(
                where,
                f"nests deeper than {MAX_FREE_DEPTH} levels (left out; the raw body keeps it)",
            )
        return kept, cut

    def event(self, event_type: int) -> Event:
        base = self.agent_fields()
        if event_type == AGENT_JOINED:
            return AgentJoined(**base)
        if event_type == AGENT_LEFT:
            return AgentLeft(
                **base,
                stopped_at=self.time("stop_ts"),
                status=self.status(),
                message=self.text("message"),
            )
        if event_type == AGENT_HISTORY:
            items = self.items("contents")
            contents = (self.message(m, f"payload.contents[{i}]") for i, m in enumerate(items))
            return AgentHistory(
                **base,
                stopped_at=self.time("stop_ts"),
                contents=tuple(m for m in contents if m is not None),
            )
        if event_type == AGENT_EXPIRE:
            return AgentExpire(**base, message=self.text("message"))
        if event_type == AGENT_ERROR:
            errors = (
                self.error(e, f"payload.errors[{i}]") for i, e in enumerate(self.items("errors"))
            )
            return AgentError(**base, errors=tuple(e for e in errors if e is not None))
        if event_type == AGENT_METRICS:
            items = self.items("metrics")
            metrics = (self.metric(m, f"payload.metrics[{i}]") for i, m in enumerate(items))
            return AgentMetrics(**base, metrics=tuple(m for m in metrics if m is not None))
        if event_type == TURNS_FINISHED:
            turns = (self.turn(t, f"payload.turns[{i}]") for i, t in enumerate(self.items("turns")))
            truncated = self.payload.get("is_truncated")
            return TurnsFinished(
                **base,
                stopped_at=self.time("stop_ts"),
                total_turn_count=fields.integer(
                    self.payload.get("total_turn_count"), "payload.total_turn_count", self.problems
                ),
                is_truncated=truncated is True or truncated in (1, "true", "True"),
                turns=tuple(t for t in turns if t is not None),
            )
        return CallState(
            **base,
            direction="inbound" if event_type == INBOUND_CALL_STATE else "outbound",
            state=self.text("state", max_chars=MAX_ID_CHARS),
            reported_at=self.time("report_ms"),
        )

    def agent_fields(self) -> dict[str, Any]:
        agent_id = fields.text(
            self.payload.get("agent_id"),
            "payload.agent_id",
            fields.Problems(),
            max_chars=MAX_ID_CHARS,
        )
        if agent_id is None or not agent_id.strip() or _REPLACEMENT in agent_id:
            raise _Unusable(
                "payload.agent_id: no usable agent id (a non-empty string of at most"
                f" {MAX_ID_CHARS} characters is needed)"
            )
        return {
            "agent_id": agent_id,
            "name": self.text("name", max_chars=MAX_ID_CHARS),
            "channel": self.text("channel", max_chars=MAX_ID_CHARS),
            "labels": self.labels(),
            "started_at": self.time("start_ts"),
        }

    def labels(self) -> Mapping[str, Any] | None:
        """`labels` as an object of at most `MAX_LABELS` keys of plain size; else ignored."""
        found = fields.mapping(self.payload.get("labels"), "payload.labels", self.problems)
        if not found:
            return found
        kept: dict[str, Any] = {}
        for key, value in found.items():
            if len(kept) == MAX_LABELS:
                self.problems.add("payload.labels", f"has more than {MAX_LABELS} keys")
                break
            where = f"payload.labels.{key[:32]}"
            value, cut = self.free(value, where)
            if cut:
                continue
            if len(key) > MAX_ID_CHARS or not _label_fits(value):
                self.problems.add(where, "is too long")
                continue
            kept[key] = value
        return kept

    def text(self, key: str, *, max_chars: int | None = None) -> str | None:
        found: str | None = fields.text(
            self.payload.get(key), f"payload.{key}", self.problems, max_chars=max_chars
        )
        return found

    def time(
        self, key: str, source: Mapping[str, Any] | None = None, where: str = "payload"
    ) -> datetime | None:
        value = (self.payload if source is None else source).get(key)
        return fields.timestamp(
            value, f"{where}.{key}", self.problems, received_at=self.received_at
        )

    def items(self, key: str) -> list[Any]:
        return fields.sequence(self.payload.get(key), f"payload.{key}", self.problems)

    def status(self) -> str:
        """102's `status`: a name, or Agora's integer enum; anything but FAILED is a stop."""
        value = self.payload.get("status")
        if isinstance(value, str) and not value.strip().lstrip("-").isdigit():
            return value.strip().upper()[:MAX_ID_CHARS] or "STOPPED"
        code = fields.integer(value, "payload.status", self.problems)
        return STATUS_CODES.get(code, "STOPPED") if code is not None else "STOPPED"

    def item(self, item: object, where: str) -> Mapping[str, Any] | None:
        if isinstance(item, dict):
            return item
        self.problems.add(where, "is not an object")
        return None

    def message(self, item: object, where: str) -> Message | None:
        found = self.item(item, where)
        if found is None:
            return None
        role = fields.text(found.get("role"), f"{where}.role", self.problems) or "unknown"
        content = fields.text(found.get("content"), f"{where}.content", self.problems) or ""
        extra = {
            k: self.free(v, f"{where}.{k[:32]}")[0]
            for k, v in found.items()
            if k not in ("role", "content")
        }
        return Message(role=role, content=content, extra=extra)

    def error(self, item: object, where: str) -> ErrorItem | None:
        found = self.item(item, where)
        if found is None:
            return None
        error = ErrorItem(
            module=fields.text(
                found.get("module"), f"{where}.module", self.problems, max_chars=MAX_ID_CHARS
            ),
            code=fields.integer(
                found.get("code"), f"{where}.code", self.problems, limit=fields.INT64
            ),
            message=fields.text(found.get("message"), f"{where}.message", self.problems),
            turn_id=fields.turn_id(found.get("turn_id"), f"{where}.turn_id", self.problems),
        )
        if error.module is None and error.code is None and error.message is None:
            self.problems.add(where, "says nothing (no module, code or message)")
            return None
        return error

    def metric(self, item: object, where: str) -> MetricItem | None:
        found = self.item(item, where)
        if found is None:
            return None
        figures = {
            key: fields.integer(value, f"{where}.{key}", self.problems)
            for key, value in found.items()
            if key != "turn_id"
        }
        figures = {key: value for key, value in figures.items() if value is not None}
        turn = fields.turn_id(found.get("turn_id"), f"{where}.turn_id", self.problems)
        if not figures:
            self.problems.add(where, "has no figures")
            return None
        return MetricItem(turn_id=turn, figures=figures)

    def turn(self, item: object, where: str) -> Turn | None:
        found = self.item(item, where)
        if found is None:
            return None
        number = fields.integer(found.get("turn_id"), f"{where}.turn_id", self.problems)
        if number is None:
            self.problems.add(where, "has no usable turn_id")
            return None
        start = fields.mapping(found.get("start"), f"{where}.start", self.problems) or {}
        end = fields.mapping(found.get("end"), f"{where}.end", self.problems) or {}
        metrics = fields.mapping(found.get("metrics"), f"{where}.metrics", self.problems) or {}
        return Turn(
            turn_id=number,
            start_at=self.time("start_at", start, f"{where}.start"),
            end_at=self.time("end_at", end, f"{where}.end"),
            start_type=fields.text(
                start.get("type"), f"{where}.start.type", self.problems, max_chars=MAX_ID_CHARS
            ),
            end_type=fields.text(
                end.get("type"), f"{where}.end.type", self.problems, max_chars=MAX_ID_CHARS
            ),
            e2e_latency_ms=fields.integer(
                metrics.get("e2e_latency_ms"), f"{where}.metrics.e2e_latency_ms", self.problems
            ),
            data=self.free(found, where)[0],
            stages=self.stages(metrics.get("segmented_latency_ms"), f"{where}.metrics"),
        )

    def stages(self, value: object, where: str) -> dict[str, int]:
        """The figures of `STAGES` in a `segmented_latency_ms`: an object of stage → ms (112) or
        a list of {name, latency} (`/turns`); a figure that is not a whole number of ms from 0
        is left out, other stage names are ignored."""
        where = f"{where}.segmented_latency_ms"
        if isinstance(value, list):
            pairs = [
                (item.get("name"), item.get("latency"), f"{where}[{index}].latency")
                for index, item in enumerate(value)
                if isinstance(item, dict)
            ]
        else:
            found = fields.mapping(value, where, self.problems) or {}
            pairs = [(name, figure, f"{where}.{name}") for name, figure in found.items()]
        out: dict[str, int] = {}
        for name, figure, at in pairs:
            if name not in STAGES or name in out:
                continue
            ms = fields.integer(figure, at, self.problems)
            if ms is not None and ms < 0:
                self.problems.add(at, "is negative")
            elif ms is not None:
                out[name] = ms
        return out


def _occurred_at(
    event: Event | None, notify_ms: int | None, received_at: datetime
) -> datetime | None:
    """Event time, never arrival: the payload's own time where the event has one."""
    own: datetime | None = None
    if isinstance(event, AgentJoined):
        own = event.started_at
    elif isinstance(event, AgentLeft | AgentHistory | TurnsFinished):
        own = event.stopped_at
    elif isinstance(event, CallState):
        own = event.reported_at
    if own is not None or notify_ms is None:
        return own
    return fields.from_unix(notify_ms, latest=received_at + fields.FUTURE_SLACK)
