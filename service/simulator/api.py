"""Agora's ConvoAI REST API over the simulated backend (starlette), under Agora's own paths.

    POST /api/conversational-ai-agent/v2/projects/{app_id}/join
    POST …/agents/{agent_id}/leave
    GET  …/agents/{agent_id}            query
    GET  …/agents                       list
    GET  …/agents/{agent_id}/history
    GET  …/agents/{agent_id}/turns

Every request target is recorded as received (`Backend.requests`: raw path and query, whether a
route matches or not), so a test can show that a request was never made. Every request then
waits the added latency, answers the next injected fault status if one is due (429 with
`Retry-After`), then checks auth: HTTP Basic with the app's customer ID and secret, or
`agora token=` with an AccessToken2 signed by the app's certificate for this App ID. An agent id
in a path that is not a plain id (`agora.is_plain_id`) is one Agora never made: 404. Errors are
`{"detail", "reason"}` (or the older `{"message", "statusCode", "taskId"}` with
`legacy_errors`).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hmac
import json
from collections.abc import Awaitable, Callable
from typing import Any, Final

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from service import accesstoken, agora
from service.simulator.backend import Backend, SimEndpoint, SimError

PREFIX: Final = "/api/conversational-ai-agent/v2/projects/{app_id}"

_FAULT_REASONS: Final = {
    429: "TooManyRequests",
    500: "InternalError",
    502: "InternalError",
    503: "ServiceUnavailable",
    504: "TaskOperationTimeout",
}

Handler = Callable[[Backend, Request], Awaitable[dict[str, Any]]]


def create_app(backend: Backend) -> Starlette:
    def route(path: str, endpoint: SimEndpoint, handler: Handler, method: str) -> Route:
        async def answer(request: Request) -> Response:
            return await _answer(backend, request, endpoint, handler)

        return Route(PREFIX + path, answer, methods=[method], name=endpoint)

    return Starlette(
        routes=[
            route("/join", "join", _join, "POST"),
            route("/agents/{agent_id}/leave", "leave", _leave, "POST"),
            route("/agents/{agent_id}/history", "history", _history, "GET"),
            route("/agents/{agent_id}/turns", "turns", _turns, "GET"),
            route("/agents/{agent_id}", "query", _query, "GET"),
            route("/agents", "list", _list, "GET"),
        ],
        middleware=[Middleware(_Recorder, backend=backend)],
    )


class _Recorder:
    """Records every request target before routing, so unmatched ones are seen too."""

    def __init__(self, app: ASGIApp, *, backend: Backend) -> None:
        self.app, self.backend = app, backend

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            path = scope.get("raw_path") or scope["path"].encode()
            query = scope.get("query_string", b"")
            target = path + (b"?" + query if query else b"")
            self.backend.requests.append(target.decode("latin-1"))
        await self.app(scope, receive, send)


async def _answer(
    backend: Backend, request: Request, endpoint: SimEndpoint, handler: Handler
) -> Response:
    fault = backend.faults[endpoint]
    delay = backend.latency_s + fault.latency_s
    if delay > 0:
        await asyncio.sleep(delay)
    agent_id = request.path_params.get("agent_id")
    try:
        if fault.statuses and fault.after > 0:
            fault.after -= 1
        elif fault.statuses:
            status = fault.statuses.popleft()
            headers = (
                {"Retry-After": fault.retry_after} if status == 429 and fault.retry_after else {}
            )
            raise _Fault(status, headers)
        _authenticate(backend, request)
        if agent_id is not None and not agora.is_plain_id(agent_id):
            raise SimError(404, "TaskNotFound", "agent not found or has exited")
        body = await handler(backend, request)
    except _Fault as fault_answer:
        error = SimError(
            fault_answer.status,
            _FAULT_REASONS.get(fault_answer.status, "InternalError"),
            f"injected {fault_answer.status}",
        )
        backend.record(endpoint, agent_id, error.status)
        return _error(backend, error, headers=fault_answer.headers)
    except SimError as error:
        backend.record(endpoint, agent_id, error.status)
        return _error(backend, error)
    if endpoint == "join":
        agent_id = body.get("agent_id")
    backend.record(endpoint, agent_id, 200)
    return JSONResponse(body)


class _Fault(Exception):
    def __init__(self, status: int, headers: dict[str, str]) -> None:
        super().__init__(status)
        self.status, self.headers = status, headers


def _error(backend: Backend, error: SimError, *, headers: dict[str, str] | None = None) -> Response:
    body: dict[str, Any] = {"detail": error.detail, "reason": error.reason}
    if backend.legacy_errors:
        body = {
            "message": error.detail,
            "requestResponse": {},
            "statusCode": error.reason,
            "taskId": "",
        }
    return JSONResponse(body, status_code=error.status, headers=headers)


def _authenticate(backend: Backend, request: Request) -> None:
    app = backend.apps.get(request.path_params["app_id"])
    scheme, _, credentials = request.headers.get("authorization", "").partition(" ")
    denied = SimError(401, "InvalidPermission", "authentication failed")
    if app is None:
        raise denied
    if scheme.lower() == "basic" and app.customer_id and app.customer_secret:
        try:
            presented = base64.b64decode(credentials.strip(), validate=True)
        except (binascii.Error, ValueError):
            raise denied from None
        expected = f"{app.customer_id}:{app.customer_secret}".encode()
        if hmac.compare_digest(presented, expected):
            return
        raise denied
    if scheme.lower() == "agora" and credentials.startswith("token=") and app.certificate:
        try:
            token = accesstoken.parse(credentials.removeprefix("token="))
        except accesstoken.InvalidToken:
            raise denied from None
        fresh = token.issued_at + token.expire_s >= backend.clock()
        rtc = any(s.kind == accesstoken.SERVICE_RTC for s in token.services)
        if (
            token.app_id == app.app_id
            and fresh
            and rtc
            and accesstoken.verify(token, app.certificate)
        ):
            return
    raise denied


async def _join(backend: Backend, request: Request) -> dict[str, Any]:
    try:
        document = json.loads(await request.body())
    except ValueError:
        raise SimError(400, "InvalidRequestBody", "body is not JSON") from None
    properties = document.get("properties") if isinstance(document, dict) else None
    name = document.get("name") if isinstance(document, dict) else None
    channel = properties.get("channel") if isinstance(properties, dict) else None
    if not isinstance(name, str) or not name or not isinstance(channel, str) or not channel:
        raise SimError(400, "MissingRequiredField", "name and properties.channel are required")
    labels = properties.get("labels") if isinstance(properties, dict) else None
    agent = backend.join(
        request.path_params["app_id"],
        name=name,
        channel=channel,
        labels=labels if isinstance(labels, dict) else None,
    )
    return {"agent_id": agent.agent_id, "create_ts": agent.start_ts, "status": agent.state}


async def _leave(backend: Backend, request: Request) -> dict[str, Any]:
    return backend.leave(request.path_params["app_id"], request.path_params["agent_id"])


async def _query(backend: Backend, request: Request) -> dict[str, Any]:
    return backend.query(request.path_params["app_id"], request.path_params["agent_id"])


async def _list(backend: Backend, request: Request) -> dict[str, Any]:
    return backend.list_agents(request.path_params["app_id"], dict(request.query_params))


async def _history(backend: Backend, request: Request) -> dict[str, Any]:
    return backend.history(request.path_params["app_id"], request.path_params["agent_id"])


async def _turns(backend: Backend, request: Request) -> dict[str, Any]:
    return backend.turns(
        request.path_params["app_id"], request.path_params["agent_id"], dict(request.query_params)
    )
