"""The ASGI application: routes, error answers and the lifespan that owns the engine.

`create_app(settings)` builds everything in one `Starlette(...)` call. The lifespan creates the
database engine and yields it as typed state; handlers reach it as `request.state.engine`.
`draining` is set by the SIGTERM handler (`service/shutdown.py`) so that `/readyz` fails.
With `METRICS_PORT` set, `/metrics` is not routed here: the lifespan serves it on that port
(`service/monitoring.py`).
Every error is answered as JSON: `ServiceError`s with their contract body, anything else as a
logged 500 (or 503 when the database is what failed, or did not answer within
`DATABASE_TIMEOUT_S`: the webhook and every read API handler are bounded by `db.within`).
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import TypedDict

import psycopg
import structlog
from sqlalchemy import exc
from sqlalchemy.ext.asyncio import AsyncEngine
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route
from starlette.types import Receive, Scope, Send

from service import batcher, db, folder, monitoring, stream, webhook_counts, worker
from service.config import Settings
from service.console import routes as console_routes
from service.errors import RequestRejected, ServiceError
from service.routes import dashboard, docs, erasures, health, insight, metrics, webhooks
from service.routes import stream as stream_routes

log = structlog.get_logger(__name__)


class State(TypedDict):
    settings: Settings
    engine: AsyncEngine
    batcher: batcher.Batcher
    draining: threading.Event
    stream: stream.Hub
    tally: webhook_counts.Tally


def create_app(
    settings: Settings,
    *,
    engine: AsyncEngine | None = None,
    draining: threading.Event | None = None,
    with_worker: bool = False,
) -> Starlette:
    """The application; pass `engine` to share one (tests), else the lifespan creates its own.

    `draining`, once set, makes `/readyz` answer 503 (the process is shutting down).
    `with_worker` also runs the background worker (`worker.run`) for the app's lifetime.
    """
    shutting_down = draining if draining is not None else threading.Event()

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[State]:
        own = engine is None
        active = (
            engine
            if engine is not None
            else db.create_engine(
                settings.sqlalchemy_url, pool_timeout_s=settings.database_timeout_s
            )
        )
        try:
            async with contextlib.AsyncExitStack() as stack:
                # Entered first, left last: the final flush counts every webhook answered.
                tally = webhook_counts.Tally(known=settings.apps)
                await stack.enter_async_context(
                    webhook_counts.flushing(
                        tally,
                        active,
                        interval_s=settings.webhook_counts_flush_s,
                        timeout_s=settings.database_timeout_s,
                    )
                )
                group_commit = await stack.enter_async_context(_write_path(settings))
                if settings.metrics_port is not None:
                    await stack.enter_async_context(
                        monitoring.serving(
                            monitoring.web_app(settings, active),
                            host=settings.host,
                            port=settings.metrics_port,
                        )
                    )
                if with_worker:
                    await stack.enter_async_context(_background_worker(settings, active))
                hub = stream.Hub(
                    active,
                    caps=lambda app_id: settings.pcu_limits(app_id).cap,
                    max_subscribers=settings.stream_max_subscribers,
                    draining=shutting_down,
                )
                stack.push_async_callback(hub.aclose)
                yield {
                    "settings": settings,
                    "engine": active,
                    "batcher": group_commit,
                    "draining": shutting_down,
                    "stream": hub,
                    "tally": tally,
                }
        finally:
            if own:
                await active.dispose()

    app = _Ledger(
        routes=[
            *webhooks.routes,
            *_within_database_timeout(dashboard.routes),
            *_within_database_timeout(insight.routes),
            *erasures.routes,
            *stream_routes.routes,
            *console_routes.routes,
            *health.routes,
            *(metrics.routes if settings.metrics_port is None else []),
            *docs.routes,
        ],
        exception_handlers={
            ClientDisconnect: _client_disconnected,
            ServiceError: _service_error,
            HTTPException: _http_error,
            exc.SQLAlchemyError: _database_error,
            psycopg.Error: _database_error,  # from statements sent on the driver's connection
            Exception: _unexpected_error,
        },
        lifespan=lifespan,
    )
    # A path with a trailing slash is unknown (404 in JSON), never an empty redirect.
    app.router.redirect_slashes = False
    return app


class _Ledger(Starlette):
    """Starlette, with a webhook delivery (a POST to a webhook path) taken straight to its handler,
    without the middleware stack and the router in between: the one request every notification
    makes costs the web tier ~10 % less. What the handler raises is answered by the same exception
    handlers; every other request (another method on a webhook path included) goes the usual way.
    """

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST" and not scope.get("root_path"):
            found = webhooks.PATH.fullmatch(scope["path"])
            if found is not None:
                scope["app"] = self
                scope["path_params"] = {"app_id": found[1]} if found[1] is not None else {}
                await self._webhook(scope, receive, send)
                return
        await super().__call__(scope, receive, send)

    async def _webhook(self, scope: Scope, receive: Receive, send: Send) -> None:
        request = Request(scope, receive)
        try:
            response = await webhooks.receive(request)
        except Exception as error:
            handler = next(
                (
                    self.exception_handlers[c]
                    for c in type(error).__mro__
                    if c in self.exception_handlers
                ),
                _unexpected_error,
            )
            response = await handler(request, error)
        await response(scope, receive, send)


Endpoint = Callable[[Request], Awaitable[Response]]


def _within_database_timeout(routes: Sequence[BaseRoute]) -> list[BaseRoute]:
    """`routes` with each handler answering 503 once DATABASE_TIMEOUT_S has passed (`db.within`).

    Only the handler is bounded, not the sending of its response, so a streamed answer may last.
    """
    return [
        Route(route.path, _bounded(route.endpoint), methods=route.methods, name=route.name)
        if isinstance(route, Route)
        else route
        for route in routes
    ]


def _bounded(endpoint: Endpoint) -> Endpoint:
    async def bounded(request: Request) -> Response:
        timeout_s = request.state.settings.database_timeout_s
        return await db.within(endpoint(request), timeout_s=timeout_s)

    return bounded


@contextlib.asynccontextmanager
async def _write_path(settings: Settings) -> AsyncIterator[batcher.Batcher]:
    """The group commit for webhooks, and the PCU folder its commits poke, for the app's life."""
    pcu_folder = folder.Folder(settings)
    group_commit = batcher.Batcher(
        settings.sqlalchemy_url,
        on_commit=lambda deliveries: pcu_folder.poke({d.app_id for d in deliveries}),
    )
    stop = asyncio.Event()
    folding = asyncio.create_task(pcu_folder.run(stop))
    await group_commit.start()
    try:
        yield group_commit
    finally:
        await group_commit.close()
        stop.set()
        await folding


