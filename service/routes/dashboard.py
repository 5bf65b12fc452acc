"""GET /v1/...: the read API for dashboards, behind a bearer token. Handlers call `queries`."""

from __future__ import annotations

import hmac
from typing import Final

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from service import queries
from service.errors import NotFound, Unauthorized


def require_reader(request: Request) -> None:
    """Raise `Unauthorized` unless the request carries one of `READ_API_TOKENS` as a bearer token."""
    scheme, _, presented = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not presented.strip():
        raise Unauthorized()
    candidate = presented.strip().encode("utf-8", "replace")
    matched = False
    for token in request.state.settings.read_api_tokens:
        # No early exit: timing does not tell which token (or how much of one) matched.
        matched |= hmac.compare_digest(str(token).encode("utf-8"), candidate)
    if not matched:
        raise Unauthorized()


async def get_agent(request: Request) -> Response:
    require_reader(request)
    async with request.state.engine.connect() as conn:
        found = await queries.agent_detail(conn, request.path_params["agent_id"])
    if found is None:
        raise NotFound()
    return JSONResponse(found)


async def get_history(request: Request) -> Response:
    require_reader(request)
    async with request.state.engine.connect() as conn:
        found = await queries.agent_history(conn, request.path_params["agent_id"])
    if found is None:
        raise NotFound()
    return JSONResponse(found)


routes: Final = [
    Route("/v1/agents/{agent_id}", get_agent, methods=["GET"]),
    Route("/v1/agents/{agent_id}/history", get_history, methods=["GET"]),
]
