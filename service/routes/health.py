"""Probes: /healthz (the process answers) and /readyz (not shutting down, database reachable,
schema at this build's head or a newer release's; see `schema.serves`)."""

from __future__ import annotations

from typing import Final

from sqlalchemy import exc
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from service import db, schema


async def healthz(request: Request) -> Response:
    return JSONResponse({"status": "ok"})


async def readyz(request: Request) -> Response:
    failing: dict[str, str] = {}
    if request.state.draining.is_set():
        failing["shutdown"] = "draining"
    try:
        async with request.state.engine.connect() as conn:
            revision = await db.schema_revision(conn)
        if not schema.serves(revision):
            failing["schema"] = f"at {revision or 'nothing'}, expected {schema.head()}"
    except (exc.SQLAlchemyError, OSError) as error:
        failing["database"] = f"unreachable ({type(error).__name__})"
    ok = (
        []
        if "database" in failing
        else [name for name in ("database", "schema") if name not in failing]
    )
    return JSONResponse({"ok": ok, "failing": failing}, status_code=503 if failing else 200)


routes: Final = [
    Route("/healthz", healthz, methods=["GET"]),
    Route("/readyz", readyz, methods=["GET"]),
]
