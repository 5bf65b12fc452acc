"""Logging: structlog for our events, the stdlib (uvicorn, SQLAlchemy, alembic) routed through it.

`configure(level=..., fmt=...)` is the first call of every CLI entrypoint. Output is one JSON object
per line on stdout (`LOG_FORMAT=json`) or a console rendering for people (`console`). Context such
as `agent_id` and `notice_id` is bound per request or job with `structlog.contextvars`.
Never log a secret, a token or a raw body: log ids.

Our own events go straight from structlog to stdout (a level below `LOG_LEVEL` costs nothing, and
a line skips the stdlib's records and handlers: every webhook writes one); the stdlib's (uvicorn,
alembic) are routed through the same processors and renderer, so both read alike.
"""

from __future__ import annotations

import json
import logging
import sys
from typing import Any, Final

import orjson
import structlog
from structlog.tracebacks import ExceptionDictTransformer
from structlog.typing import Processor

# Noisy libraries kept at WARNING unless LOG_LEVEL=debug (SQLAlchemy then at INFO, see below).
_QUIET: Final = (
    "uvicorn.access",
    "sqlalchemy.engine",
    "httpx",
    "httpcore",
    "alembic.runtime.migration",
)


def configure(*, level: str = "info", fmt: str = "json") -> None:
    """Set up structlog and the stdlib root logger once per process."""
    shared: list[Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.StackInfoRenderer(),
    ]
    # Tracebacks without local variables: a frame's locals hold connection parameters (the
    # database password), request headers and raw bodies. structlog shows them by default.
    renderer: Processor
    if fmt == "console":
        renderer = structlog.dev.ConsoleRenderer(
            colors=sys.stdout.isatty(), exception_formatter=_console_traceback()
        )
    else:
        shared.append(
            structlog.processors.ExceptionRenderer(ExceptionDictTransformer(show_locals=False))
        )
        renderer = structlog.processors.JSONRenderer()
    numeric = logging.getLevelNamesMapping()[level.upper()]
    # Our own lines: orjson renders to bytes, straight to stdout's buffer.
    own = structlog.processors.JSONRenderer(serializer=_orjson) if fmt == "json" else renderer
    structlog.configure(
        processors=[*shared, own],
        logger_factory=_NamedBytesLogger if fmt == "json" else _NamedLogger,
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        cache_logger_on_first_use=True,
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=shared,
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
    )
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(numeric)
    for name in _QUIET:
        logging.getLogger(name).setLevel(numeric if numeric <= logging.DEBUG else logging.WARNING)
    # At DEBUG SQLAlchemy also logs every result row (raw bodies, transcripts): statements are
    # enough, and the engine hides their parameters (`db.create_engine`).
    engine_log = logging.getLogger("sqlalchemy.engine")
    engine_log.setLevel(max(engine_log.level, logging.INFO))
    for name in ("uvicorn", "uvicorn.error"):
        logging.getLogger(name).handlers[:] = []
        logging.getLogger(name).propagate = True


class _NamedLogger(structlog.WriteLogger):
    """structlog's stdout writer, carrying the name a module asked for (`get_logger(__name__)`)
    for `add_logger_name`."""

    def __init__(self, *args: object) -> None:
        super().__init__(sys.stdout)
        self.name = str(args[0]) if args else ""


class _NamedBytesLogger(structlog.BytesLogger):
    """As `_NamedLogger`, for bytes rendered by orjson."""

    def __init__(self, *args: object) -> None:
        super().__init__(sys.stdout.buffer)
        self.name = str(args[0]) if args else ""


def _orjson(value: Any, **_: Any) -> bytes:
    """orjson for structlog; an unknown type as its text, and the stdlib's encoder for what
    orjson refuses outright (an integer past 64 bits)."""
    try:
        return orjson.dumps(value, default=str)
    except TypeError:
        return json.dumps(value, default=str).encode()


def _console_traceback() -> structlog.typing.ExceptionRenderer:
    """rich's traceback when rich is installed (it is optional), else the plain one."""
    try:
        import rich  # noqa: F401
    except ImportError:
        return structlog.dev.plain_traceback
    return structlog.dev.RichTracebackFormatter(show_locals=False)
