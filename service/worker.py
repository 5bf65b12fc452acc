"""The background worker: history jobs plus periodic duties, until told to stop.

`run(deps, stop=…, duties=…)` is the whole loop, used by `convoai-ledger worker` and by
`serve --with-worker` (started and stopped by the app's lifespan). It:

- claims due history jobs (`jobs.claim`, `FOR UPDATE SKIP LOCKED`) while fewer than
  `HISTORY_CONCURRENCY` are in flight, and runs each as a task (`history.run_job`);
- wakes on `pg_notify` from the webhook transaction that enqueued a job, and otherwise polls every
  `HISTORY_POLL_S` (which also picks up jobs whose lease expired under a dead worker);
- extends the lease of the jobs in flight every third of `HISTORY_LEASE_S` (heartbeat);
- runs each `Duty` at start and then every `interval_s`: notification retention, history
  retention (`HISTORY_RETENTION_DAYS`, `erasure.expire`), and reconciliation against Agora every
  `RECONCILE_INTERVAL_S` (`reconcile.run`, all apps);
- beats a `monitoring.Pulse` at every round, which `/healthz` reads: `convoai-ledger worker` serves
  `/metrics`, `/healthz` and `/readyz` on `METRICS_PORT`, or on `PORT` when it is unset
  (`service/monitoring.py`).

At start it warns once per configured app without REST credentials, for which reconciliation and
history fetching are off (`rest_credentials_missing`, and `ledger_agora_credentials_missing`);
the passes that skip such an app say so at debug level only.

On `stop` (SIGTERM) it claims nothing more, gives the jobs in flight `SHUTDOWN_GRACE_S` to finish,
then cancels the rest and releases their jobs for another worker, and returns.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Final

import structlog
from sqlalchemy.ext.asyncio import AsyncEngine

from service import (
    agora,
    credentials,
    db,
    erasure,
    history,
    jobs,
    metrics,
    monitoring,
    reconcile,
    retention,
)
from service.config import Settings

log = structlog.get_logger(__name__)

# Shorter than the 30 s Kubernetes gives a pod between SIGTERM and SIGKILL.
SHUTDOWN_GRACE_S: Final = 20.0
# How long to wait after the database failed before trying again.
RETRY_DELAY_S: Final = 2.0


@dataclass(frozen=True, slots=True, kw_only=True)
class Duty:
    """Something the worker does every `interval_s` seconds (0: never)."""

    name: str
    interval_s: float
    run: Callable[[], Awaitable[object]]


def duties(deps: history.Deps) -> list[Duty]:
    """The periodic duties of a worker process, besides history jobs."""
    settings = deps.settings

    async def prune() -> int:
        return await retention.prune(
            deps.engine, retention_days=settings.notification_retention_days, now=datetime.now(UTC)
        )

    async def expire() -> int:
        return await erasure.expire(
            deps.engine, retention_days=settings.history_retention_days, now=datetime.now(UTC)
        )

    async def reconcile_apps() -> list[reconcile.Summary]:
        return await reconcile.run(deps)

    keep_forever = settings.notification_retention_days == 0
    keep_histories = settings.history_retention_days == 0
    return [
        Duty(name="retention", interval_s=0 if keep_forever else retention.INTERVAL_S, run=prune),
        Duty(
            name="history_retention",
            interval_s=0 if keep_histories else erasure.INTERVAL_S,
            run=expire,
        ),
        Duty(name="reconcile", interval_s=settings.reconcile_interval_s, run=reconcile_apps),
    ]


@contextlib.asynccontextmanager
async def open_deps(
    settings: Settings, *, engine: AsyncEngine | None = None
) -> AsyncIterator[history.Deps]:
    """Engine (unless given), the one Agora HTTP client and a lease identity; closed on exit."""
    own = engine is None
    active = engine if engine is not None else db.create_engine(settings.sqlalchemy_url)
    http = agora.create_http_client(settings)
    try:
        yield history.Deps(
            engine=active,
            settings=settings,
            agora=agora.Agora(http, settings),
            owner=history.new_owner(),
        )
    finally:
        await http.aclose()
        if own:
            await active.dispose()


async def main(settings: Settings) -> int:
    """`convoai-ledger worker`: run until SIGTERM or SIGINT."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    pulse = monitoring.Pulse()
    # Its own counters only (Agora calls, histories, reconciliation): the database gauges are the
    # web tier's. A port already in use (two workers on one host) costs the listener, not the loop.
    port = settings.metrics_port if settings.metrics_port is not None else settings.port
    async with open_deps(settings) as deps:
        listener = monitoring.worker_app(settings, deps.engine, pulse)
        async with monitoring.serving(listener, host=settings.host, port=port):
            await run(deps, stop=stop, duties=duties(deps), pulse=pulse)
    return 0


async def run(
    deps: history.Deps,
    *,
    stop: asyncio.Event,
    duties: Sequence[Duty] = (),
    shutdown_grace_s: float = SHUTDOWN_GRACE_S,
    pulse: monitoring.Pulse | None = None,
) -> None:
    """The worker loop; returns once `stop` is set and the jobs in flight are settled.

    `pulse` is beaten at every round of the loop (for the worker's `/healthz`).
    """
    settings = deps.settings
    log.info(
        "worker_started",
        owner=deps.owner,
        concurrency=settings.history_concurrency,
        duties=[d.name for d in duties],
    )
    _warn_missing_credentials(settings)
    wake = asyncio.Event()
    in_flight: dict[asyncio.Task[history.Settled], jobs.Job] = {}
    helpers = [
        asyncio.create_task(_listen(deps, wake)),
        asyncio.create_task(_heartbeat(deps, in_flight)),
        *(asyncio.create_task(_periodic(duty)) for duty in duties if duty.interval_s > 0),
    ]
    try:
        await _process(deps, in_flight, wake=wake, stop=stop, pulse=pulse or monitoring.Pulse())
    finally:
        await _drain(deps, in_flight, grace_s=shutdown_grace_s)
        for task in helpers:
            task.cancel()
        await asyncio.gather(*helpers, return_exceptions=True)
        log.info("worker_stopped", owner=deps.owner)


