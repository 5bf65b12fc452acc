"""Agora's ConvoAI REST API as typed calls: query, list (all pages), history, turns (all pages).

One `httpx.AsyncClient` per process (`create_http_client`), built with the base URL and explicit
timeouts; `Agora(http, settings).for_app(app_id)` answers an `AgoraClient` that signs each request
for that app: `Authorization: agora token=…` (an AccessToken2 minted per call) when the app has an
App Certificate, else HTTP Basic with its customer ID and secret.

    AgoraError                   base: `endpoint`, `status` (None: no answer), `reason`, `detail`
    ├── AgoraUnavailable         retryable: transport errors and timeouts, 429, 5xx
    ├── AgoraRejected            final: any other 4xx (404: "not found or has exited")
    ├── AgoraMalformed           final: a 2xx whose body we cannot read
    └── AgoraNotConfigured       final: the app has no REST credentials

Both error bodies Agora has used are read: `{"detail", "reason"}` (API v2.7+) and the older
`{"message", "statusCode", "taskId"}`. Only `AgoraUnavailable` is retried, inside each call, with
exponential backoff and full jitter, bounded by `AGORA_RETRY_ATTEMPTS` and `AGORA_RETRY_TIMEOUT_S`;
a `Retry-After` answer sets the next wait instead (or ends the call when it would outlast the
budget). Every attempt is one `agora_request` log line with endpoint, status, attempt and the next
delay; `_observe` is where call counts and durations by endpoint and status are taken.
"""

from __future__ import annotations

import base64
import contextlib
import random
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any, ClassVar, Final, Literal

import httpx
import stamina
import structlog

from service import accesstoken, events, lifecycle, metrics
from service.config import AppSettings, Settings
from service.errors import MalformedEvent, ServiceError

log = structlog.get_logger(__name__)

Endpoint = Literal["join", "leave", "query", "list", "history", "turns"]

# Agora's page-size bounds: list `limit` is free (default 20); turns `page_size` is 10-200.
LIST_PAGE_SIZE: Final = 100
TURNS_PAGE_SIZE: Final = 200
# A safety stop for pagination loops against a misbehaving server.
MAX_PAGES: Final = 10_000
# Minted REST tokens live this long; each call mints its own.
TOKEN_EXPIRE_S: Final = 600


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


@dataclass(frozen=True, slots=True, kw_only=True)
class RetryPolicy:
    attempts: int = 6
    timeout_s: float = 60.0
    wait_initial_s: float = 0.5
    wait_max_s: float = 10.0

    @classmethod
    def from_settings(cls, settings: Settings) -> RetryPolicy:
        return cls(
            attempts=settings.agora_retry_attempts,
            timeout_s=settings.agora_retry_timeout_s,
            wait_initial_s=settings.agora_retry_wait_initial_s,
            wait_max_s=settings.agora_retry_wait_max_s,
        )

    def full_jitter(self, failures: int) -> float:
        """Seconds to wait after the `failures`-th failure: uniform in [0, min(max, initial·2ⁿ⁻¹)]."""
        ceiling = min(self.wait_max_s, self.wait_initial_s * 2 ** min(failures - 1, 32))
        return random.uniform(0, ceiling)


@dataclass(frozen=True, slots=True, kw_only=True)
class AgentStatus:
    """`GET …/agents/{id}` (query): works for exited agents too."""

    agent_id: str
    name: str | None
    status: str
    state: lifecycle.State | None  # None when Agora answers a status we do not know
    started_at: datetime | None
    stopped_at: datetime | None
    message: str | None


@dataclass(frozen=True, slots=True, kw_only=True)
class AgentSummary:
    """One item of `GET …/agents` (list): no name, channel or labels."""

    agent_id: str
    status: str
    state: lifecycle.State | None
    started_at: datetime | None


