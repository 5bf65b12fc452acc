"""Agora's REST answers read into typed values: an agent's status, list pages, history, turns,
and what an error answer says.

`json_object` decodes a 2xx body; each reader takes that object and returns a frozen dataclass,
or raises `Unreadable` when the body is not shaped as Agora documents it, which the client
(`agora.py`) makes an `AgoraMalformed` for the endpoint. Unknown fields are ignored and a missing
optional field is None. Turns are read by `events.parse_turn`, the reader 112 notifications use.
`error_reply` reads both error bodies Agora has used; which error that makes, and whether it is
retried, is the client's.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import httpx

from service import events, lifecycle, retries
from service.errors import MalformedEvent


class Unreadable(ValueError):
    """A 2xx answer whose body is not shaped as Agora documents it."""

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True, slots=True, kw_only=True)
class ErrorReply:
    """A non-2xx answer: its status and what its body says (either of Agora's error bodies)."""

    status: int
    reason: str | None
    detail: str | None
    retry_after: float | None  # seconds, from a `Retry-After` header


@dataclass(frozen=True, slots=True, kw_only=True)
class AgentStatus:
    """`GET …/agents/{id}` (query): works for exited agents too."""

    agent_id: str
    name: str | None
    status: str
    state: lifecycle.State | None  # None when Agora answers a status we do not know
    started_at: datetime | None
    stopped_at: datetime | None
    message: str | None


@dataclass(frozen=True, slots=True, kw_only=True)
class AgentSummary:
    """One item of `GET …/agents` (list): no name, channel or labels."""

    agent_id: str
    status: str
    state: lifecycle.State | None
    started_at: datetime | None


@dataclass(frozen=True, slots=True, kw_only=True)
class ListPage:
    """One page of `GET …/agents`; `cursor` asks for the next (None on the last page)."""

    agents: tuple[AgentSummary, ...]
    cursor: str | None


@dataclass(frozen=True, slots=True, kw_only=True)
class History:
    """`GET …/agents/{id}/history`: the transcript Agora holds (documented for running agents)."""

    agent_id: str
    status: str
    started_at: datetime | None
    contents: tuple[Mapping[str, Any], ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class TurnsPage:
    """One page of `GET …/agents/{id}/turns`; `last` when no page follows."""

    turns: tuple[events.Turn, ...]
    total_turn_count: int | None
    last: bool


@dataclass(frozen=True, slots=True, kw_only=True)
class Turns:
    """Every page of `GET …/agents/{id}/turns` (sessions of the last 7 days)."""

    agent_id: str
    total_turn_count: int | None
    turns: tuple[events.Turn, ...]
    pages: int


def json_object(response: httpx.Response) -> dict[str, Any]:
    """The body of a 2xx answer as a JSON object; `{}` for an empty one (leave answers so)."""
    if not response.content:
        return {}
    try:
        body = response.json()
    except ValueError:
        raise Unreadable("body is not JSON", status=response.status_code) from None
    if not isinstance(body, dict):
        raise Unreadable("body is not an object", status=response.status_code)
    return body


def error_reply(response: httpx.Response) -> ErrorReply:
    """Read `{"detail", "reason"}` (API v2.7+) or `{"message", "statusCode", "taskId"}`."""
    body: Any = None
    with contextlib.suppress(ValueError):
        body = response.json()
    fields = body if isinstance(body, dict) else {}
    return ErrorReply(
        status=response.status_code,
        reason=_first_text(fields, "reason", "statusCode"),
        detail=_first_text(fields, "detail", "message"),
        retry_after=retries.parse_retry_after(response.headers.get("Retry-After")),
    )


def agent_status(body: Mapping[str, Any], *, agent_id: str) -> AgentStatus:
    """A query answer; `agent_id` (the one asked about) when the body does not repeat it."""
    status = _text(body, "status") or ""
    return AgentStatus(
        agent_id=_text(body, "agent_id") or agent_id,
        name=_text(body, "name"),
        status=status,
        state=state(status),
        started_at=events.timestamp(body.get("start_ts")),
        stopped_at=events.timestamp(body.get("stop_ts")),
        message=_text(body, "message"),
    )


def list_page(body: Mapping[str, Any]) -> ListPage:
    """A list answer: `data.list` items, and `meta.cursor` (empty on the last page)."""
    items = _array(_object(body, "data"), "list")
    cursor = _text(_object(body, "meta"), "cursor")
    return ListPage(agents=tuple(_summary(item) for item in items), cursor=cursor or None)


def history(body: Mapping[str, Any], *, agent_id: str) -> History:
    contents = _array(body, "contents")
    if not all(isinstance(item, dict) for item in contents):
        raise Unreadable("contents must be objects")
    return History(
        agent_id=_text(body, "agent_id") or agent_id,
        status=_text(body, "status") or "",
        started_at=events.timestamp(body.get("start_ts")),
        contents=tuple(contents),
    )


def turns_page(body: Mapping[str, Any], *, index: int) -> TurnsPage:
    """Page `index` (from 1): last when `is_last_page`, `total_pages` says so, or it is empty."""
    items = _array(body, "turns")
    try:
        turns = tuple(events.parse_turn(t, f"turns[{i}]") for i, t in enumerate(items))
    except MalformedEvent as exc:
        raise Unreadable(str(exc)) from None
    count = body.get("total_turn_count")
    total = count if isinstance(count, int) and not isinstance(count, bool) else None
    last = _last_page(_object(body, "pagination"), index) or not items
    return TurnsPage(turns=turns, total_turn_count=total, last=last)


def state(status: str) -> lifecycle.State | None:
    """The lifecycle state Agora's `status` names; None for one we do not know."""
    try:
        return lifecycle.State(status.strip().upper())
    except ValueError:
        return None


def _summary(item: object) -> AgentSummary:
    if not isinstance(item, dict) or not isinstance(item.get("agent_id"), str):
        raise Unreadable("list items must be objects with an agent_id")
    status = item.get("status") if isinstance(item.get("status"), str) else ""
    return AgentSummary(
        agent_id=item["agent_id"],
        status=str(status),
        state=state(str(status)),
        started_at=events.timestamp(item.get("start_ts")),
    )


def _last_page(pagination: Mapping[str, Any], index: int) -> bool:
    if pagination.get("is_last_page") is True:
        return True
    total = pagination.get("total_pages")
    return not isinstance(total, int) or index >= total


def _first_text(body: Mapping[str, Any], *keys: str) -> str | None:
    for key in keys:
        value = body.get(key)
        if isinstance(value, str | int) and not isinstance(value, bool) and str(value):
            return str(value)
    return None


def _text(body: Mapping[str, Any], key: str) -> str | None:
    value = body.get(key)
    if value is None:
        return None
    if not isinstance(value, str):
        raise Unreadable(f"{key} must be a string")
    return value


def _object(body: Mapping[str, Any], key: str) -> Mapping[str, Any]:
    value = body.get(key, {})
    if not isinstance(value, dict):
        raise Unreadable(f"{key} must be an object")
    return value


def _array(body: Mapping[str, Any], key: str) -> list[Any]:
    value = body.get(key, [])
    if not isinstance(value, list):
        raise Unreadable(f"{key} must be an array")
    return value
