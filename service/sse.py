"""Server-sent events on the wire: the text of an event and the response that writes a stream.

`EventStreamResponse` writes one `stream.Subscription` until the client goes away, the
subscription ends (the process shutting down), the reader takes nothing for `SEND_TIMEOUT_S`
(it is dropped as slow) or reading the log fails. Each
event is `id`, `event` and one `data` line of JSON; a comment line goes out whenever nothing else
did for `heartbeat_s`, so proxies keep the connection open. What subscriptions exist, and what
they receive, is `stream`'s business.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Callable
from typing import Final

import anyio
import structlog
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from service import db, stream

log = structlog.get_logger(__name__)

CONTENT_TYPE: Final = "text/event-stream; charset=utf-8"
HEADERS: Final = [
    (b"content-type", CONTENT_TYPE.encode()),
    (b"cache-control", b"no-cache, no-store"),
    # Proxies that buffer answers (nginx and its ingress controller) would hold events back.
    (b"x-accel-buffering", b"no"),
    # A stream's connection serves nothing after it: closed when the stream ends (a reader
    # dropped for being slow included), not kept for the 620 s of keep-alive.
    (b"connection", b"close"),
]
# Sent first: the client's reconnection delay, and a comment so headers and bytes flow at once.
PREAMBLE: Final = b"retry: 2000\n: connected\n\n"
HEARTBEAT: Final = b": keep-alive\n\n"
FINAL_SEND_S: Final = 1.0
# A reader that has taken nothing for this long (its socket and our buffer are full) is dropped.
SEND_TIMEOUT_S: Final = 10.0


def encode(event: stream.Event) -> bytes:
    """The event as SSE text; JSON escapes every line break, so `data` is one line."""
    data = json.dumps(event.data, separators=(",", ":"), ensure_ascii=False)
    return f"id: {event.position.encode()}\nevent: {event.name}\ndata: {data}\n\n".encode()


class EventStreamResponse(Response):
    """`text/event-stream` from a subscription; `on_close` runs however it ends."""

    def __init__(
        self,
        subscription: stream.Subscription,
        *,
        heartbeat_s: float,
        extra_headers: list[tuple[bytes, bytes]] | None = None,
    ) -> None:
        super().__init__(media_type=CONTENT_TYPE)
        self.subscription = subscription
        self.heartbeat_s = heartbeat_s
        self.extra_headers = extra_headers or []
        self.sent = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        started = time.monotonic()
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [*HEADERS, *self.extra_headers],
            }
        )
        try:
            async with anyio.create_task_group() as group:
                group.start_soon(_until_disconnected, receive, self.subscription)
                group.start_soon(_until_ended, self.subscription, group.cancel_scope.cancel)
                await self._write(send)
                group.cancel_scope.cancel()
        finally:
            self.subscription.end("closed")
            # A reader dropped for being slow is worth a look; the others are routine.
            (log.warning if self.subscription.reason == "slow_reader" else log.info)(
                "stream_closed",
                reason=self.subscription.reason,
                events=self.sent,
                duration_s=round(time.monotonic() - started, 1),
            )
        # A dropped reader may not read this either: its connection is then closed unfinished.
        with anyio.move_on_after(FINAL_SEND_S):
            await send({"type": "http.response.body", "body": b"", "more_body": False})

    async def _write(self, send: Send) -> None:
        items = self.subscription.items(heartbeat_s=self.heartbeat_s)
        try:
            await _body(send, PREAMBLE)
            async with contextlib.aclosing(items):
                async for item in items:
                    await _body(send, HEARTBEAT if item is None else encode(item))
                    self.sent += item is not None
        except TimeoutError:
            self.subscription.end("slow_reader")
        except db.ERRORS as error:
            log.warning("stream_read_failed", error=type(error).__name__)
            self.subscription.end("database_error")


async def _body(send: Send, chunk: bytes) -> None:
    """Write a chunk; `TimeoutError` when the reader takes nothing for `SEND_TIMEOUT_S`."""
    with anyio.fail_after(SEND_TIMEOUT_S):
        await send({"type": "http.response.body", "body": chunk, "more_body": True})


async def _until_disconnected(receive: Receive, subscription: stream.Subscription) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass
    subscription.end("disconnected")


async def _until_ended(subscription: stream.Subscription, stop: Callable[[], None]) -> None:
    await subscription.ended.wait()
    stop()
