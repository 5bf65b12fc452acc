"""GET /v1/...: the read API for dashboards, behind a bearer token. Handlers call `queries`.

Every handler checks the token first (`access.require`: which apps it may see), then reads its
query parameters strictly: an unknown parameter or a bad value is a 400 `invalid_parameter` whose
detail names the parameter. An app the token may not see is answered as one that does not exist.
Numbers are ASCII digits within bounds, times RFC 3339 representable in UTC, and text that
PostgreSQL cannot hold (a NUL, an unpaired surrogate) can match nothing: in a filter it is a 400,
in a path id a 404, as no stored agent or app has it.
"""

from __future__ import annotations

import re
from collections.abc import Collection
from datetime import UTC, datetime, timedelta
from typing import Final

from sqlalchemy.ext.asyncio import AsyncConnection
from starlette.datastructures import QueryParams
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from service import access, concurrency, latency, lifecycle, queries
from service.errors import InvalidParameter, NotFound
from service.routes.answers import Answer

DEFAULT_LIMIT: Final = 50
MAX_LIMIT: Final = 500
WINDOWS: Final = {"1h": 3600, "24h": 86_400, "7d": 7 * 86_400, "30d": 30 * 86_400}
DEFAULT_WINDOW: Final = "24h"
DEFAULT_STEP_S: Final = 300
DEFAULT_SPAN: Final = timedelta(hours=24)
MAX_POINTS: Final = 10_000
# A series reads every whole hour it covers, whatever the step: bound the span, not only the points.
MAX_SPAN: Final = timedelta(days=366)
# A step longer than the longest series would only ever make one bucket.
MAX_STEP_S: Final = int(MAX_SPAN.total_seconds())
LABEL_PREFIX: Final = "label."
MAX_LABEL_KEY: Final = 128
USAGE_STEP_S: Final = 86_400
# RFC 3339 with ASCII digits only (`datetime.fromisoformat` also takes week dates and basic forms);
# fractional seconds past the microsecond are truncated.
_RFC3339: Final = re.compile(
    r"[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt ][0-9]{2}:[0-9]{2}:[0-9]{2}(?:\.[0-9]+)?"
    r"(?:[Zz]|[+-][0-9]{2}:[0-9]{2})"
)
_EARLIEST: Final = datetime.min.replace(tzinfo=UTC)
AGENT_FILTERS: Final = frozenset(
    {
        *("app_id", "state", "channel", "since", "until", "limit", "cursor"),
        *("name", "has_errors", "stopped_since", "stopped_until"),
    }
)


async def list_agents(request: Request) -> Response:
    grant = access.require(request)
    params = request.query_params
    _only(params, AGENT_FILTERS, labels=True)
    app_id = _one(params, "app_id")
    where = queries.AgentFilter(
        app_ids=[grant.require_app(app_id)] if app_id is not None else grant.apps,
        states=[_state(value) for value in params.getlist("state")],
        channel=_text(params, "channel"),
        labels=_labels(params),
        since=_time(params, "since"),
        until=_time(params, "until"),
        name=_text(params, "name"),
        has_errors=_flag(params, "has_errors"),
        stopped_since=_time(params, "stopped_since"),
        stopped_until=_time(params, "stopped_until"),
    )
    async with request.state.engine.connect() as conn:
        page = await queries.list_agents(
            conn, where=where, limit=_limit(params), cursor=_one(params, "cursor")
        )
    return Answer(page)


async def get_agent(request: Request) -> Response:
    grant = access.require(request)
    _only(request.query_params, {"app_id"})
    async with request.state.engine.connect() as conn:
        app_id, agent_id = await _agent_key(request, conn, grant)
        found = await queries.agent_detail(conn, app_id, agent_id)
    if found is None:
        raise NotFound()
    return Answer(found)


async def get_history(request: Request) -> Response:
    grant = access.require(request)
    _only(request.query_params, {"app_id"})
    async with request.state.engine.connect() as conn:
        app_id, agent_id = await _agent_key(request, conn, grant)
        found = await queries.agent_history(conn, app_id, agent_id)
    if found is None:
        raise NotFound()
    return Answer(found)


async def agent_events(request: Request) -> Response:
    grant = access.require(request)
    params = request.query_params
    _only(params, {"app_id", "limit", "cursor"})
    async with request.state.engine.connect() as conn:
        app_id, agent_id = await _agent_key(request, conn, grant)
        found = await queries.agent_events(
            conn, app_id, agent_id, limit=_limit(params), cursor=_one(params, "cursor")
        )
    if found is None:
        raise NotFound()
    return Answer(found)


