"""What one HTTP client connection may take from `serve`: header size, read time, idle time.

uvicorn's httptools protocol parses HTTP; this subclass only adds the bounds uvicorn has no knob
for, counting bytes and arming timers around the parser's own callbacks:

- request headers (from the request line to the blank line) over `MAX_HEADER_BYTES` are answered
  431 and the connection is closed, without feeding the parser another byte: httptools gathers a
  header's value in memory until it ends, so the bound has to be kept before it sees the bytes;
- a request must arrive whole (headers and body) within `REQUEST_TIMEOUT_S` of its first byte,
  else the connection is closed: a client stalling, or trickling, mid-request holds nothing long;
- a connection that never sends a request is idle like one between requests, and both are closed
  after uvicorn's `timeout_keep_alive` (`KEEP_ALIVE_S`, set in `cli.py`).

Time spent by the application (reading the database, writing the answer) is not the client's and
is not bounded here; `db.within` bounds the database. Requests pipelined behind another in one read
(NCS does not pipeline) have their headers counted from the next read on.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any, ClassVar, Final

import structlog
from uvicorn.config import Config
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.server import ServerState

MAX_HEADER_BYTES: Final = 64 * 1024
REQUEST_TIMEOUT_S: Final = 30.0
# Longer than the idle timeout of what sits in front of a pod and reuses connections (AWS ALB
# 60 s, Traefik 90 s, Google Cloud's load balancers 600-610 s, which ask backends for more), so
# the client side always closes first and never sends into a connection we are closing.
KEEP_ALIVE_S: Final = 620

log = structlog.get_logger(__name__)

_TOO_LARGE_BODY: Final = json.dumps({"error": "headers_too_large"}).encode()
_TOO_LARGE: Final = b"".join(
    [
        b"HTTP/1.1 431 Request Header Fields Too Large\r\n",
        b"content-type: application/json\r\n",
        b"content-length: %d\r\n" % len(_TOO_LARGE_BODY),
        b"connection: close\r\n\r\n",
        _TOO_LARGE_BODY,
    ]
)


class BoundedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with the bounds above; pass the class as uvicorn's `http=`."""

    # Class attributes so that a test can subclass with shorter values.
    max_header_bytes: ClassVar[int] = MAX_HEADER_BYTES
    request_timeout_s: ClassVar[float] = REQUEST_TIMEOUT_S

    def __init__(
        self,
        config: Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        self._header_bytes = 0
        self._in_headers = True  # from a request's end (or the connection's start) to a blank line
        self._request_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        # uvicorn arms its keep-alive timer only after a response: a connection that never sends
        # a request would otherwise stay open for good.
        self.timeout_keep_alive_task = self.loop.call_later(
            self.timeout_keep_alive, self.timeout_keep_alive_handler
        )

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_request_timer()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        start = 0
        while start < len(data) and not self.transport.is_closing():
            if not self._in_headers:
                super().data_received(data[start:] if start else data)
                return
            room = self.max_header_bytes - self._header_bytes
            if room <= 0:
                self._refuse_headers()
                return
            end = min(len(data), start + room)
            self._header_bytes += end - start
            super().data_received(data if (start, end) == (0, len(data)) else data[start:end])
            start = end

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._stop_request_timer()
        self._request_timer = self.loop.call_later(self.request_timeout_s, self._request_timed_out)

    def on_headers_complete(self) -> None:
        self._in_headers = False
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        self._stop_request_timer()
        self._in_headers, self._header_bytes = True, 0
        super().on_message_complete()

    def _refuse_headers(self) -> None:
        log.info("request_headers_too_large", limit_bytes=self.max_header_bytes)
        # Only when no answer to an earlier (pipelined) request is still being written.
        if self.cycle is None or self.cycle.response_complete:
            self.transport.write(_TOO_LARGE)
        self.transport.close()

    def _request_timed_out(self) -> None:
        self._request_timer = None
        log.info("request_read_timed_out", timeout_s=self.request_timeout_s)
        self.transport.close()

    def _stop_request_timer(self) -> None:
        if self._request_timer is not None:
            self._request_timer.cancel()
            self._request_timer = None
