"""A server-sent events reader for tests: one stream read in a thread, its events and comments
kept with the time they arrived."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import httpx

from tests.factories import poll


@dataclass(frozen=True, slots=True)
class Received:
    id: str | None
    name: str
    data: dict[str, Any]
    at: float  # time.time() when its last line arrived


class Reader:
    """`GET url` as an event stream until `close()`; `status` and `body` tell a refusal."""

    def __init__(self, url: str, headers: Mapping[str, str] | None = None) -> None:
        self.url = url
        self.headers = dict(headers or {})
        self.events: list[Received] = []
        self.comments: list[tuple[float, str]] = []
        self.retry: int | None = None
        self.status: int | None = None
        self.body: bytes = b""
        self.ended = threading.Event()
        self._client = httpx.Client(timeout=httpx.Timeout(5.0, read=60.0))
        self._response: httpx.Response | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            with self._client.stream("GET", self.url, headers=self.headers) as response:
                self._response = response
                self.status = response.status_code
                if response.status_code != 200:
                    self.body = response.read()
                    return
                self._parse(response)
        except (httpx.HTTPError, OSError, ValueError, RuntimeError):
            pass  # closed by the test, or by the server
        finally:
            self.ended.set()

    def _parse(self, response: httpx.Response) -> None:
        fields: dict[str, str] = {}
        for line in response.iter_lines():
            if line == "":
                if "event" in fields or "data" in fields:
                    self.events.append(
                        Received(
                            id=fields.get("id"),
                            name=fields.get("event", "message"),
                            data=json.loads(fields.get("data", "null")),
                            at=time.time(),
                        )
                    )
                fields = {}
            elif line.startswith(":"):
                self.comments.append((time.time(), line[1:].strip()))
            else:
                name, _, value = line.partition(":")
                value = value[1:] if value.startswith(" ") else value
                if name == "retry":
                    self.retry = int(value)
                else:
                    fields[name] = value

    def wait_open(self, timeout: float = 10.0) -> Reader:
        """Until the server answered and sent its first comment (or refused)."""
        poll(lambda: self.comments or self.ended.is_set(), timeout=timeout)
        return self

    def wait_for(self, check: Callable[[list[Received]], Any], timeout: float = 10.0) -> Any:
        return poll(lambda: check(list(self.events)), timeout=timeout)

    def agent_events(self) -> list[Received]:
        return [e for e in self.events if e.name == "agent"]

    def close(self) -> None:
        if self._response is not None:
            self._response.close()
        self._client.close()
        self._thread.join(timeout=10)

    def __enter__(self) -> Reader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
