"""Probes: /healthz (the process answers) and /readyz (not shutting down, database reachable,
schema at this build's head or a newer release's; see `schema.serves`).

/readyz gives the database `READY_TIMEOUT_S` at most (less when DATABASE_TIMEOUT_S is shorter), so
that a frozen PostgreSQL is reported well inside the probe's own timeout.
"""

from __future__ import annotations

from typing import Final

from sqlalchemy import exc
from sqlalchemy.ext.asyncio import AsyncEngine
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from service import db, schema
from service.errors import Unavailable

READY_TIMEOUT_S: Final = 2.0


async def healthz(request: Request) -> Response:
    return JSONResponse({"status": "ok"})


async def readyz(request: Request) -> Response:
    failing: dict[str, str] = {}
    if request.state.draining.is_set():
        failing["shutdown"] = "draining"
    timeout_s = min(READY_TIMEOUT_S, request.state.settings.database_timeout_s)
    try:
        revision = await db.within(_revision(request.state.engine), timeout_s=timeout_s)
        if not schema.serves(revision):
            failing["schema"] = f"at {revision or 'nothing'}, expected {schema.head()}"
    except Unavailable:
        failing["database"] = f"no answer within {timeout_s:g} s"
    except (exc.SQLAlchemyError, OSError) as error:
        failing["database"] = f"unreachable ({type(error).__name__})"
    ok = (
        []
        if "database" in failing
        else [name for name in ("database", "schema") if name not in failing]
    )
    return JSONResponse({"ok": ok, "failing": failing}, status_code=503 if failing else 200)


async def _revision(engine: AsyncEngine) -> str | None:
    async with engine.connect() as conn:
        return await db.schema_revision(conn)


routes: Final = [
    Route("/healthz", healthz, methods=["GET"]),
    Route("/readyz", readyz, methods=["GET"]),
]
