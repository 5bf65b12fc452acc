"""A lean HTTP/1.1 load generator: pre-built requests over keep-alive asyncio connections.

It runs in its own process (`in_process`) so that its work is not the service's, and costs a few
microseconds per request: the requests are bytes built (and signed) beforehand, the answers are
read by `Content-Length`. Two shapes:

- `closed`: `concurrency` connections each send the next request as soon as the previous one is
  answered: the most the service can take (full load). With `seconds`, no request is sent after
  that long; the ones sent are always a prefix of `requests` (`Result.count` long).
- `open_loop`: requests are due at a fixed rate whatever the answers do; a request's latency runs
  from when it was due, so waiting for a free connection counts (no coordinated omission).

Each `Result` carries the generator's own CPU time (`cpu_s`), to be reported beside the service's.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any


@dataclass(slots=True)
class Result:
    latencies_ms: list[float] = field(default_factory=list)
    statuses: dict[int, int] = field(default_factory=dict)
    elapsed_s: float = 0.0
    cpu_s: float = 0.0  # the load generator's own CPU (user + system) over the run

    @property
    def rate(self) -> float:
        return len(self.latencies_ms) / self.elapsed_s if self.elapsed_s else 0.0

    @property
    def count(self) -> int:
        return len(self.latencies_ms)

    @property
    def failures(self) -> int:
        return sum(count for status, count in self.statuses.items() if status != 200)


def request(path: str, body: bytes, headers: dict[str, str]) -> bytes:
    """One HTTP/1.1 POST, as bytes on the wire."""
    lines = [f"POST {path} HTTP/1.1", "Host: 127.0.0.1"]
    lines += [f"{name}: {value}" for name, value in headers.items()]
    lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


class _Connection:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def open(cls, port: int) -> _Connection:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        return cls(reader, writer)

    async def exchange(self, raw: bytes) -> int:
        self.writer.write(raw)
        head = await self.reader.readuntil(b"\r\n\r\n")
        status = int(head[9:12])
        length = 0
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        if length:
            await self.reader.readexactly(length)
        return status

    def close(self) -> None:
        self.writer.close()


async def _closed(
    port: int, requests: Sequence[bytes], concurrency: int, seconds: float | None
) -> Result:
    result = Result()
    pending = iter(requests)
    connections = [await _Connection.open(port) for _ in range(concurrency)]
    stop_at = time.perf_counter() + seconds if seconds is not None else float("inf")

    async def drive(connection: _Connection) -> None:
        # The clock is read before the next request is taken, so what was taken was sent.
        while time.perf_counter() <= stop_at and (raw := next(pending, None)) is not None:
            began = time.perf_counter()
            status = await connection.exchange(raw)
            result.latencies_ms.append((time.perf_counter() - began) * 1000)
            result.statuses[status] = result.statuses.get(status, 0) + 1

    began = time.perf_counter()
    await asyncio.gather(*(drive(c) for c in connections))
    result.elapsed_s = time.perf_counter() - began
    for connection in connections:
        connection.close()
    return result


async def _open_loop(port: int, requests: Sequence[bytes], rate: float, connections: int) -> Result:
    result = Result()
    queue: asyncio.Queue[tuple[float, bytes] | None] = asyncio.Queue()
    opened = [await _Connection.open(port) for _ in range(connections)]

    async def drive(connection: _Connection) -> None:
        while (item := await queue.get()) is not None:
            due, raw = item
            status = await connection.exchange(raw)
            result.latencies_ms.append((time.perf_counter() - due) * 1000)
            result.statuses[status] = result.statuses.get(status, 0) + 1

    drivers = [asyncio.create_task(drive(c)) for c in opened]
    began = time.perf_counter()
    for i, raw in enumerate(requests):
        due = began + i / rate
        delay = due - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        queue.put_nowait((due, raw))
    for _ in drivers:
        queue.put_nowait(None)
    await asyncio.gather(*drivers)
    result.elapsed_s = time.perf_counter() - began
    for connection in opened:
        connection.close()
    return result


def closed(
    port: int, requests: Sequence[bytes], *, concurrency: int, seconds: float | None = None
) -> Result:
    began = time.process_time()
    result = asyncio.run(_closed(port, requests, concurrency, seconds))
    result.cpu_s = time.process_time() - began
    return result


def open_loop(port: int, requests: Sequence[bytes], *, rate: float, connections: int) -> Result:
    began = time.process_time()
    result = asyncio.run(_open_loop(port, requests, rate, connections))
    result.cpu_s = time.process_time() - began
    return result


def _child(send: Any, fn: Callable[..., Result], args: tuple[Any, ...], kwargs: Any) -> None:
    send.send(fn(*args, **kwargs))
    send.close()


def in_process(fn: Callable[..., Result], *args: Any, **kwargs: Any) -> Result:
    """Run `closed` or `open_loop` in a forked process (it inherits the prepared requests)."""
    context = multiprocessing.get_context("fork")
    receive, send = context.Pipe(duplex=False)
    process = context.Process(target=_child, args=(send, fn, args, kwargs))
    process.start()
    send.close()
    result: Result = receive.recv()
    process.join()
    return result
