"""GET /v1/stream: server-sent events of every applied transition and PCU change (CONTRACT §7).

The bearer token decides which apps the stream carries (`visibility`); `app_id` narrows it to one.
Without `Last-Event-ID` the stream starts now; with one it starts right after that event, however
long ago. When this process already streams to `STREAM_MAX_SUBSCRIBERS` readers the answer is 503
`too_many_subscribers` with `Retry-After` (another replica, or this one later, will take it).
"""

from __future__ import annotations

from typing import Final

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from service import sse, stream, visibility
from service.errors import InvalidParameter, NotFound


async def subscribe(request: Request) -> Response:
    apps = visibility.bearer_apps(request)
    return await respond(request, apps=apps, app_id=_app_id(request))


async def respond(
    request: Request,
    *,
    apps: frozenset[str],
    app_id: str | None,
    start: stream.Position | None = None,
) -> Response:
    """The event stream for `apps` (or only `app_id`, which must be one of them), resuming
    after `Last-Event-ID`, else after `start` when given, else from now."""
    if app_id is not None:
        if app_id not in apps:
            raise NotFound()
        apps = frozenset({app_id})
    hub: stream.Hub = request.state.stream
    after = await _start(request, start)
    subscription = hub.open(apps=apps, after=after)
    return sse.EventStreamResponse(
        subscription, heartbeat_s=request.state.settings.stream_heartbeat_s
    )


async def _start(request: Request, start: stream.Position | None) -> stream.Position:
    resume = request.headers.get("last-event-id")
    if resume is not None and resume.strip():
        try:
            return stream.decode(resume.strip())
        except ValueError:
            raise InvalidParameter("Last-Event-ID: not an event id of this stream") from None
    if start is not None:
        return start
    async with request.state.engine.connect() as conn:
        return await stream.head(conn)


def _app_id(request: Request) -> str | None:
    params = request.query_params
    for name in params:
        if name != "app_id":
            raise InvalidParameter(f"{name}: unknown parameter")
    values = params.getlist("app_id")
    if len(values) > 1:
        raise InvalidParameter("app_id: given more than once")
    if values and not values[0]:
        raise InvalidParameter("app_id: empty")
    return values[0] if values else None


routes: Final = [Route("/v1/stream", subscribe, methods=["GET"])]
