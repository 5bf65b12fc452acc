"""GET /v1/apps, /v1/errors, /v1/apps/{app_id}/errors/summary, /v1/agents/{agent_id}/timeline.

Insight reads across agents (CONTRACT §6.1), with the read API's rules (`routes.dashboard`): the
token is checked first, parameters are read strictly with the same parsers (400
`invalid_parameter` naming the parameter), and an app the token may not see is answered as one
that does not exist. Handlers call `insight` and `timeline`.
"""

from __future__ import annotations

import re
from typing import Final

from starlette.datastructures import QueryParams
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from service import access, concurrency, error_hours, insight, timeline
from service.errors import InvalidParameter, NotFound
from service.routes import dashboard
from service.routes.answers import Answer

# An error code is Agora's integer, stored as a bigint.
_CODE: Final = re.compile(r"-?[0-9]{1,19}")
_BIGINT: Final = 2**63


async def list_apps(request: Request) -> Response:
    grant = access.require(request)
    dashboard._only(request.query_params, set())
    settings = request.state.settings
    async with concurrency.snapshot(request.state.engine) as conn:
        found = await insight.apps(
            conn,
            app_ids=grant.apps,
            caps={app_id: settings.pcu_limits(app_id).cap for app_id in grant.apps},
        )
    return Answer(found)


async def list_errors(request: Request) -> Response:
    grant = access.require(request)
    params = request.query_params
    dashboard._only(
        params, {"app_id", "agent_id", "module", "code", "since", "until", "limit", "cursor"}
    )
    app_id = dashboard._one(params, "app_id")
    where = insight.ErrorFilter(
        app_ids=[grant.require_app(app_id)] if app_id is not None else grant.apps,
        agent_id=dashboard._text(params, "agent_id"),
        module=dashboard._text(params, "module"),
        code=_code(params),
        since=dashboard._time(params, "since"),
        until=dashboard._time(params, "until"),
    )
    limit = dashboard._limit(params)
    async with request.state.engine.connect() as conn:
        page = await insight.list_errors(
            conn, where=where, limit=limit, cursor=dashboard._one(params, "cursor")
        )
    return Answer(page)


async def error_summary(request: Request) -> Response:
    grant = access.require(request)
    app_id = grant.require_app(request.path_params["app_id"])
    params = request.query_params
    dashboard._only(params, {"from", "to"})
    start, end = dashboard._range(params)
    dashboard._check_range(params, start, end)
    async with request.state.engine.connect() as conn:
        found = await error_hours.summary(conn, app_id=app_id, start=start, end=end)
    return Answer(found)


async def agent_timeline(request: Request) -> Response:
    grant = access.require(request)
    params = request.query_params
    dashboard._only(params, {"app_id", "kind"})
    kinds = _kinds(params)
    async with concurrency.snapshot(request.state.engine) as conn:
        app_id, agent_id = await dashboard._agent_key(request, conn, grant)
        found = await timeline.read(conn, app_id=app_id, agent_id=agent_id, kinds=kinds)
    if found is None:
        raise NotFound()
    return Answer(found)


def _code(params: QueryParams) -> int | None:
    raw = dashboard._one(params, "code")
    if raw is None:
        return None
    if _CODE.fullmatch(raw) is None or not -_BIGINT <= int(raw) < _BIGINT:
        raise InvalidParameter("code: a whole number (an error code)")
    return int(raw)


def _kinds(params: QueryParams) -> tuple[str, ...]:
    """The `kind` values asked for (repeatable); every kind when none is."""
    asked = params.getlist("kind")
    for kind in asked:
        if kind not in timeline.KINDS:
            raise InvalidParameter(f"kind: one of {', '.join(timeline.KINDS)}")
    return tuple(asked) or timeline.KINDS


routes: Final = [
    Route("/v1/apps", list_apps, methods=["GET"]),
    Route("/v1/errors", list_errors, methods=["GET"]),
    Route("/v1/apps/{app_id}/errors/summary", error_summary, methods=["GET"]),
    Route("/v1/agents/{agent_id}/timeline", agent_timeline, methods=["GET"]),
]
