"""The monitoring listener: a second, small HTTP server for what only the cluster should reach.

- `serve` with `METRICS_PORT` set: `GET /metrics` is served here (`web_app`) and no longer on
  `PORT`, so the port a public route reaches never carries it.
- `worker`: `GET /metrics` (this process's counters), `GET /healthz` (200 while the worker loop
  went round within `LIVENESS_S`, or three `HISTORY_POLL_S` if longer; 503 once it has not, so a
  hung loop gets the pod restarted; a database outage does not stop the loop going round) and
  `GET /readyz` (200 while the database answers) on `METRICS_PORT`, or on `PORT` when that is
  unset (the worker has no other HTTP to serve there).

Both run uvicorn on a socket bound here, in the process's own event loop, with no signal handling
of their own (the process's stays in charge). A port that cannot be bound costs the listener, not
the process: it is logged (`monitoring_port_unavailable`) and the process carries on.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Final

import structlog
import uvicorn
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from service import db, metrics
from service.config import Settings
from service.routes import metrics as metrics_route

# The worker loop goes round at least every HISTORY_POLL_S (2 s by default, at most a few
# seconds while the database is down): a minute without a round means it is stuck.
LIVENESS_S: Final = 60.0
STARTUP_TIMEOUT_S: Final = 5.0

log = structlog.get_logger(__name__)


@dataclass(slots=True)
class Pulse:
    """When the worker loop last went round (monotonic seconds); `beat()` at every round."""

    at: float = field(default_factory=time.monotonic)

    def beat(self) -> None:
        self.at = time.monotonic()

    def age_s(self) -> float:
        return time.monotonic() - self.at


def web_app(settings: Settings, engine: AsyncEngine) -> Starlette:
    """`GET /metrics` of `serve`, exactly as it is answered on `PORT` without `METRICS_PORT`."""
    return _app(metrics_route.routes, {"settings": settings, "engine": engine})


def worker_app(settings: Settings, engine: AsyncEngine, pulse: Pulse) -> Starlette:
    """The worker's `/metrics`, `/healthz` and `/readyz`."""
    routes = [
        Route("/metrics", _worker_metrics, methods=["GET"]),
        Route("/healthz", _worker_healthz, methods=["GET"]),
        Route("/readyz", _worker_readyz, methods=["GET"]),
    ]
    liveness_s = max(LIVENESS_S, 3 * settings.history_poll_s)
    state = {"settings": settings, "engine": engine, "pulse": pulse, "liveness_s": liveness_s}
    return _app(routes, state)


@contextlib.asynccontextmanager
async def serving(app: Starlette, *, host: str, port: int) -> AsyncIterator[None]:
    """Serve `app` on `host:port` for the duration of the block (nothing if the port is taken)."""
    try:
        sock = _bind(host, port)
    except OSError as error:
        log.warning("monitoring_port_unavailable", host=host, port=port, error=error.strerror)
        yield
        return
    server = _Server(
        uvicorn.Config(app, log_config=None, access_log=False, server_header=False, lifespan="on")
    )
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        await _started(server, task)
        log.info("monitoring_serving", host=host, port=port)
        yield
    finally:
        server.should_exit = True
        await asyncio.gather(task, return_exceptions=True)
        sock.close()


class _Server(uvicorn.Server):
    """uvicorn without its signal handlers: the process's own handlers stop it (`should_exit`)."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def _app(routes: list[Route], state: dict[str, object]) -> Starlette:
    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[dict[str, object]]:
        yield state

    return Starlette(routes=routes, lifespan=lifespan)


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    return socket.create_server((host, port), family=family, backlog=64)


async def _started(server: uvicorn.Server, task: asyncio.Task[None]) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while not server.started and not task.done() and time.monotonic() < deadline:
        await asyncio.sleep(0.01)


async def _worker_metrics(request: Request) -> Response:
    settings: Settings = request.state.settings
    body = metrics.render(multiprocess_dir=settings.metrics_multiprocess_dir)
    return Response(body, media_type=metrics.CONTENT_TYPE)


async def _worker_healthz(request: Request) -> Response:
    age = request.state.pulse.age_s()
    if age > request.state.liveness_s:
        return JSONResponse({"status": "stuck", "loop_age_s": round(age, 1)}, status_code=503)
    return JSONResponse({"status": "ok", "loop_age_s": round(age, 1)})


async def _worker_readyz(request: Request) -> Response:
    try:
        async with request.state.engine.connect() as conn:
            await conn.execute(text("SELECT 1"))
    except db.ERRORS as error:
        failing = {"database": f"unreachable ({type(error).__name__})"}
        return JSONResponse({"ok": [], "failing": failing}, status_code=503)
    return JSONResponse({"ok": ["database"], "failing": {}})
