"""Engine factories and the database facts every part shares. No engine exists at import.

The service speaks to PostgreSQL through SQLAlchemy Core on psycopg 3 (`postgresql+psycopg://`).
Use cases own their transactions (`async with engine.begin() as conn:`); repositories take the
connection and never commit. Requests bound their wait on the database with `within`; commands
check the database first with `check_reachable`.
"""

from __future__ import annotations

import asyncio
import hashlib
import math
from collections.abc import AsyncIterator, Awaitable
from pathlib import Path
from typing import Any, Final, TypeVar
from urllib.parse import urlsplit

import psycopg
import structlog
from psycopg import sql
from sqlalchemy import exc, text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from service import errors

# How long a caller waits for a pooled connection, and a new connection for the server, before
# it gives up (requests pass their DATABASE_TIMEOUT_S as `pool_timeout_s`).
POOL_TIMEOUT_S: Final = 5.0
CONNECT_TIMEOUT_S: Final = 3

T = TypeVar("T")
log = structlog.get_logger(__name__)
# Work that `within` gave up on, kept referenced until it has wound down.
_abandoned: set[asyncio.Future[Any]] = set()


def create_engine(
    url: str,
    *,
    pool_size: int = 10,
    max_overflow: int = 10,
    pool_timeout_s: float = POOL_TIMEOUT_S,
) -> AsyncEngine:
    """An async engine with a bounded pool; stale connections are replaced on checkout."""
    return create_async_engine(
        url,
        pool_size=pool_size,
        max_overflow=max_overflow,
        pool_timeout=pool_timeout_s,
        pool_pre_ping=True,
        # Statement parameters hold raw bodies and transcripts: never in logs or error messages.
        hide_parameters=True,
        connect_args={"connect_timeout": CONNECT_TIMEOUT_S, "application_name": "convoai-ledger"},
    )


async def driver_connection(conn: AsyncConnection) -> psycopg.AsyncConnection[Any]:
    """The psycopg connection under `conn`, inside its transaction, for statements sent in one
    round trip (`async with raw.pipeline():`). Its errors are `psycopg.Error`, not SQLAlchemy's.
    """
    raw = await conn.get_raw_connection()
    driver = raw.driver_connection
    if not isinstance(driver, psycopg.AsyncConnection):
        raise TypeError(f"expected a psycopg async connection, got {type(driver).__name__}")
    return driver


async def within(work: Awaitable[T], *, timeout_s: float) -> T:
    """The result of `work`, or `Unavailable` once `timeout_s` have passed without one.

    A frozen PostgreSQL answers nothing, not even its own statement_timeout, and psycopg, once
    cancelled, spends up to ten more seconds asking the server to cancel before it closes the
    connection. So `work` runs as a task of its own: past the deadline it is cancelled and left
    to wind down in the background (SQLAlchemy then invalidates its connection instead of pooling
    it half-used) while the caller answers at once.
    """
    task = asyncio.ensure_future(work)
    try:
        done, _ = await asyncio.wait({task}, timeout=timeout_s)
    except asyncio.CancelledError:
        task.cancel()
        raise
    if task in done:
        return task.result()
    task.cancel()
    _abandoned.add(task)
    task.add_done_callback(_wound_down)
    log.warning("database_timed_out", timeout_s=timeout_s)
    raise errors.Unavailable(f"database did not answer within {timeout_s:g} s")


def _wound_down(task: asyncio.Future[Any]) -> None:
    _abandoned.discard(task)
    if not task.cancelled() and task.exception() is not None:
        log.info("database_work_abandoned", error=type(task.exception()).__name__)


def check_reachable(url: str, *, timeout_s: float) -> None:
    """Connect once and run `SELECT 1`; raise `Unavailable` saying why not, in one line.

    For commands at start, so that an unreachable database is one clear line, not a traceback.
    """
    try:
        with psycopg.connect(
            libpq_url(url),
            connect_timeout=max(2, math.ceil(timeout_s)),  # libpq: whole seconds, at least 2
            application_name="convoai-ledger",
        ) as conn:
            conn.execute("SELECT 1")
    except psycopg.Error as error:
        raise errors.Unavailable(describe(error, url=url)) from None


def describe(error: BaseException, *, url: str) -> str:
    """One line naming what went wrong with the database, never the URL's password."""
    cause = error.orig if isinstance(error, exc.DBAPIError) and error.orig else error
    lines = [line.strip() for line in str(cause).splitlines() if line.strip()]
    line = " ".join((lines[0] if lines else type(cause).__name__).split())
    line = line.removeprefix("connection failed: ")
    password = urlsplit(url).password
    return line.replace(password, "***") if password else line


