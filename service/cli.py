"""The `convoai-ledger` console script (`python -m service` is the same).

    serve [--with-worker] [--workers N]   webhook + read API (and the background worker)
    worker                                history jobs and reconciliation
    migrate                               alembic upgrade head
    reconcile --once [--app APP]          one reconciliation pass, then a summary
    reapply [--app APP]                   apply stored notifications that could not be applied
    simulate ...                          the Agora simulator against a running service

Every command loads the configuration first and fails with a message naming the variable at
fault (exit code 2), then configures logging. Commands that need the database connect to it once
before anything else and, when it cannot be reached, say why in one line (exit code 1).
`convoai-ledger --version` prints the version.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import shutil
import sys
import tempfile
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import structlog
import uvicorn
from starlette.applications import Starlette

import service
from service import (
    app,
    config,
    connections,
    db,
    logs,
    reapply,
    reconcile,
    schema,
    shutdown,
    worker,
)
from service.errors import ConfigError, Unavailable
from service.simulator import command

log = structlog.get_logger(__name__)


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        settings = config.load(os.environ)
    except ConfigError as error:
        print(f"convoai-ledger: configuration error: {error}", file=sys.stderr)
        return 2
    logs.configure(level=settings.log_level, fmt=settings.log_format)
    try:
        command: int = args.run(settings, args)
    except ConfigError as error:
        print(f"convoai-ledger: configuration error: {error}", file=sys.stderr)
        return 2
    except Unavailable as error:
        print(f"convoai-ledger: database unavailable: {error}", file=sys.stderr)
        return 1
    return command


def _require_database(settings: config.Settings) -> None:
    """Raise `ConfigError` without DATABASE_URL, `Unavailable` (one line) if it cannot be reached."""
    if settings.database_url is None:
        raise ConfigError("DATABASE_URL is required")
    db.check_reachable(settings.sqlalchemy_url, timeout_s=settings.database_timeout_s)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="convoai-ledger", description="Agora ConvoAI webhook ledger"
    )
    parser.add_argument(
        "--version", action="version", version=f"convoai-ledger {service.__version__}"
    )
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="serve the webhook endpoint and the read API")
    serve.add_argument(
        "--with-worker", action="store_true", help="also run the background worker in-process"
    )
    serve.add_argument(
        "--workers", type=int, default=1, help="uvicorn worker processes (default 1)"
    )
    serve.set_defaults(run=_serve)
    migrate = sub.add_parser("migrate", help="upgrade the database schema to the newest revision")
    migrate.set_defaults(run=_migrate)
    work = sub.add_parser(
        "worker", help="collect histories (and run periodic duties) until SIGTERM"
    )
    work.set_defaults(run=_worker)
    reconcile_cmd = sub.add_parser(
        "reconcile",
        help="reconcile agents with Agora's REST API (the worker does it every interval)",
    )
    reconcile_cmd.add_argument(
        "--once", action="store_true", required=True, help="one pass, then print a summary"
    )
    reconcile_cmd.add_argument("--app", help="only this App ID (default: every configured app)")
    reconcile_cmd.set_defaults(run=_reconcile)
    reapply_cmd = sub.add_parser(
        "reapply",
        help="apply stored notifications that could not be applied when they arrived",
    )
    reapply_cmd.add_argument("--app", help="only this App ID (default: every configured app)")
    reapply_cmd.set_defaults(run=_reapply)
    simulate = sub.add_parser(
        "simulate",
        help="play Agora: serve its REST API and send signed sessions to a running service",
    )
    command.add_arguments(simulate)
    simulate.set_defaults(run=_simulate)
    return parser


def _serve(settings: config.Settings, args: argparse.Namespace) -> int:
    if args.with_worker and args.workers > 1:
        print("convoai-ledger: --with-worker needs --workers 1", file=sys.stderr)
        return 2
    _require_database(settings)
    if not settings.apps:
        log.warning(
            "no_apps_configured",
            hint="set AGORA_APP_ID and AGORA_WEBHOOK_SECRETS or LEDGER_APPS_FILE",
        )
    log.info(
        "serving",
        host=settings.host,
        port=settings.port,
        workers=args.workers,
        apps=sorted(settings.apps),
    )
    if args.workers > 1:
        return _serve_processes(settings, args.workers)
    draining = threading.Event()
    server = shutdown.Server(
        _uvicorn_config(
            settings, app.create_app(settings, draining=draining, with_worker=args.with_worker)
        ),
        draining=draining,
        drain_s=settings.shutdown_drain_s,
    )
    _freeze_heap()
    server.run()
    return 0 if server.started else 1


def _serve_processes(settings: config.Settings, workers: int) -> int:
    """uvicorn's supervisor over `workers` processes (graceful on SIGTERM, without the drain).

    Metrics from every process are added up through prometheus-client's multiprocess directory.
    """
    owned_metrics_dir = _metrics_dir_for_workers()
    try:
        uvicorn.run(
            "service.cli:app_from_environment",
            factory=True,
            workers=workers,
            **_uvicorn_options(settings),
        )
    finally:
        if owned_metrics_dir is not None:
            shutil.rmtree(owned_metrics_dir, ignore_errors=True)
    return 0


def _metrics_dir_for_workers() -> Path | None:
    """Point the workers at an empty prometheus-client multiprocess directory (see `metrics`).

    Set in our environment before uvicorn spawns the workers, which inherit it; they import
    prometheus-client afresh and so count into files there. An operator's
    `PROMETHEUS_MULTIPROC_DIR` is emptied of a previous run's files; otherwise a temporary
    directory is made and answered, to be removed when serving ends.
    """
    given = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if given:
        for stale in Path(given).glob("*.db"):
            stale.unlink()
        return None
    made = Path(tempfile.mkdtemp(prefix="convoai-ledger-metrics-"))
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(made)
    return made


def _uvicorn_config(settings: config.Settings, application: Starlette) -> uvicorn.Config:
    return uvicorn.Config(application, **_uvicorn_options(settings))


def _uvicorn_options(settings: config.Settings) -> dict[str, Any]:
    """uvicorn's options for `serve`, one process or several; see `connections` for the bounds."""
    return {
        "host": settings.host,
        "port": settings.port,
        "log_config": None,
        "access_log": False,
        "server_header": False,
        "timeout_graceful_shutdown": settings.shutdown_timeout_s,
        # httptools, as uvicorn's "auto" picks, with the header size and read time bounds that
        # uvicorn has no option for; nothing here speaks WebSocket.
        "http": connections.BoundedHttpToolsProtocol,
        "ws": "none",
        # Nothing here reads the client's address: no X-Forwarded-* parsing per request.
        "proxy_headers": False,
        "timeout_keep_alive": connections.KEEP_ALIVE_S,
    }


