"""Agora's ConvoAI REST API as typed calls: query, list (all pages), history, turns (all pages).

One `httpx.AsyncClient` per process (`create_http_client`), built with the base URL and explicit
timeouts; `Agora(http, settings).for_app(app_id)` answers an `AgoraClient` whose requests carry
that app's `Authorization` (`credentials.Signer`: a token minted per call from the App
Certificate, else HTTP Basic with the customer ID and secret).

    AgoraError                   base: `endpoint`, `status` (None: no answer), `reason`, `detail`
    ├── AgoraUnavailable         retryable: transport errors and timeouts, 429, 5xx
    ├── AgoraRejected            final: any other 4xx (404: "not found or has exited")
    ├── AgoraMalformed           final: a 2xx whose body we cannot read
    ├── AgoraNotConfigured       final, nothing sent: the app has no REST credentials
    └── AgoraIdNotPlain          final, nothing sent: the agent id is not a plain id

Agent ids never steer a request (CONTRACT §3): every path is built from segments, each
percent-encoded on its own (`_path`), and an agent id becomes a segment only when it is plain
(`is_plain_id`: 1-128 ASCII letters, digits, `-` or `_`); otherwise the call raises
`AgoraIdNotPlain` before any request. Query parameters go through httpx's `params`, never into
the path. The App ID comes from configuration (already 1-64 of the same characters) and is
encoded too.

Both error bodies Agora has used are read: `{"detail", "reason"}` (API v2.7+) and the older
`{"message", "statusCode", "taskId"}`. Only `AgoraUnavailable` is retried, inside each call, as
`retries.RetryPolicy` says (backoff with full jitter, or Agora's `Retry-After`, within
`AGORA_RETRY_ATTEMPTS` and `AGORA_RETRY_TIMEOUT_S`). Every attempt is one `agora_request` log line
with endpoint, status, attempt and the next delay; `_observe` is where call counts and durations
by endpoint and status are taken (a call refused before sending is not counted). Answers are read
into typed values by `replies`; this module owns the requests: paths, headers, attempts, pages.
"""

from __future__ import annotations

import contextlib
import re
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from datetime import datetime
from typing import Any, ClassVar, Final, Literal
from urllib.parse import quote

import httpx
import stamina
import structlog

from service import credentials, events, lifecycle, metrics, replies, retries
from service.config import Settings
from service.errors import ServiceError

log = structlog.get_logger(__name__)

Endpoint = Literal["join", "leave", "query", "list", "history", "turns"]

# Agora's page-size bounds: list `limit` is free (default 20); turns `page_size` is 10-200.
LIST_PAGE_SIZE: Final = 100
TURNS_PAGE_SIZE: Final = 200
# A safety stop for pagination loops against a misbehaving server.
MAX_PAGES: Final = 10_000
# What an agent id must be to reach a URL; fullmatch, so no trailing newline slips through.
PLAIN_ID: Final = re.compile(r"[A-Za-z0-9_-]{1,128}")


class AgoraError(ServiceError):
    """Agora's REST API call failed."""

    status_hint = 502
    code = "agora_error"
    retryable: ClassVar[bool] = False

    def __init__(
        self,
        message: str | None = None,
        *,
        endpoint: str,
        status: int | None = None,
        reason: str | None = None,
        detail: str | None = None,
    ) -> None:
        super().__init__(message)
        self.endpoint, self.status, self.reason, self.agora_detail = (
            endpoint,
            status,
            reason,
            detail,
        )


class AgoraUnavailable(AgoraError):
    """Agora did not answer, or answered 429 or 5xx; worth retrying."""

    retryable = True

    def __init__(self, message: str | None = None, *, retry_after: float | None = None, **kw: Any):
        super().__init__(message, **kw)
        self.retry_after = retry_after


class AgoraRejected(AgoraError):
    """Agora refused the request (4xx other than 429); retrying will not help."""


class AgoraMalformed(AgoraError):
    """Agora answered 2xx with a body we cannot read."""


class AgoraNotConfigured(AgoraError):
    """The app has no REST credentials (customer ID and secret, or App Certificate)."""


class AgoraIdNotPlain(AgoraError):
    """The agent id is not a plain id (1-128 letters, digits, '-' or '_'); nothing was sent."""


def is_plain_id(value: str) -> bool:
    """Whether `value` may become a path segment: 1-128 ASCII letters, digits, `-` or `_`."""
    return PLAIN_ID.fullmatch(value) is not None


def create_http_client(settings: Settings) -> httpx.AsyncClient:
    """The process's one client for Agora: base URL, explicit timeouts, bounded pool."""
    # Our own `agora_request` line logs every attempt with its context; stamina's would repeat it.
    stamina.instrumentation.set_on_retry_hooks([])
    timeout = settings.agora_timeout_s
    return httpx.AsyncClient(
        base_url=settings.agora_api_base_url,
        timeout=httpx.Timeout(timeout, connect=min(timeout, 5.0)),
        limits=httpx.Limits(max_connections=50, max_keepalive_connections=20),
        headers={"Accept": "application/json", "User-Agent": "convoai-ledger"},
    )