def _warn_missing_credentials(settings: Settings) -> None:
    """One warning per app that cannot call Agora, naming what to set (never a value)."""
    missing = set(credentials.missing(settings))
    for app_id in sorted(settings.apps):
        metrics.credentials_missing(app_id, app_id in missing)
    for app_id in sorted(missing):
        log.warning(
            "rest_credentials_missing",
            app_id=app_id,
            detail="reconciliation and history fetching are off for this app",
            set=credentials.VARIABLES,
        )


async def _process(
    deps: history.Deps,
    in_flight: dict[asyncio.Task[history.Settled], jobs.Job],
    *,
    wake: asyncio.Event,
    stop: asyncio.Event,
    pulse: monitoring.Pulse,
) -> None:
    limit = deps.settings.history_concurrency
    while not stop.is_set():
        pulse.beat()
        wake.clear()
        while len(in_flight) < limit and not stop.is_set():
            job = await _claim(deps)
            if job is None:
                break
            task = asyncio.create_task(history.run_job(deps, job))
            in_flight[task] = job
            task.add_done_callback(lambda done: _finished(done, in_flight, wake))
        await _wait_any(wake, stop, timeout=deps.settings.history_poll_s)


async def _claim(deps: history.Deps) -> jobs.Job | None:
    try:
        async with deps.engine.begin() as conn:
            return await jobs.claim(conn, owner=deps.owner, lease_s=deps.settings.history_lease_s)
    except db.ERRORS as error:
        log.warning("history_claim_failed", error=type(error).__name__)
        await asyncio.sleep(RETRY_DELAY_S)
        return None


def _finished(
    task: asyncio.Task[history.Settled],
    in_flight: dict[asyncio.Task[history.Settled], jobs.Job],
    wake: asyncio.Event,
) -> None:
    job = in_flight.pop(task, None)
    wake.set()
    if task.cancelled() or job is None:
        return
    error = task.exception()
    if error is not None:
        # The lease runs out and another claim retries the job (at most history.MAX_ATTEMPTS).
        log.error(
            "history_job_failed",
            agent_id=job.agent_id,
            error=type(error).__name__,
            exc_info=error,
        )


async def _drain(
    deps: history.Deps,
    in_flight: dict[asyncio.Task[history.Settled], jobs.Job],
    *,
    grace_s: float,
) -> None:
    """Let the jobs in flight finish for a while, then cancel them and release their jobs."""
    if not in_flight:
        return
    pending = dict(in_flight)
    log.info("worker_draining", jobs=len(pending))
    _, unfinished = await asyncio.wait(pending, timeout=grace_s)
    for task in unfinished:
        task.cancel()
    await asyncio.gather(*unfinished, return_exceptions=True)
    for task in unfinished:
        job = pending[task]
        try:
            async with deps.engine.begin() as conn:
                released = await jobs.release(
                    conn, app_id=job.app_id, agent_id=job.agent_id, owner=deps.owner
                )
            log.info("history_job_released", agent_id=job.agent_id, released=released)
        except db.ERRORS as error:
            log.warning("history_release_failed", agent_id=job.agent_id, error=type(error).__name__)


async def _heartbeat(
    deps: history.Deps, in_flight: dict[asyncio.Task[history.Settled], jobs.Job]
) -> None:
    """Keep the leases of the jobs in flight (and only those) from expiring."""
    lease = deps.settings.history_lease_s
    while True:
        await asyncio.sleep(lease / 3)
        keys = [(job.app_id, job.agent_id) for job in in_flight.values()]
        if not keys:
            continue
        try:
            async with deps.engine.begin() as conn:
                await jobs.heartbeat(conn, owner=deps.owner, lease_s=lease, keys=keys)
        except db.ERRORS as error:
            log.warning("history_heartbeat_failed", error=type(error).__name__)


async def _listen(deps: history.Deps, wake: asyncio.Event) -> None:
    """Wake the loop on each job notification; reconnect after a failure."""
    url = deps.settings.sqlalchemy_url
    while True:
        try:
            async for _ in db.notifications(url, jobs.CHANNEL):
                wake.set()
        except db.LISTEN_ERRORS as error:
            log.warning("history_listen_failed", error=type(error).__name__)
        await asyncio.sleep(RETRY_DELAY_S)


async def _periodic(duty: Duty) -> None:
    """Run `duty` at start (a worker restarted often still does it), then every interval."""
    while True:
        try:
            await duty.run()
        except Exception as error:  # a failing duty must not stop the worker
            log.error("duty_failed", duty=duty.name, error=type(error).__name__, exc_info=error)
        await asyncio.sleep(duty.interval_s)


async def _wait_any(*events: asyncio.Event, timeout: float) -> None:
    waiters = [asyncio.create_task(event.wait()) for event in events]
    try:
        await asyncio.wait(waiters, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:
            waiter.cancel()