def migrations_path() -> Path:
    """The alembic script directory: inside the wheel when installed, else beside `service/`."""
    packaged = Path(__file__).parent / "migrations"
    return packaged if packaged.is_dir() else Path(__file__).parent.parent / "migrations"


# What a statement can raise: SQLAlchemy's errors, psycopg's own from pipelined statements
# (`driver_connection`), and the socket's.
ERRORS: Final = (exc.SQLAlchemyError, psycopg.Error, OSError)


def is_unavailable(error: BaseException) -> bool:
    """Whether a driver error means the database is down or unreachable, not that we erred."""
    if isinstance(error, exc.TimeoutError | ConnectionError | OSError):
        return True
    if isinstance(error, psycopg.OperationalError | psycopg.InterfaceError):  # pipelined
        return True
    if isinstance(error, exc.DBAPIError):
        return error.connection_invalidated or isinstance(
            error, exc.OperationalError | exc.InterfaceError
        )
    return False


def unavailable_from(error: BaseException) -> errors.Unavailable:
    return errors.Unavailable(f"database unavailable ({type(error).__name__})")


async def schema_revision(conn: AsyncConnection) -> str | None:
    """The alembic revision the database is at, or None before the first migration."""
    exists = await conn.scalar(text("SELECT to_regclass('alembic_version') IS NOT NULL"))
    if not exists:
        return None
    revision = await conn.scalar(text("SELECT version_num FROM alembic_version"))
    return str(revision) if revision is not None else None


# What a statement on a psycopg connection of our own (`connect`) can raise.
RAW_ERRORS: Final = (psycopg.Error, OSError)
# What `notifications` raises when its connection fails or drops.
LISTEN_ERRORS: Final = RAW_ERRORS


# For the write path's statements, which all look rows up by key among a group's few: joins by
# index lookups, whatever the planner guesses of a young table or of a JSON array's size (a hash
# join over a seq scan of every agent would grow with the table).
KEYED_PLANS: Final = "-c enable_seqscan=off -c enable_hashjoin=off -c enable_mergejoin=off"


def lock_key(name: str) -> int:
    """The advisory lock key (a signed bigint) named `name`, e.g. a purpose and an app."""
    digest = hashlib.blake2b(name.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


async def try_xact_lock(conn: psycopg.AsyncConnection[Any], key: int) -> bool:
    """Take the transaction-level advisory lock `key` if no one holds it (no waiting); it is
    released when the caller's transaction ends."""
    held = await (await conn.execute("SELECT pg_try_advisory_xact_lock(%s)", [key])).fetchone()
    return held is not None and bool(held[0])


async def fold_under_lock(
    conn: psycopg.AsyncConnection[Any], *, lock: str, sql: str, app_id: str
) -> int | None:
    """Run a rollup's one-statement fold `sql` for `app_id` in a transaction of its own, under
    the advisory lock named `lock` (no waiting); answers the count it selects, or None when
    another folder holds the lock. `conn` must be in no transaction."""
    async with conn.transaction():
        if not await try_xact_lock(conn, lock_key(lock)):
            return None
        row = await (await conn.execute(sql, {"app": app_id})).fetchone()
    return int(row[0]) if row is not None else 0


async def connect(
    url: str, *, options: str = "", name: str = "convoai-ledger"
) -> psycopg.AsyncConnection[Any]:
    """A psycopg connection of our own (the write path's, a folder's), outside SQLAlchemy's pool;
    TCP keepalives notice a server that went away. `options` are server settings (`-c k=v`)."""
    return await psycopg.AsyncConnection.connect(
        libpq_url(url),
        connect_timeout=CONNECT_TIMEOUT_S,
        application_name=name,
        options=options,
        keepalives=1,
        keepalives_idle=10,
        keepalives_interval=5,
        keepalives_count=3,
    )


def libpq_url(url: str) -> str:
    """The plain `postgresql://` form of a SQLAlchemy URL, for a direct psycopg connection."""
    scheme, sep, rest = url.partition("://")
    return f"postgresql{sep}{rest}" if scheme.startswith("postgresql") else url


async def notifications(url: str, channel: str) -> AsyncIterator[str]:
    """`LISTEN channel` on a dedicated connection and yield each payload; raises when it drops.

    The first item is an empty string once listening starts, so a caller can catch up on anything
    sent while it was not connected.
    """
    conn = await psycopg.AsyncConnection.connect(
        libpq_url(url),
        autocommit=True,
        connect_timeout=CONNECT_TIMEOUT_S,
        application_name="convoai-ledger-listen",
    )
    async with conn:
        await conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(channel)))
        yield ""
        async for notice in conn.notifies():
            yield notice.payload
