"""The console's pages, one view each, over the read-side queries the API uses (no SQL here).

Every page reads the stream's head position first and hands it to the page's script, which
subscribes from there (`/console/stream?after=…`): whatever changes after the page's data was
read arrives as an event, and nothing in between is lost. A view answers the login form to
someone without a session, and only ever reads the apps the session's token may see.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any, Final

from sqlalchemy.ext.asyncio import AsyncConnection
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from service import (
    error_hours,
    events,
    insight,
    jobs,
    latency,
    lifecycle,
    queries,
    stream,
    webhook_counts,
)
from service import timeline as agent_timeline
from service.config import Settings
from service.console import auth, charts, filters, layout, timeline
from service.errors import InvalidParameter, NotFound, Unauthorized
from service.routes import stream as stream_routes

# Window: (span, bucket) in seconds; buckets are whole hours or five minutes, which the rollup
# answers cheapest, and give a chart of 170-290 columns.
WINDOWS: Final = {"24h": (86_400, 300), "7d": (7 * 86_400, 3600), "30d": (30 * 86_400, 10_800)}
ACTIVE: Final = tuple(sorted(state.value for state in lifecycle.ACTIVE))
LIVE_ROWS: Final = 10
# An agent's page shows its first notifications, each payload cut to a readable size; the API
# (`/v1/agents/{agent_id}/events`) pages through all of them, whole.
MAX_NOTIFICATIONS: Final = 300
NOTIFICATION_PAGE: Final = 100
MAX_PAYLOAD_CHARS: Final = 64 * 1024
# The overview's figures over the last day (webhooks, errors, latency, stopped histories).
DAY_S: Final = 86_400
DAY: Final = timedelta(seconds=DAY_S)
TOP_ERRORS: Final = 5
# Notifications waiting to be applied are counted up to this ("1000 or more").
UNAPPLIED_UPTO: Final = 1000
# Why a webhook was refused or failed (`webhook_count.reason`), as the overview names them.
REJECTIONS: Final = {
    "invalid_signature": "bad signature (401)",
    "invalid_notification": "not a notification (400)",
    "payload_too_large": "over 1 MiB (413)",
    "unknown_app": "unknown App ID (404)",
    "client_disconnected": "sender gone mid-body",
}
ERRORS_PAGE: Final = 50
MAX_FILTER_CHARS: Final = 200


def _viewer(request: Request) -> auth.Viewer | Response:
    if auth.session_key(request) is None:
        return auth.disabled()
    who = auth.viewer(request)
    return who if who is not None else auth.to_login(request)


def _stream_url(position: stream.Position, app_id: str | None = None) -> str:
    return "/console/stream" + layout.query({"after": position.encode(), "app_id": app_id})


async def overview(request: Request) -> Response:
    who = _viewer(request)
    if isinstance(who, Response):
        return who
    window = request.query_params.get("window") or "24h"
    if window not in WINDOWS:
        return _problem(who, "No such window", f"window: one of {', '.join(WINDOWS)}", status=400)
    settings: Settings = request.state.settings
    now = datetime.now(UTC)
    app_ids = sorted(who.apps)
    async with request.state.engine.connect() as conn:
        position = await stream.head(conn)
        day = await _last_day(conn, app_ids=app_ids, now=now)
        apps = [
            {
                **await _app_card(conn, settings, app_id=app_id, window=window, now=now),
                **{part: figures[app_id] for part, figures in day.items()},
                **await _insight(conn, app_id=app_id, now=now),
            }
            for app_id in app_ids
        ]
        # Refusals naming an App ID nobody configured belong to no app: only a token that sees
        # every configured app is shown them.
        unknown = (
            await webhook_counts.unknown_apps(conn, known=settings.apps, since=now - DAY)
            if who.apps >= settings.apps.keys()
            else []
        )
    return layout.render(
        "overview.html",
        {
            "viewer": who,
            "apps": apps,
            "window": window,
            "windows": list(WINDOWS),
            "unknown_apps": unknown,
            "reasons": REJECTIONS,
            "stream_url": _stream_url(position),
            "active": ACTIVE,
            "live_rows": LIVE_ROWS,
        },
    )


async def _last_day(
    conn: AsyncConnection, *, app_ids: list[str], now: datetime
) -> dict[str, dict[str, Any]]:
    """Per part of a card, per app: webhook answers over the last day, notifications waiting to
    be applied, the history backlog and the histories of the agents stopped in the last day."""
    return {
        "webhooks": await webhook_counts.totals(conn, app_ids=app_ids, since=now - DAY),
        "waiting": await queries.unapplied_count(conn, app_ids=app_ids, upto=UNAPPLIED_UPTO),
        "backlog": await jobs.backlog(conn, app_ids=app_ids),
        "histories": await queries.history_statuses(conn, app_ids=app_ids, since=now - DAY),
    }


async def _insight(conn: AsyncConnection, *, app_id: str, now: datetime) -> dict[str, Any]:
    """Top errors and turn latency over the last day: the answers of
    `GET /v1/apps/{app_id}/errors/summary` and of `…/latency` with one point for the day."""
    summary = await error_hours.summary(conn, app_id=app_id, start=now - DAY, end=now)
    (day,) = await latency.series(
        conn, app_id=app_id, start=now - DAY, end=now, step_s=DAY_S, labels={}
    )
    return {"top_errors": summary["items"][:TOP_ERRORS], "latency": day}


async def _app_card(
    conn: AsyncConnection, settings: Settings, *, app_id: str, window: str, now: datetime
) -> dict[str, Any]:
    """One app on the overview: live count against the cap, the chart, live agents."""
    span_s, step_s = WINDOWS[window]
    status = await queries.pcu_status(
        conn, app_id=app_id, limits=settings.pcu_limits(app_id), window_s=span_s, now=now
    )
    # Buckets end on a step boundary (the last one holds now), which the rollup reads cheapest.
    end = datetime.fromtimestamp(-(-now.timestamp() // step_s) * step_s, UTC)
    start = end - timedelta(seconds=span_s)
    series = await queries.pcu_series(conn, app_id=app_id, start=start, end=end, step_s=step_s)
    chart = charts.pcu(
        series["points"],
        start=start,
        end=end,
        step_s=step_s,
        cap=status["cap"],
        peak=status["peak"],
    )
    live = await queries.list_agents(
        conn,
        where=queries.AgentFilter(app_ids=[app_id], states=ACTIVE),
        limit=LIVE_ROWS,
        cursor=None,
    )
    return {
        "app_id": app_id,
        "status": status,
        "meter": min(100.0, status["utilisation"] * 100),
        "level": _level(status["utilisation"], warn=settings.pcu_limits(app_id).warn_fraction),
        "warn_fraction": settings.pcu_limits(app_id).warn_fraction,
        "chart": chart,
        "live": live["items"],
        "more_live": live["next_cursor"] is not None,
        "rows_url": "/console/fragments/agent-rows"
        + layout.query([("app_id", app_id), *(("state", s) for s in ACTIVE), ("limit", LIVE_ROWS)]),
    }


def _level(utilisation: float, *, warn: float) -> str:
    """How close to the cap: ok, warn (past PCU_WARN_FRACTION) or full."""
    return "full" if utilisation >= 1 else "warn" if utilisation >= warn else "ok"


async def agents(request: Request) -> Response:
    who = _viewer(request)
    if isinstance(who, Response):
        return who
    try:
        listing = filters.parse(request.query_params, apps=who.apps)
    except InvalidParameter as error:
        return _agents_page(who, filters.Listing(), page=None, error=error.detail, status=400)
    if not filters.canonical(request.query_params, listing):
        return RedirectResponse(
            "/console/agents" + layout.query(listing.params(cursor=listing.cursor)), status_code=303
        )
    try:
        async with request.state.engine.connect() as conn:
            position = await stream.head(conn)
            page = await queries.list_agents(
                conn, where=listing.where(who.apps), limit=listing.limit, cursor=listing.cursor
            )
    except InvalidParameter as error:  # a cursor this service did not give out
        return _agents_page(who, listing, page=None, error=error.detail, status=400)
    return _agents_page(who, listing, page=page, position=position)


def _agents_page(
    who: auth.Viewer,
    listing: filters.Listing,
    *,
    page: dict[str, Any] | None,
    error: str | None = None,
    status: int = 200,
    position: stream.Position | None = None,
) -> Response:
    next_cursor = page["next_cursor"] if page else None
    return layout.render(
        "agents.html",
        {
            "viewer": who,
            "listing": listing,
            "apps": sorted(who.apps),
            "states": filters.STATES,
            "items": page["items"] if page else [],
            "error": error,
            "first_url": "/console/agents" + layout.query(listing.params()),
            "next_url": "/console/agents" + layout.query(listing.params(cursor=next_cursor))
            if next_cursor
            else None,
            # Only the first page takes new agents in live; later pages update states in place.
            "rows_url": "/console/fragments/agent-rows" + layout.query(listing.params())
            if listing.cursor is None
            else None,
            "stream_url": _stream_url(position, listing.app_id) if position else None,
        },
        status=status,
    )


async def agent_rows(request: Request) -> Response:
    """The first page of a list's rows, for the live parts (same parameters as the list)."""
    who = auth.viewer(request)
    if who is None:
        raise Unauthorized()
    listing = filters.parse(request.query_params, apps=who.apps)
    async with request.state.engine.connect() as conn:
        page = await queries.list_agents(
            conn, where=listing.where(who.apps), limit=listing.limit, cursor=None
        )
    return layout.fragment("agent_rows.html", {"items": page["items"]})