def app_from_environment() -> Starlette:
    """Application factory for uvicorn worker processes (`serve --workers N`)."""
    settings = config.load(os.environ)
    logs.configure(level=settings.log_level, fmt=settings.log_format)
    application = app.create_app(settings)
    _freeze_heap()
    return application


def _freeze_heap() -> None:
    """Leave what is loaded before serving (modules, classes, the app) out of garbage collection.

    A large answer (a month of hourly usage by tenant: ~100,000 objects) sets off the collector's
    full passes; each would walk the ~110,000 objects that live as long as the process, for tens
    of milliseconds inside the request. Frozen, they are never walked, nor collected.
    """
    gc.collect()
    gc.freeze()


def _migrate(settings: config.Settings, args: argparse.Namespace) -> int:
    _require_database(settings)
    try:
        schema.upgrade(settings.sqlalchemy_url)
    except db.ERRORS as error:
        if not db.is_unavailable(error):
            raise
        raise Unavailable(db.describe(error, url=settings.sqlalchemy_url)) from None
    log.info("migrated", revision=schema.head())
    return 0


def _worker(settings: config.Settings, args: argparse.Namespace) -> int:
    _require_database(settings)
    return asyncio.run(worker.main(settings))


def _reconcile(settings: config.Settings, args: argparse.Namespace) -> int:
    """One pass per app; exit 0 only if every pass completed."""
    if args.app is not None and settings.app(args.app) is None:
        print(f"convoai-ledger: unknown app {args.app!r}", file=sys.stderr)
        return 2
    if not settings.apps:
        print("convoai-ledger: no apps configured", file=sys.stderr)
        return 2
    _require_database(settings)
    summaries = asyncio.run(_reconcile_once(settings, app_id=args.app))
    for summary in summaries:
        print(summary.describe())
    return 0 if all(s.outcome == "completed" for s in summaries) else 1


async def _reconcile_once(
    settings: config.Settings, *, app_id: str | None
) -> list[reconcile.Summary]:
    async with worker.open_deps(settings) as deps:
        return await reconcile.run(deps, app_id=app_id)


def _reapply(settings: config.Settings, args: argparse.Namespace) -> int:
    """Every unapplied notification of the app(s), once; prints a summary per app."""
    if args.app is not None and settings.app(args.app) is None:
        print(f"convoai-ledger: unknown app {args.app!r}", file=sys.stderr)
        return 2
    _require_database(settings)
    app_ids = [args.app] if args.app is not None else sorted(settings.apps)
    for summary in asyncio.run(_reapply_apps(settings, app_ids)):
        print(summary.describe())
    return 0


async def _reapply_apps(settings: config.Settings, app_ids: list[str]) -> list[reapply.Summary]:
    engine = db.create_engine(settings.sqlalchemy_url)
    try:
        return [await reapply.run(engine, settings, app_id=app_id) for app_id in app_ids]
    finally:
        await engine.dispose()


def _simulate(settings: config.Settings, args: argparse.Namespace) -> int:
    return asyncio.run(command.main(settings, args))
