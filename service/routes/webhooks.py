"""POST /v1/webhooks/agora/{app_id}: raw body → verify → parse → ingest, answered after commit.

The checks run in the contract's order (unknown app, too large, bad signature, invalid), each
before anything is stored. The database gets `DATABASE_TIMEOUT_S` to store and apply it, else the
answer is 503, before NCS's own 10 seconds are up. One log line per delivery records
the outcome and duration.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import Awaitable
from datetime import UTC, datetime
from typing import Final, get_args

import structlog
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.routing import Route

from service import events, ingest, metrics, signatures
from service.config import AppSettings, Settings
from service.errors import (
    PayloadTooLarge,
    RequestRejected,
    ServiceError,
    Unavailable,
    UnknownApp,
)

MAX_BODY_BYTES: Final = 1024 * 1024
# Bodies from this size on are parsed off the event loop (a typical notification is under 2 KiB).
PARSE_IN_THREAD_BYTES: Final = 64 * 1024

log = structlog.get_logger(__name__)

# The 200's body per outcome, rendered once.
_ANSWERS: Final = {
    status: json.dumps({"status": status}).encode() for status in get_args(ingest.Status)
}


async def receive(request: Request) -> Response:
    started = time.perf_counter()
    received_at = datetime.now(UTC)
    outcome, status, reason = "error", 500, "internal_error"
    app_label, event_type = metrics.UNKNOWN_APP, None
    # The App ID the path named (the console counts refusals of unknown ones too).
    counted_app: str | None = request.path_params.get("app_id")
    # What the log lines of this delivery carry: passed to them, not bound as context variables
    # (binding costs more than the line), except for a failure's lines logged after it.
    context: dict[str, object] = {}
    try:
        app = _app(request.state.settings, request.path_params.get("app_id"))
        app_label = counted_app = app.app_id
        context["app_id"] = app.app_id
        body = await _read_body(request)
        signatures.verify(body, request.headers, [str(s) for s in app.webhook_secrets])
        note = await _parse(body, received_at)
        event_type = note.event_type
        context.update(notice_id=note.notice_id, agent_id=note.agent_id, event_type=event_type)
        settings = request.state.settings
        delivery = ingest.Delivery(app_id=app.app_id, note=note, received_at=received_at)
        result = await _within(request.state.batcher.submit(delivery), settings, context)
        outcome, status, reason = result.status, 200, ""
        return Response(_ANSWERS[result.status], media_type="application/json")
    except ClientDisconnect:
        # Gone before its body arrived (or cut off for stalling): nothing stored, nobody to answer;
        # logged with nginx's "client closed request" status, never sent.
        outcome, status, reason = "rejected", 499, "client_disconnected"
        raise
    except RequestRejected as rejected:
        outcome, status, reason = "rejected", rejected.status_hint, rejected.code
        raise
    except ServiceError as failed:
        status, reason = failed.status_hint, failed.code
        outcome = "unavailable" if failed.code == "unavailable" else "error"
        raise
    finally:
        seconds = time.perf_counter() - started
        metrics.notification(app_label, event_type, outcome=outcome, reason=reason, seconds=seconds)
        request.state.tally.add(counted_app, outcome=outcome, reason=reason, at=received_at)
        if status != 200:  # the error handlers log after this, in this context
            structlog.contextvars.bind_contextvars(**context)
        log.info(
            "webhook_handled",
            **context,
            outcome=outcome,
            status=status,
            reason=reason or None,
            duration_ms=round(seconds * 1000, 2),
        )


async def _within(
    submitted: Awaitable[ingest.Outcome], settings: Settings, context: dict[str, object]
) -> ingest.Outcome:
    """The group commit's answer, or 503 once `DATABASE_TIMEOUT_S` has passed. Only a future is
    awaited here (the writer's connection is not ours to cancel), so a plain timeout does; a
    group nobody waits for any more is rolled back by its writer."""
    try:
        async with asyncio.timeout(settings.database_timeout_s):
            return await submitted
    except TimeoutError:
        log.warning("database_timed_out", **context, timeout_s=settings.database_timeout_s)
        raise Unavailable(
            f"database did not answer within {settings.database_timeout_s:g} s"
        ) from None


async def _parse(body: bytes, received_at: datetime) -> events.Notification:
    """`events.parse`, in a thread for large bodies: decoding tens of thousands of array items
    takes a while, and the event loop keeps answering other requests meanwhile."""
    if len(body) < PARSE_IN_THREAD_BYTES:
        return events.parse(body, received_at=received_at)
    return await asyncio.to_thread(events.parse, body, received_at=received_at)


def _app(settings: Settings, app_id: str | None) -> AppSettings:
    if app_id is None:
        if len(settings.apps) != 1:
            raise UnknownApp("POST /v1/webhooks/agora/{app_id} when several apps are configured")
        return next(iter(settings.apps.values()))
    app = settings.app(app_id)
    if app is None:
        raise UnknownApp()
    return app


async def _read_body(request: Request) -> bytes:
    """The raw body, refused past `MAX_BODY_BYTES` without reading the rest."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > MAX_BODY_BYTES:
        raise PayloadTooLarge()
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            raise PayloadTooLarge()
        chunks.append(chunk)
    return b"".join(chunks)


# The paths `routes` serve, as one pattern: the App ID is one path segment (`service.app` takes a
# POST to them straight to `receive`).
PATH: Final = re.compile(r"/v1/webhooks/agora(?:/([^/]+))?")

routes: Final = [
    Route("/v1/webhooks/agora/{app_id}", receive, methods=["POST"]),
    Route("/v1/webhooks/agora", receive, methods=["POST"]),
]
