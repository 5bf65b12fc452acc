"""Erasure on request (CONTRACT §8), for admin tokens only; the work is `service/erasure.py`.

    DELETE /v1/agents/{agent_id}/history       204; `app_id` as for every agent endpoint
    POST   /v1/apps/{app_id}/erasures          {"label": {"KEY": "VALUE"}} → 200 {"agents": N}

Without a configured token: 401 `unauthorized`. With a read token (of any kind): 403 `forbidden`,
answered before anything is looked up, so it tells nothing about any app or agent. An admin token
sees every configured app; unknown agents and apps are 404 `not_found`. A bad body is 400
`invalid_parameter` with a detail. Each erasure is logged (`history_erased`) with the agent ids
and the token's place (`admin_token=2`), never the token.
"""

from __future__ import annotations

import json
from typing import Any, Final

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from service import access, erasure
from service.errors import InvalidParameter, NotFound, PayloadTooLarge

MAX_BODY: Final = 16 * 1024
MAX_LABEL: Final = 1024  # characters of a label key or value


async def erase_history(request: Request) -> Response:
    grant = access.require_admin(request)
    params = request.query_params
    for name in params:
        if name != "app_id":
            raise InvalidParameter(f"{name}: unknown parameter")
    app_ids = params.getlist("app_id")
    if len(app_ids) > 1 or app_ids == [""]:
        raise InvalidParameter("app_id: one non-empty value")
    async with request.state.engine.connect() as conn:
        app_id, agent_id = await access.agent_key(
            conn, grant, agent_id=request.path_params["agent_id"], app_id=next(iter(app_ids), None)
        )
    erased = await erasure.erase_agent(
        request.state.engine, app_id=app_id, agent_id=agent_id, who=grant.who
    )
    if not erased:
        raise NotFound()
    return Response(status_code=204)


async def erase_by_label(request: Request) -> Response:
    grant = access.require_admin(request)
    app_id = grant.require_app(request.path_params["app_id"])
    if request.query_params:
        raise InvalidParameter(f"{next(iter(request.query_params))}: unknown parameter")
    key, value = _label(await _json_body(request))
    count = await erasure.erase_by_label(
        request.state.engine, app_id=app_id, key=key, value=value, who=grant.who
    )
    return JSONResponse({"agents": count})


async def _json_body(request: Request) -> Any:
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_BODY:
            raise PayloadTooLarge()
    try:
        return json.loads(body)
    except (ValueError, RecursionError):
        raise InvalidParameter('body: a JSON object such as {"label": {"KEY": "VALUE"}}') from None


def _label(document: Any) -> tuple[str, str]:
    """The one `KEY` = `VALUE` pair of `{"label": {"KEY": "VALUE"}}`, both non-empty strings."""
    if not isinstance(document, dict) or set(document) != {"label"}:
        raise InvalidParameter('body: exactly one member, "label"')
    label = document["label"]
    if not isinstance(label, dict) or len(label) != 1:
        raise InvalidParameter('label: an object with exactly one "KEY": "VALUE" pair')
    ((key, value),) = label.items()
    if not isinstance(value, str) or not key or not value:
        raise InvalidParameter("label: the key and the value are non-empty strings")
    if len(key) > MAX_LABEL or len(value) > MAX_LABEL:
        raise InvalidParameter(f"label: the key and the value have at most {MAX_LABEL} characters")
    if not (_storable(key) and _storable(value)):
        raise InvalidParameter("label: no NUL character or unpaired surrogate")
    return key, value


def _storable(text: str) -> bool:
    """Whether PostgreSQL's jsonb can hold `text` (no NUL, valid UTF-8), so it can be matched."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return "\x00" not in text


routes: Final = [
    Route("/v1/agents/{agent_id}/history", erase_history, methods=["DELETE"]),
    Route("/v1/apps/{app_id}/erasures", erase_by_label, methods=["POST"]),
]
