"""The simulator's parts on one event loop: backend, NCS sender and the REST API on uvicorn.

`Simulator` runs in the caller's loop (the `simulate` command); `in_thread(...)` runs one on a
`BackgroundLoop` (its own thread), for tests and benchmarks that are synchronous: `call(fn)` runs
`fn` on that loop (the backend is not thread-safe) and answers its result. `Listener` serves any
ASGI app on a port of its own (tests use it for stand-in webhook receivers).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
from collections.abc import Awaitable, Callable, Iterator, Sequence
from typing import Any, TypeVar

import uvicorn
from starlette.types import ASGIApp

from service.simulator import api
from service.simulator.backend import Backend, SimApp
from service.simulator.ncs import DeliveryPolicy, Sender

T = TypeVar("T")

API_PATH = "/api/conversational-ai-agent"


class _Server(uvicorn.Server):
    """uvicorn without its own signal handling: the listener's owner decides when to stop."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


class Listener:
    """An ASGI app on uvicorn, in the current event loop."""

    def __init__(self, app: ASGIApp, *, host: str = "127.0.0.1", port: int = 0) -> None:
        self.app, self.host, self.port = app, host, port
        self._server: _Server | None = None
        self._task: asyncio.Task[None] | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    async def start(self) -> None:
        """Bind (port 0: any free port) and return once uvicorn is accepting connections."""
        # IPPROTO_TCP, not 0: asyncio sets TCP_NODELAY only on sockets that say so, and without
        # it keep-alive answers wait ~40 ms for delayed ACKs (Nagle).
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self.host, self.port))
        self.port = sock.getsockname()[1]
        config = uvicorn.Config(
            self.app,
            log_config=None,
            access_log=False,
            lifespan="off",
            server_header=False,
            timeout_graceful_shutdown=1,
        )
        self._server = _Server(config)
        self._task = asyncio.create_task(self._server.serve(sockets=[sock]))
        while not self._server.started:
            if self._task.done():
                self._task.result()
            await asyncio.sleep(0.01)

    async def stop(self) -> None:
        if self._server is not None and self._task is not None:
            self._server.should_exit = True
            await self._task


class Simulator:
    """Backend, sender (when there is a `target`) and the REST API; `start` serves it."""

    def __init__(
        self,
        apps: Sequence[SimApp],
        *,
        target: str | None = None,
        delivery: DeliveryPolicy | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        seed: int | None = None,
        **backend_options: Any,
    ) -> None:
        self.sender: Sender | None = None
        if target is not None:
            secrets = {app.app_id: app.webhook_secret for app in apps}
            self.sender = Sender(target, secrets, policy=delivery, seed=seed)
        self.backend = Backend(
            apps,
            notify=self.sender.submit if self.sender is not None else None,
            seed=seed,
            **backend_options,
        )
        self.listener = Listener(api.create_app(self.backend), host=host, port=port)

    @property
    def url(self) -> str:
        return self.listener.url

    @property
    def api_base_url(self) -> str:
        """What the service's `AGORA_API_BASE_URL` should be."""
        return self.url + API_PATH

    async def start(self) -> None:
        await self.listener.start()

    async def stop(self) -> None:
        await self.listener.stop()
        if self.sender is not None:
            await self.sender.aclose()


class BackgroundLoop:
    """An event loop in a daemon thread, driven from synchronous code."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="simulator", daemon=True)
        self._thread.start()

    def call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run `fn(*args, **kwargs)` on the loop and answer its result."""

        async def invoke() -> T:
            return fn(*args, **kwargs)

        return asyncio.run_coroutine_threadsafe(invoke(), self.loop).result()

    def run(self, make: Callable[[], Awaitable[T]], timeout: float | None = None) -> T:
        """Await `make()` on the loop and answer its result."""

        async def invoke() -> T:
            return await make()

        return asyncio.run_coroutine_threadsafe(invoke(), self.loop).result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        self.loop.close()


class Running(BackgroundLoop):
    """A started `Simulator` on its own background loop."""

    def __init__(self, apps: Sequence[SimApp], **options: Any) -> None:
        super().__init__()
        self.simulator = Simulator(apps, **options)

    @property
    def url(self) -> str:
        return self.simulator.url

    @property
    def api_base_url(self) -> str:
        return self.simulator.api_base_url

    @property
    def backend(self) -> Backend:
        return self.simulator.backend

    @property
    def sender(self) -> Sender:
        assert self.simulator.sender is not None, "started without a target"
        return self.simulator.sender


@contextlib.contextmanager
def in_thread(apps: Sequence[SimApp], **options: Any) -> Iterator[Running]:
    """A started `Simulator(apps, **options)` on a background loop; stopped on exit."""
    running = Running(apps, **options)
    try:
        running.run(running.simulator.start, timeout=30)
        yield running
    finally:
        with contextlib.suppress(Exception):
            running.run(running.simulator.stop, timeout=30)
        running.close()