@dataclass(frozen=True, slots=True, kw_only=True)
class History:
    """`GET …/agents/{id}/history`: the transcript Agora holds (documented for running agents)."""

    agent_id: str
    status: str
    started_at: datetime | None
    contents: tuple[Mapping[str, Any], ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class Turns:
    """Every page of `GET …/agents/{id}/turns` (sessions of the last 7 days)."""

    agent_id: str
    total_turn_count: int | None
    turns: tuple[events.Turn, ...]
    pages: int


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
        self._policy = RetryPolicy.from_settings(settings)

    def for_app(self, app_id: str) -> AgoraClient:
        """The client for `app_id`; raise `AgoraNotConfigured` without credentials."""
        app = self._settings.app(app_id)
        if app is None or (app.app_certificate is None and app.customer_secret is None):
            raise AgoraNotConfigured(endpoint="none", reason="NotConfigured")
        return AgoraClient(self._http, app, policy=self._policy, clock=self._clock)


class AgoraClient:
    """Typed calls for one app. Methods raise `AgoraError`s; retries happen inside each call."""

    def __init__(
        self,
        http: httpx.AsyncClient,
        app: AppSettings,
        *,
        policy: RetryPolicy,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.app_id = app.app_id
        self._http, self._app, self._policy, self._clock = http, app, policy, clock
        self._basic: str | None = None
        if app.customer_id is not None and app.customer_secret is not None:
            pair = f"{app.customer_id}:{app.customer_secret}".encode()
            self._basic = "Basic " + base64.b64encode(pair).decode("ascii")

    async def query(self, agent_id: str, *, channel: str | None = None) -> AgentStatus:
        body = await self._call("query", f"agents/{agent_id}", agent_id=agent_id, channel=channel)
        status = _text(body, "status", "query") or ""
        return AgentStatus(
            agent_id=_text(body, "agent_id", "query") or agent_id,
            name=_text(body, "name", "query"),
            status=status,
            state=_state(status),
            started_at=events.timestamp(body.get("start_ts")),
            stopped_at=events.timestamp(body.get("stop_ts")),
            message=_text(body, "message", "query"),
        )

    async def list_agents(
        self,
        *,
        states: Iterable[lifecycle.State] = (lifecycle.State.RUNNING,),
        since: datetime | None = None,
        until: datetime | None = None,
        channel: str | None = None,
        page_size: int = LIST_PAGE_SIZE,
    ) -> list[AgentSummary]:
        """Every agent in any of `states`, across all pages (`meta.cursor` until it is empty).

        One listing per state: Agora's REST reference shows a comma-separated `state=0,1,2`, its
        API definition (and the SDK generated from it) one state per query; one per call works
        under both readings.
        An agent seen in two listings (it changed state in between) is kept once, as last seen.
        Agora's defaults are state RUNNING and a window of the last 2 hours; pass `since` to
        look further back (sessions may last up to 72 hours).
        """
        found: dict[str, AgentSummary] = {}
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
    ) -> list[AgentSummary]:
        found: list[AgentSummary] = []
        seen: set[str] = set()
        for _ in range(MAX_PAGES):
            body = await self._call("list", "agents", params=params, channel=channel)
            data = _object(body, "data", "list")
            found += [_summary(item) for item in _array(data, "list", "list")]
            cursor = _text(_object(body, "meta", "list"), "cursor", "list")
            if not cursor or cursor in seen:
                return found
            seen.add(cursor)
            params = {**params, "cursor": cursor}
        raise AgoraMalformed("list pagination did not end", endpoint="list")

    async def history(self, agent_id: str, *, channel: str | None = None) -> History:
        body = await self._call(
            "history", f"agents/{agent_id}/history", agent_id=agent_id, channel=channel
        )
        contents = _array(body, "contents", "history")
        if not all(isinstance(item, dict) for item in contents):
            raise AgoraMalformed("history contents must be objects", endpoint="history")
        return History(
            agent_id=_text(body, "agent_id", "history") or agent_id,
            status=_text(body, "status", "history") or "",
            started_at=events.timestamp(body.get("start_ts")),
            contents=tuple(contents),
        )

    async def turns(
        self, agent_id: str, *, channel: str | None = None, page_size: int = TURNS_PAGE_SIZE
    ) -> Turns:
        """All pages, from `page_index` 1 until `is_last_page` or `total_pages` says so."""
        turns: list[events.Turn] = []
        total: int | None = None
        for index in range(1, MAX_PAGES + 1):
            body = await self._call(
                "turns",
                f"agents/{agent_id}/turns",
                params={"page_index": index, "page_size": page_size},
                agent_id=agent_id,
                channel=channel,
            )
            items = _array(body, "turns", "turns")
            try:
                turns += [events.parse_turn(t, f"turns[{i}]") for i, t in enumerate(items)]
            except MalformedEvent as exc:
                raise AgoraMalformed(str(exc), endpoint="turns") from None
            count = body.get("total_turn_count")
            total = count if isinstance(count, int) and not isinstance(count, bool) else total
            if _last_page(_object(body, "pagination", "turns"), index) or not items:
                return Turns(
                    agent_id=agent_id, total_turn_count=total, turns=tuple(turns), pages=index
                )
        raise AgoraMalformed("turns pagination did not end", endpoint="turns")

    async def _call(
        self,
        endpoint: Endpoint,
        path: str,
        *,
        params: Mapping[str, str | int] | None = None,
        agent_id: str | None = None,
        channel: str | None = None,
    ) -> dict[str, Any]:
        """GET `path` under the app's project, retrying `AgoraUnavailable` per the policy."""
        url = f"v2/projects/{self.app_id}/{path}"
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
                    url,
                    params=params,
                    agent_id=agent_id,
                    channel=channel,
                    number=attempt.num,
                )
        raise AssertionError("unreachable: stamina re-raises the last error")

    async def _attempt(
        self,
        endpoint: Endpoint,
        url: str,
        *,
        params: Mapping[str, str | int] | None,
        agent_id: str | None,
        channel: str | None,
        number: int,
    ) -> dict[str, Any]:
        started = time.perf_counter()
        headers = {"Authorization": self._authorization(channel)}
        try:
            response = await self._http.get(url, params=params, headers=headers)
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
        return _json_object(response, endpoint)

    def _authorization(self, channel: str | None) -> str:
        if self._app.app_certificate is not None:
            token = accesstoken.convoai(
                app_id=self.app_id,
                certificate=str(self._app.app_certificate),
                channel=channel or "",
                account="0",  # any uid, as the official SDK signs calls made outside a session
                issued_at=int(self._clock()),
                expire_s=TOKEN_EXPIRE_S,
            )
            return f"agora token={token}"
        if self._basic is None:
            raise AgoraNotConfigured(endpoint="none", reason="NotConfigured")
        return self._basic

    def _observe(self, endpoint: Endpoint, status: str, seconds: float) -> None:
        """One finished HTTP exchange (`status` is the code, or "error" without an answer)."""
        metrics.agora_request(endpoint, status, seconds)