async def agent(request: Request) -> Response:
    who = _viewer(request)
    if isinstance(who, Response):
        return who
    agent_id: str = request.path_params["agent_id"]
    app_id = request.query_params.get("app_id") or None
    async with request.state.engine.connect() as conn:
        position = await stream.head(conn)
        if app_id is None:
            found = await queries.agent_apps(conn, agent_id, app_ids=sorted(who.apps))
            if len(found) > 1:
                return layout.render(
                    "choose.html",
                    {"viewer": who, "agent_id": agent_id, "app_ids": found},
                    status=409,
                )
            app_id = found[0] if found else None
        detail = None
        if app_id is not None and app_id in who.apps:
            detail = await queries.agent_detail(conn, app_id, agent_id)
        if detail is None or app_id is None:
            return _problem(
                who, "No such agent", f"There is no agent {agent_id!r} you can see.", status=404
            )
        history = await queries.agent_history(conn, app_id, agent_id)
        story = await agent_timeline.read(conn, app_id=app_id, agent_id=agent_id)
        notes = await _notifications(conn, app_id=app_id, agent_id=agent_id)
    return layout.render(
        "agent.html",
        {
            "viewer": who,
            "agent": detail,
            "history": history,
            "timeline": timeline.build((story or {}).get("items", [])),
            "timeline_truncated": bool(story and story["truncated"]),
            "conversation": timeline.conversation(history),
            "turns": timeline.turns(history),
            "bars": charts.latency_bars((history or {}).get("turns", [])),
            "notifications": [
                {**n, "pretty": timeline.pretty(n["payload"], limit=MAX_PAYLOAD_CHARS)}
                for n in notes
            ],
            "event_names": events.EVENT_NAMES,
            "truncated": len(notes) >= MAX_NOTIFICATIONS,
            "duration_s": _duration(detail),
            "stream_url": _stream_url(position, app_id),
        },
    )


