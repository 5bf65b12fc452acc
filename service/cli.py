"""The `convoai-ledger` console script (`python -m service` is the same).

    serve [--with-worker] [--workers N]   webhook + read API (and the background worker)
    worker                                history jobs and reconciliation
    migrate                               alembic upgrade head
    reconcile --once [--app APP]          one reconciliation pass, then a summary
    simulate ...                          the Agora simulator against a running service

Every command loads the configuration first and fails with a message naming the variable at
fault (exit code 2), then configures logging.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

import structlog
import uvicorn
from starlette.applications import Starlette

from service import app, config, logs, schema
from service.errors import ConfigError

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
    command: int = args.run(settings, args)
    return command


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="convoai-ledger", description="Agora ConvoAI webhook ledger"
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
    return parser


def _serve(settings: config.Settings, args: argparse.Namespace) -> int:
    if settings.database_url is None:
        print("convoai-ledger: configuration error: DATABASE_URL is required", file=sys.stderr)
        return 2
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
    target: str | Starlette = (
        app.create_app(settings) if args.workers == 1 else "service.cli:app_from_environment"
    )
    owned_metrics_dir = _metrics_dir_for_workers() if args.workers > 1 else None
    try:
        _run_uvicorn(settings, args, target)
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


def _run_uvicorn(
    settings: config.Settings, args: argparse.Namespace, target: str | Starlette
) -> None:
    uvicorn.run(
        target,
        host=settings.host,
        port=settings.port,
        workers=args.workers if args.workers > 1 else None,
        factory=args.workers > 1,
        log_config=None,
        access_log=False,
        server_header=False,
        timeout_graceful_shutdown=20,
    )


def app_from_environment() -> Starlette:
    """Application factory for uvicorn worker processes (`serve --workers N`)."""
    settings = config.load(os.environ)
    logs.configure(level=settings.log_level, fmt=settings.log_format)
    return app.create_app(settings)


def _migrate(settings: config.Settings, args: argparse.Namespace) -> int:
    if settings.database_url is None:
        print("convoai-ledger: configuration error: DATABASE_URL is required", file=sys.stderr)
        return 2
    schema.upgrade(settings.sqlalchemy_url)
    log.info("migrated", revision=schema.head())
    return 0