async def unapplied_notifications(request: Request) -> Response:
    grant = access.require(request)
    app_id = grant.require_app(request.path_params["app_id"])
    params = request.query_params
    _only(params, {"status", "limit", "cursor"})
    status = _one(params, "status") or "unapplied"
    if status != "unapplied":
        raise InvalidParameter("status: only unapplied is listed")
    async with request.state.engine.connect() as conn:
        page = await queries.unapplied(
            conn, app_id=app_id, limit=_limit(params), cursor=_one(params, "cursor")
        )
    return Answer(page)


async def _agent_key(
    request: Request, conn: AsyncConnection, grant: access.Grant
) -> tuple[str, str]:
    """`(app_id, agent_id)` of the agent a path names, among the apps the token sees
    (`access.agent_key`): `app_id` from the query when given; 409 when several apps hold it."""
    return await access.agent_key(
        conn,
        grant,
        agent_id=request.path_params["agent_id"],
        app_id=_one(request.query_params, "app_id"),
    )


async def app_pcu(request: Request) -> Response:
    grant = access.require(request)
    app_id = grant.require_app(request.path_params["app_id"])
    params = request.query_params
    _only(params, {"window"})
    window = _one(params, "window") or DEFAULT_WINDOW
    if window not in WINDOWS:
        raise InvalidParameter(f"window: one of {', '.join(WINDOWS)}")
    async with concurrency.snapshot(request.state.engine) as conn:
        status = await queries.pcu_status(
            conn,
            app_id=app_id,
            limits=request.state.settings.pcu_limits(app_id),
            window_s=WINDOWS[window],
            now=datetime.now(UTC),
        )
    return Answer({**status, "window": window})


async def app_pcu_series(request: Request) -> Response:
    grant = access.require(request)
    app_id = grant.require_app(request.path_params["app_id"])
    params = request.query_params
    _only(params, {"from", "to", "step"})
    start, end, step = _series(params, default_step=DEFAULT_STEP_S)
    async with concurrency.snapshot(request.state.engine) as conn:
        series = await queries.pcu_series(conn, app_id=app_id, start=start, end=end, step_s=step)
    return Answer(series)


async def app_usage(request: Request) -> Response:
    grant = access.require(request)
    app_id = grant.require_app(request.path_params["app_id"])
    params = request.query_params
    _only(params, {"from", "to", "step", "group_by"})
    start, end, step = _series(params, default_step=USAGE_STEP_S)
    key = _label_key(params, "group_by")
    async with concurrency.snapshot(request.state.engine) as conn:
        found = await queries.usage_series(
            conn, app_id=app_id, start=start, end=end, step_s=step, label=key
        )
    return Answer(found)


async def app_latency(request: Request) -> Response:
    grant = access.require(request)
    app_id = grant.require_app(request.path_params["app_id"])
    params = request.query_params
    _only(params, {"from", "to", "step"}, labels=True)
    start, end, step = _series(params, default_step=DEFAULT_STEP_S)
    labels = _labels(params)
    async with request.state.engine.connect() as conn:
        points = await latency.series(
            conn, app_id=app_id, start=start, end=end, step_s=step, labels=labels
        )
    return Answer(
        {
            "app_id": app_id,
            "from": queries.rfc3339(start),
            "to": queries.rfc3339(end),
            "step": step,
            "points": points,
        }
    )


def _series(params: QueryParams, *, default_step: int) -> tuple[datetime, datetime, int]:
    """A series' `[from, to)` and `step` (seconds): `to` defaults to now, `from` to a day
    before it; at most `MAX_SPAN` and `MAX_POINTS` points."""
    start, end = _range(params)
    step = _whole(params, "step", default=default_step, most=MAX_STEP_S)
    _check_range(params, start, end)
    if (end - start) / timedelta(seconds=step) > MAX_POINTS:
        raise InvalidParameter(f"step: at most {MAX_POINTS} points per series")
    return start, end, step


def _range(params: QueryParams) -> tuple[datetime, datetime]:
    """`from` and `to`: by default the 24 hours up to now (`_check_range` checks them)."""
    end = _time(params, "to") or datetime.now(UTC)
    # Near year 1 the default span would leave the calendar: start as early as it goes.
    start = _time(params, "from") or max(end, _EARLIEST + DEFAULT_SPAN) - DEFAULT_SPAN
    return start, end


def _check_range(params: QueryParams, start: datetime, end: datetime) -> None:
    """A range is forward and at most `MAX_SPAN` long."""
    if start >= end and "from" not in params:
        raise InvalidParameter("to: must be after 0001-01-01T00:00:00Z")
    if start >= end:
        raise InvalidParameter("from: must be before to")
    if end - start > MAX_SPAN:
        raise InvalidParameter(f"from: at most {MAX_SPAN.days} days before to")


