"""Graceful shutdown of `serve`: on SIGTERM, drain, stop accepting, finish in-flight, exit 0.

Kubernetes sends SIGTERM when it deletes a pod and, at about the same time, takes the pod out of
the Service's endpoints; kube-proxy and ingress controllers learn of it a few seconds later and
route requests to the pod until then. So on SIGTERM:

1. `/readyz` fails at once (the `draining` event, read by `routes/health.py`);
2. the server keeps serving for `SHUTDOWN_DRAIN_S`, answering what is still routed to it;
3. then it closes the listener, lets in-flight requests finish within `SHUTDOWN_TIMEOUT_S`
   (cancelling any left after that), and runs the lifespan's shutdown, which disposes the engine;
4. the process exits 0.

SIGINT (Ctrl-C under `make run`) skips the drain. A second signal during the drain ends it early;
a second SIGINT during step 3 stops waiting for in-flight requests (uvicorn's behaviour).
`SHUTDOWN_DRAIN_S + SHUTDOWN_TIMEOUT_S` must stay below the pod's terminationGracePeriodSeconds,
after which the kubelet sends SIGKILL.

This owns the signal handling of a single `serve` process, which is how Kubernetes runs it (one
process per pod, scaled by replicas). `serve --workers N` is uvicorn's own supervisor: it forwards
SIGTERM to its processes, which stop gracefully but without the drain period.
"""

from __future__ import annotations

import signal
import socket
import threading
import time
from types import FrameType

import structlog
import uvicorn

log = structlog.get_logger(__name__)


class Server(uvicorn.Server):
    """uvicorn's server with a drain period between SIGTERM and closing the listener."""

    def __init__(
        self, config: uvicorn.Config, *, draining: threading.Event, drain_s: float
    ) -> None:
        super().__init__(config)
        self.draining = draining
        self.drain_s = drain_s
        self._drain_until: float | None = None
        self._drain_logged = False

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        # Replaces uvicorn's handler, which records the signal and raises it again after the
        # shutdown: the process would then end killed by SIGTERM (status 143) instead of exit 0.
        # Runs as a signal handler: it only flips flags; `on_tick` logs and acts.
        first = not self.draining.is_set()
        self.draining.set()
        if first and sig == signal.SIGTERM and self.drain_s > 0:
            self._drain_until = time.monotonic() + self.drain_s
        elif self.should_exit and sig == signal.SIGINT:
            self.force_exit = True
        else:
            self.should_exit = True

    async def on_tick(self, counter: int) -> bool:
        """Called by uvicorn's main loop every 0.1 s; ends the drain when its time is up."""
        if self._drain_until is not None and not self.should_exit:
            if not self._drain_logged:
                self._drain_logged = True
                log.info("shutdown_draining", drain_s=self.drain_s)
            if time.monotonic() >= self._drain_until:
                self.should_exit = True
        return await super().on_tick(counter)

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        started = time.monotonic()
        log.info(
            "shutdown_started",
            in_flight=len(self.server_state.tasks),
            connections=len(self.server_state.connections),
            timeout_s=self.config.timeout_graceful_shutdown,
        )
        await super().shutdown(sockets)
        log.info("shutdown_finished", duration_s=round(time.monotonic() - started, 3))
