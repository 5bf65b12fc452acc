"""The ASGI application: routes, error answers and the lifespan that owns the engine.

`create_app(settings)` builds everything in one `Starlette(...)` call. The lifespan creates the
database engine and yields it as typed state; handlers reach it as `request.state.engine`.
Every error is answered as JSON: `ServiceError`s with their contract body, anything else as a
logged 500 (or 503 when the database is what failed).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import TypedDict

import structlog
from sqlalchemy import exc
from sqlalchemy.ext.asyncio import AsyncEngine
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from service import db
from service.config import Settings
from service.errors import RequestRejected, ServiceError
from service.routes import dashboard, docs, health, metrics, webhooks

log = structlog.get_logger(__name__)


class State(TypedDict):
    settings: Settings
    engine: AsyncEngine


def create_app(settings: Settings, *, engine: AsyncEngine | None = None) -> Starlette:
    """The application; pass `engine` to share one (tests), else the lifespan creates its own."""

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[State]:
        own = engine is None
        active = engine if engine is not None else db.create_engine(settings.sqlalchemy_url)
        try:
            yield {"settings": settings, "engine": active}
        finally:
            if own:
                await active.dispose()

    return Starlette(
        routes=[
            *webhooks.routes,
            *dashboard.routes,
            *health.routes,
            *metrics.routes,
            *docs.routes,
        ],
        exception_handlers={
            ServiceError: _service_error,
            HTTPException: _http_error,
            exc.SQLAlchemyError: _database_error,
            Exception: _unexpected_error,
        },
        lifespan=lifespan,
    )


async def _service_error(request: Request, error: Exception) -> Response:
    assert isinstance(error, ServiceError)
    body = {"error": error.code}
    if isinstance(error, RequestRejected) and error.show_detail:
        body["detail"] = error.detail
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
