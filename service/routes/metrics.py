"""GET /metrics: Prometheus text, unauthenticated (scrapers reach it inside the cluster).

Process counters come from `metrics.render()` (all workers' in multiprocess mode); the gauges
about PCU and history jobs are read from PostgreSQL now, so every replica answers the same. If
the database is unreachable the scrape still answers, without those gauges.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Final

import structlog
from prometheus_client.metrics_core import Metric
from sqlalchemy import exc
from sqlalchemy.ext.asyncio import AsyncEngine
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from service import concurrency, jobs, metrics, pcu
from service.config import Settings

PEAK_WINDOW_S: Final = 86_400

log = structlog.get_logger(__name__)


async def scrape(request: Request) -> Response:
    settings: Settings = request.state.settings
    try:
        families = await _database_families(request.state.engine, settings)
    except (exc.SQLAlchemyError, OSError) as error:
        log.warning("metrics_database_unavailable", error=type(error).__name__)
        families = []
    body = metrics.render(multiprocess_dir=settings.metrics_multiprocess_dir, extra=families)
    return Response(body, media_type=metrics.CONTENT_TYPE)


async def _database_families(engine: AsyncEngine, settings: Settings) -> list[Metric]:
    now = pcu.to_us(datetime.now(UTC))
    apps: dict[str, tuple[int, int, int]] = {}
    async with concurrency.snapshot(engine) as conn:
        for app_id in sorted(settings.apps):
            current = await concurrency.current(conn, app_id=app_id)
            peak = await concurrency.peak(
                conn, app_id=app_id, start=now - PEAK_WINDOW_S * pcu.US_PER_S, end=now + 1
            )
            apps[app_id] = (current, settings.pcu_limits(app_id).cap, peak.value)
        backlog = await jobs.counts(conn)
        oldest = await jobs.oldest_due_seconds(conn)
    return metrics.database_families(pcu=apps, history_jobs=backlog, oldest_due_s=oldest)


routes: Final = [Route("/metrics", scrape, methods=["GET"])]