class Agora:
    """Agora for every configured app, over one shared `httpx.AsyncClient`."""

    def __init__(
        self,
        http: httpx.AsyncClient,
        settings: Settings,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._http, self._settings, self._clock = http, settings, clock
        self._policy = retries.RetryPolicy.from_settings(settings)

    def for_app(self, app_id: str) -> AgoraClient:
        """The client for `app_id`; raise `AgoraNotConfigured` without credentials."""
        app = self._settings.app(app_id)
        if app is None or not credentials.has_credentials(app):
            raise AgoraNotConfigured(endpoint="none", reason="NotConfigured")
        signer = credentials.Signer(app, clock=self._clock)
        return AgoraClient(self._http, app_id=app.app_id, signer=signer, policy=self._policy)


class AgoraClient:
    """Typed calls for one app. Methods raise `AgoraError`s; retries happen inside each call."""

    def __init__(
        self,
        http: httpx.AsyncClient,
        *,
        app_id: str,
        signer: credentials.Signer,
        policy: retries.RetryPolicy,
    ) -> None:
        self.app_id = app_id
        self._http, self._signer, self._policy = http, signer, policy

    async def query(self, agent_id: str, *, channel: str | None = None) -> replies.AgentStatus:
        path = self._agent_path("query", agent_id)
        body = await self._call("query", path, agent_id=agent_id, channel=channel)
        with _reading("query"):
            return replies.agent_status(body, agent_id=agent_id)

    async def list_agents(
        self,
        *,
        states: Iterable[lifecycle.State] = (lifecycle.State.RUNNING,),
        since: datetime | None = None,
        until: datetime | None = None,
        channel: str | None = None,
        page_size: int = LIST_PAGE_SIZE,
    ) -> list[replies.AgentSummary]:
        """Every agent in any of `states`, across all pages (`meta.cursor` until it is empty).

        One listing per state: Agora's REST reference shows a comma-separated `state=0,1,2`, its
        API definition (and the SDK generated from it) one state per query; one per call works
        under both readings.
        An agent seen in two listings (it changed state in between) is kept once, as last seen.
        Agora's defaults are state RUNNING and a window of the last 2 hours; pass `since` to
        look further back (sessions may last up to 72 hours). Ids are answered as Agora lists
        them, plain or not: callers check `is_plain_id` before acting on one.
        """
        found: dict[str, replies.AgentSummary] = {}
        for state in dict.fromkeys(states):
            params: dict[str, str | int] = {"state": state.code, "limit": page_size}
            if since is not None:
                params["from_time"] = int(since.timestamp())
            if until is not None:
                params["to_time"] = int(until.timestamp())
            if channel is not None:
                params["channel"] = channel
            for summary in await self._list_pages(params, channel=channel):
                found.pop(summary.agent_id, None)
                found[summary.agent_id] = summary
        return list(found.values())

    async def _list_pages(
        self, params: dict[str, str | int], *, channel: str | None
    ) -> list[replies.AgentSummary]:
        found: list[replies.AgentSummary] = []
        seen: set[str] = set()
        for _ in range(MAX_PAGES):
            body = await self._call("list", self._path("agents"), params=params, channel=channel)
            with _reading("list"):
                page = replies.list_page(body)
            found += page.agents
            if page.cursor is None or page.cursor in seen:
                return found
            seen.add(page.cursor)
            params = {**params, "cursor": page.cursor}
        raise AgoraMalformed("list pagination did not end", endpoint="list")

    async def history(self, agent_id: str, *, channel: str | None = None) -> replies.History:
        path = self._agent_path("history", agent_id, "history")
        body = await self._call("history", path, agent_id=agent_id, channel=channel)
        with _reading("history"):
            return replies.history(body, agent_id=agent_id)

    async def turns(
        self, agent_id: str, *, channel: str | None = None, page_size: int = TURNS_PAGE_SIZE
    ) -> replies.Turns:
        """All pages, from `page_index` 1 until `is_last_page` or `total_pages` says so."""
        path = self._agent_path("turns", agent_id, "turns")
        turns: list[events.Turn] = []
        total: int | None = None
        for index in range(1, MAX_PAGES + 1):
            params = {"page_index": index, "page_size": page_size}
            body = await self._call(
                "turns", path, params=params, agent_id=agent_id, channel=channel
            )
            with _reading("turns"):
                page = replies.turns_page(body, index=index)
            turns += page.turns
            total = page.total_turn_count if page.total_turn_count is not None else total
            if page.last:
                return replies.Turns(
                    agent_id=agent_id, total_turn_count=total, turns=tuple(turns), pages=index
                )
        raise AgoraMalformed("turns pagination did not end", endpoint="turns")

    def _path(self, *segments: str) -> str:
        """`v2/projects/{app_id}/{segments…}` (under the base URL), each segment encoded alone."""
        return "/".join(quote(part, safe="") for part in ("v2", "projects", self.app_id, *segments))

    def _agent_path(self, endpoint: Endpoint, agent_id: str, *rest: str) -> str:
        """`…/agents/{agent_id}/{rest…}`; raise `AgoraIdNotPlain`, before any request, for an
        id that is not plain."""
        if not is_plain_id(agent_id):
            raise AgoraIdNotPlain(
                f"{endpoint}: the agent id is not a plain id; nothing was sent",
                endpoint=endpoint,
                reason="AgentIdNotPlain",
            )
        return self._path("agents", agent_id, *rest)

    async def _call(
        self,
        endpoint: Endpoint,
        path: str,
        *,
        params: Mapping[str, str | int] | None = None,
        agent_id: str | None = None,
        channel: str | None = None,
    ) -> dict[str, Any]:
        """GET `path` (from `_path`), retrying `AgoraUnavailable` per the policy."""
        attempts = _Attempts(self._policy, endpoint=endpoint, agent_id=agent_id)
        async for attempt in stamina.retry_context(
            on=attempts.decide,
            # Backstops only: `decide` stops earlier, on the same budget.
            attempts=self._policy.attempts + 1,
            timeout=self._policy.timeout_s * 2,
            wait_initial=self._policy.wait_initial_s,
            wait_max=self._policy.wait_max_s,
        ):
            with attempt:
                return await self._attempt(
                    endpoint,
                    path,
                    params=params,
                    agent_id=agent_id,
                    channel=channel,
                    number=attempt.num,
                )
        raise AssertionError("unreachable: stamina re-raises the last error")

    async def _attempt(
        self,
        endpoint: Endpoint,
        path: str,
        *,
        params: Mapping[str, str | int] | None,
        agent_id: str | None,
        channel: str | None,
        number: int,
    ) -> dict[str, Any]:
        started = time.perf_counter()
        headers = {"Authorization": self._signer.authorization(channel=channel)}
        try:
            response = await self._http.get(path, params=params, headers=headers)
        except httpx.TransportError as exc:
            self._observe(endpoint, "error", time.perf_counter() - started)
            raise AgoraUnavailable(
                f"{endpoint}: {type(exc).__name__}", endpoint=endpoint, detail=type(exc).__name__
            ) from exc
        self._observe(endpoint, str(response.status_code), time.perf_counter() - started)
        if not response.is_success:
            raise error_from_response(endpoint, response)
        log.info(
            "agora_request",
            endpoint=endpoint,
            agent_id=agent_id,
            status=response.status_code,
            attempt=number,
            duration_ms=round((time.perf_counter() - started) * 1000, 1),
        )
        with _reading(endpoint):
            return replies.json_object(response)

    def _observe(self, endpoint: Endpoint, status: str, seconds: float) -> None:
        """One finished HTTP exchange (`status` is the code, or "error" without an answer)."""
        metrics.agora_request(self.app_id, endpoint, status, seconds)


class _Attempts:
    """stamina's `on=` hook for one call: decides, waits and logs after each failure."""

    def __init__(
        self, policy: retries.RetryPolicy, *, endpoint: Endpoint, agent_id: str | None
    ) -> None:
        self.policy, self.endpoint, self.agent_id = policy, endpoint, agent_id
        self.failures = 0
        self.started = time.monotonic()

    def decide(self, error: Exception) -> bool | float:
        if not isinstance(error, AgoraError):
            return False
        self.failures += 1
        delay: float | None = None
        if isinstance(error, AgoraUnavailable):
            delay = self.policy.next_delay(
                failures=self.failures,
                retry_after=error.retry_after,
                elapsed_s=time.monotonic() - self.started,
            )
        emit = log.warning if error.retryable else log.info
        emit(
            "agora_request",
            endpoint=self.endpoint,
            agent_id=self.agent_id,
            status=error.status if error.status is not None else "error",
            reason=error.reason,
            attempt=self.failures,
            next_delay_s=round(delay, 3) if delay is not None else None,
            gave_up=delay is None and error.retryable,
        )
        return delay if delay is not None else False


def error_from_response(endpoint: str, response: httpx.Response) -> AgoraError:
    """The error for a non-2xx answer, reading either of Agora's error bodies."""
    reply = replies.error_reply(response)
    message = f"{endpoint}: HTTP {reply.status}" + (f" {reply.reason}" if reply.reason else "")
    common: dict[str, Any] = {
        "endpoint": endpoint,
        "status": reply.status,
        "reason": reply.reason,
        "detail": reply.detail,
    }
    if reply.status == 429 or reply.status >= 500:
        return AgoraUnavailable(message, retry_after=reply.retry_after, **common)
    return AgoraRejected(message, **common)


@contextlib.contextmanager
def _reading(endpoint: Endpoint) -> Iterator[None]:
    """Make a body `replies` cannot read an `AgoraMalformed` for `endpoint` (not retried)."""
    try:
        yield
    except replies.Unreadable as exc:
        raise AgoraMalformed(f"{endpoint}: {exc}", endpoint=endpoint, status=exc.status) from None