def _label_key(params: QueryParams, name: str) -> str | None:
    """`label.KEY`: a label key of 1 to 128 printable characters."""
    value = _one(params, name)
    if value is None:
        return None
    key = value[len(LABEL_PREFIX) :] if value.startswith(LABEL_PREFIX) else ""
    if not 1 <= len(key) <= MAX_LABEL_KEY or not key.isprintable() or not queries.storable(key):
        raise InvalidParameter(f"{name}: label.KEY, KEY 1 to {MAX_LABEL_KEY} printable characters")
    return key


def _only(params: QueryParams, allowed: Collection[str], *, labels: bool = False) -> None:
    for name in params:
        if name not in allowed and not (labels and name.startswith(LABEL_PREFIX)):
            raise InvalidParameter(f"{name}: unknown parameter")


def _one(params: QueryParams, name: str) -> str | None:
    values = params.getlist(name)
    if len(values) > 1:
        raise InvalidParameter(f"{name}: given more than once")
    if values and values[0] == "":
        raise InvalidParameter(f"{name}: empty")
    return values[0] if values else None


def _text(params: QueryParams, name: str) -> str | None:
    """A text filter; one PostgreSQL cannot hold matches nothing stored, so it is refused."""
    value = _one(params, name)
    if value is not None and not queries.storable(value):
        raise InvalidParameter(f"{name}: no NUL character or unpaired surrogate")
    return value


def _whole(params: QueryParams, name: str, *, default: int, most: int) -> int:
    raw = _one(params, name)
    if raw is None:
        return default
    # ASCII digits only: str.isdigit() also holds for "²" (which int() refuses) and for "٣"
    # (which int() reads as 3); the length check keeps int() off absurdly long digit strings.
    if not (raw.isascii() and raw.isdigit() and len(raw) <= len(str(most))) or not (
        1 <= int(raw) <= most
    ):
        raise InvalidParameter(f"{name}: a whole number from 1 to {most}")
    return int(raw)


def _limit(params: QueryParams) -> int:
    return _whole(params, "limit", default=DEFAULT_LIMIT, most=MAX_LIMIT)


def _flag(params: QueryParams, name: str) -> bool | None:
    raw = _one(params, name)
    if raw is None:
        return None
    if raw not in ("true", "false"):
        raise InvalidParameter(f"{name}: true or false")
    return raw == "true"


def _state(value: str) -> str:
    try:
        return lifecycle.State(value.upper()).value
    except ValueError:
        names = ", ".join(lifecycle.State)
        raise InvalidParameter(f"state: one of {names}") from None


def _labels(params: QueryParams) -> dict[str, str]:
    labels: dict[str, str] = {}
    for name in params:
        if name.startswith(LABEL_PREFIX):
            key = name[len(LABEL_PREFIX) :]
            value = _text(params, name)
            if not key or value is None:
                raise InvalidParameter(f"{name}: label.KEY=VALUE with a key and a value")
            if not queries.storable(key):
                raise InvalidParameter(f"{name}: no NUL character or unpaired surrogate")
            labels[key] = value
    return labels


def _time(params: QueryParams, name: str) -> datetime | None:
    raw = _one(params, name)
    if raw is None:
        return None
    if _RFC3339.fullmatch(raw) is None:
        if _RFC3339.fullmatch(f"{raw}Z") is not None:
            raise InvalidParameter(f"{name}: the time needs a UTC offset (Z or +hh:mm)")
        raise InvalidParameter(f"{name}: an RFC 3339 time such as 2026-01-31T12:00:00Z")
    try:
        return datetime.fromisoformat(raw.upper()).astimezone(UTC)
    except ValueError:  # month 13, hour 24, a leap second
        raise InvalidParameter(f"{name}: not a date and time on the calendar") from None
    except OverflowError:  # 0001-01-01T00:00:00+01:00 is in year 0 in UTC
        raise InvalidParameter(f"{name}: outside years 1 to 9999 in UTC") from None


routes: Final = [
    Route("/v1/agents", list_agents, methods=["GET"]),
    Route("/v1/agents/{agent_id}", get_agent, methods=["GET"]),
    Route("/v1/agents/{agent_id}/events", agent_events, methods=["GET"]),
    Route("/v1/agents/{agent_id}/history", get_history, methods=["GET"]),
    Route("/v1/apps/{app_id}/pcu", app_pcu, methods=["GET"]),
    Route("/v1/apps/{app_id}/pcu/series", app_pcu_series, methods=["GET"]),
    Route("/v1/apps/{app_id}/latency", app_latency, methods=["GET"]),
    Route("/v1/apps/{app_id}/notifications", unapplied_notifications, methods=["GET"]),
    Route("/v1/apps/{app_id}/usage", app_usage, methods=["GET"]),
]
