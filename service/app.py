"""The ASGI application: routes, error answers and the lifespan that owns the engine.

`create_app(settings)` builds everything in one `Starlette(...)` call. The lifespan creates the
database engine and yields it as typed state; handlers reach it as `request.state.engine`.
`draining` is set by the SIGTERM handler (`service/shutdown.py`) so that `/readyz` fails.
With `METRICS_PORT` set, `/metrics` is not routed here: the lifespan serves it on that port
(`service/monitoring.py`).
Every error is answered as JSON: `ServiceError`s with their contract body, anything else as a
logged 500 (or 503 when the database is what failed).
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import AsyncIterator
from typing import TypedDict

import psycopg
import structlog
from sqlalchemy import exc
from sqlalchemy.ext.asyncio import AsyncEngine
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from service import db, monitoring, worker
from service.config import Settings
from service.errors import RequestRejected, ServiceError
from service.routes import dashboard, docs, erasures, health, metrics, webhooks

log = structlog.get_logger(__name__)


class State(TypedDict):
    settings: Settings
    engine: AsyncEngine
    draining: threading.Event


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
        active = engine if engine is not None else db.create_engine(settings.sqlalchemy_url)
        try:
            async with contextlib.AsyncExitStack() as stack:
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
                yield {"settings": settings, "engine": active, "draining": shutting_down}
        finally:
            if own:
                await active.dispose()

    return Starlette(
        routes=[
            *webhooks.routes,
            *dashboard.routes,
            *erasures.routes,
            *health.routes,
            *(metrics.routes if settings.metrics_port is None else []),
            *docs.routes,
        ],
        exception_handlers={
            ServiceError: _service_error,
            HTTPException: _http_error,
            exc.SQLAlchemyError: _database_error,
            psycopg.Error: _database_error,  # from statements sent on the driver's connection
            Exception: _unexpected_error,
        },
        lifespan=lifespan,
    )


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


async def _service_error(request: Request, error: Exception) -> Response:
    assert isinstance(error, ServiceError)
    body: dict[str, object] = {"error": error.code}
    if isinstance(error, RequestRejected):
        if error.show_detail:
            body["detail"] = error.detail
        body.update(error.extra())
    return JSONResponse(body, status_code=error.status_hint)


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