@contextlib.asynccontextmanager
async def _background_worker(settings: Settings, engine: AsyncEngine) -> AsyncIterator[None]:
    """`worker.run` as a task from start-up to shutdown, sharing the app's engine."""
    stop = asyncio.Event()
    async with worker.open_deps(settings, engine=engine) as deps:
        task = asyncio.create_task(worker.run(deps, stop=stop, duties=worker.duties(deps)))
        task.add_done_callback(_worker_ended)
        try:
            yield
        finally:
            stop.set()
            await task


def _worker_ended(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error(
            "worker_crashed", error=type(task.exception()).__name__, exc_info=task.exception()
        )


async def _client_disconnected(request: Request, error: Exception) -> Response:
    # The client left mid-request (or was disconnected for stalling, see `connections`): nobody
    # is there to read an answer, and nothing failed on our side.
    log.info("client_disconnected", path=request.url.path)
    return Response(status_code=400)


async def _service_error(request: Request, error: Exception) -> Response:
    assert isinstance(error, ServiceError)
    body: dict[str, object] = {"error": error.code}
    headers: dict[str, str] = {}
    if isinstance(error, RequestRejected):
        if error.show_detail:
            body["detail"] = error.detail
        body.update(error.extra())
        headers = error.headers()
    return JSONResponse(body, status_code=error.status_hint, headers=headers)


async def _http_error(request: Request, error: Exception) -> Response:
    assert isinstance(error, HTTPException)
    code = {404: "not_found", 405: "method_not_allowed"}.get(error.status_code, "http_error")
    return JSONResponse({"error": code}, status_code=error.status_code, headers=error.headers)


async def _database_error(request: Request, error: Exception) -> Response:
    if db.is_unavailable(error):
        log.warning("database_unavailable", error=type(error).__name__)
        return JSONResponse({"error": "unavailable"}, status_code=503)
    return await _unexpected_error(request, error)


async def _unexpected_error(request: Request, error: Exception) -> Response:
    log.error("unhandled_error", error=type(error).__name__, exc_info=error)
    return JSONResponse({"error": "internal_error"}, status_code=500)