class _Attempts:
    """stamina's `on=` hook for one call: decides, waits and logs after each failure."""

    def __init__(self, policy: RetryPolicy, *, endpoint: Endpoint, agent_id: str | None) -> None:
        self.policy, self.endpoint, self.agent_id = policy, endpoint, agent_id
        self.failures = 0
        self.started = time.monotonic()

    def decide(self, error: Exception) -> bool | float:
        if not isinstance(error, AgoraError):
            return False
        self.failures += 1
        delay: float | None = None
        if isinstance(error, AgoraUnavailable) and self.failures < self.policy.attempts:
            wanted = error.retry_after
            delay = wanted if wanted is not None else self.policy.full_jitter(self.failures)
            if time.monotonic() - self.started + delay > self.policy.timeout_s:
                delay = None  # the wait would outlast the call's budget
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
    status = response.status_code
    body: Any = None
    with contextlib.suppress(ValueError):
        body = response.json()
    reason = detail = None
    if isinstance(body, dict):
        reason = _first_text(body, "reason", "statusCode")
        detail = _first_text(body, "detail", "message")
    message = f"{endpoint}: HTTP {status}" + (f" {reason}" if reason else "")
    common: dict[str, Any] = {
        "endpoint": endpoint,
        "status": status,
        "reason": reason,
        "detail": detail,
    }
    if status == 429 or status >= 500:
        retry_after = parse_retry_after(response.headers.get("Retry-After"))
        return AgoraUnavailable(message, retry_after=retry_after, **common)
    return AgoraRejected(message, **common)


def parse_retry_after(value: str | None, *, now: datetime | None = None) -> float | None:
    """Seconds from a `Retry-After` header (delta-seconds or an HTTP date); None if absent/bad."""
    if value is None or not value.strip():
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - (now or datetime.now(UTC))).total_seconds())


def _json_object(response: httpx.Response, endpoint: str) -> dict[str, Any]:
    if not response.content:
        return {}  # leave answers 200 with an empty body
    try:
        body = response.json()
    except ValueError:
        raise AgoraMalformed(
            f"{endpoint}: body is not JSON", endpoint=endpoint, status=response.status_code
        ) from None
    if not isinstance(body, dict):
        raise AgoraMalformed(
            f"{endpoint}: body is not an object", endpoint=endpoint, status=response.status_code
        )
    return body


def _summary(item: object) -> AgentSummary:
    if not isinstance(item, dict) or not isinstance(item.get("agent_id"), str):
        raise AgoraMalformed("list items must be objects with an agent_id", endpoint="list")
    status = item.get("status") if isinstance(item.get("status"), str) else ""
    return AgentSummary(
        agent_id=item["agent_id"],
        status=str(status),
        state=_state(str(status)),
        started_at=events.timestamp(item.get("start_ts")),
    )


def _last_page(pagination: Mapping[str, Any], index: int) -> bool:
    if pagination.get("is_last_page") is True:
        return True
    total = pagination.get("total_pages")
    return not isinstance(total, int) or index >= total


def _state(status: str) -> lifecycle.State | None:
    try:
        return lifecycle.State(status.strip().upper())
    except ValueError:
        return None


def _text(body: Mapping[str, Any], key: str, endpoint: str) -> str | None:
    value = body.get(key)
    if value is None:
        return None
    if not isinstance(value, str):
        raise AgoraMalformed(f"{endpoint}: {key} must be a string", endpoint=endpoint)
    return value


def _first_text(body: Mapping[str, Any], *keys: str) -> str | None:
    for key in keys:
        value = body.get(key)
        if isinstance(value, str | int) and not isinstance(value, bool) and str(value):
            return str(value)
    return None


def _object(body: Mapping[str, Any], key: str, endpoint: str) -> Mapping[str, Any]:
    value = body.get(key, {})
    if not isinstance(value, dict):
        raise AgoraMalformed(f"{endpoint}: {key} must be an object", endpoint=endpoint)
    return value


def _array(body: Mapping[str, Any], key: str, endpoint: str) -> list[Any]:
    value = body.get(key, [])
    if not isinstance(value, list):
        raise AgoraMalformed(f"{endpoint}: {key} must be an array", endpoint=endpoint)
    return value