async def _notifications(
    conn: AsyncConnection, *, app_id: str, agent_id: str
) -> list[dict[str, Any]]:
    """The agent's stored notifications in event order, at most `MAX_NOTIFICATIONS`."""
    found: list[dict[str, Any]] = []
    cursor: str | None = None
    while len(found) < MAX_NOTIFICATIONS:
        page = await queries.agent_events(
            conn, app_id, agent_id, limit=NOTIFICATION_PAGE, cursor=cursor
        )
        if page is None:
            break
        found += page["items"]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    return found[:MAX_NOTIFICATIONS]


def _duration(detail: dict[str, Any]) -> float | None:
    started, stopped = detail.get("started_at"), detail.get("stopped_at")
    if not started:
        return None
    end = datetime.fromisoformat(stopped) if stopped else datetime.now(UTC)
    return (end - datetime.fromisoformat(started)).total_seconds()


async def errors(request: Request) -> Response:
    who = _viewer(request)
    if isinstance(who, Response):
        return who
    params = request.query_params
    app_id = params.get("app_id") or None
    if app_id is not None and app_id not in who.apps:
        return _problem(who, "No such app", "app_id: no such app", status=404)
    try:
        module, code = _error_filters(params.get("module") or None, params.get("code") or None)
        async with request.state.engine.connect() as conn:
            page = await insight.list_errors(
                conn,
                where=insight.ErrorFilter(
                    app_ids=[app_id] if app_id is not None else sorted(who.apps),
                    module=module,
                    code=code,
                ),
                limit=ERRORS_PAGE,
                cursor=params.get("cursor") or None,
                names=True,
            )
    except InvalidParameter as error:
        return _problem(who, "Bad link", error.detail, status=400)
    kept = {"app_id": app_id, "module": module, "code": code}
    return layout.render(
        "errors.html",
        {
            "viewer": who,
            "errors": page["items"],
            "apps": sorted(who.apps),
            "filters": kept,
            "filtered": any(v is not None for v in kept.values()),
            "first_url": "/console/errors" + layout.query(kept),
            "paged": bool(params.get("cursor")),
            "next_url": "/console/errors" + layout.query({**kept, "cursor": page["next_cursor"]})
            if page["next_cursor"]
            else None,
        },
    )


def _error_filters(module: str | None, code: str | None) -> tuple[str | None, int | None]:
    """The errors page's `module` (text) and `code` (an integer a bigint holds), or a 400."""
    if module is not None and (len(module) > MAX_FILTER_CHARS or not queries.storable(module)):
        raise InvalidParameter(f"module: at most {MAX_FILTER_CHARS} characters of text")
    if code is None:
        return module, None
    stripped = code.strip()
    digits = stripped.removeprefix("-")
    if not (digits.isascii() and digits.isdigit() and len(digits) <= 19):
        raise InvalidParameter("code: an integer")
    number = int(stripped)
    if not -(2**63) <= number < 2**63:
        raise InvalidParameter("code: an integer")
    return module, number


async def live(request: Request) -> Response:
    """`/console/stream`: the API's stream for the session's apps (cookie, not bearer)."""
    who = auth.viewer(request)
    if who is None:
        raise Unauthorized()
    app_id = request.query_params.get("app_id") or None
    after = request.query_params.get("after")
    try:
        start = stream.decode(after) if after else None
    except ValueError:
        raise InvalidParameter("after: not an event id of this stream") from None
    if app_id is not None and app_id not in who.apps:
        raise NotFound()
    return await stream_routes.respond(request, apps=who.apps, app_id=app_id, start=start)


def _problem(who: auth.Viewer, title: str, text: str, *, status: int) -> Response:
    return layout.render(
        "message.html", {"viewer": who, "title": title, "text": text}, status=status
    )
