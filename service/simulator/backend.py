"""The simulated Agora: each app's agents and the rules Agora's REST API applies to them.

Pure bookkeeping, no I/O: `api.py` serves it over HTTP, `sessions.py` drives it, and every change
an NCS notification would report is handed to `notify` (the sender in `ncs.py`). All methods run
on one event loop, so no locking is needed.

Rules, from Agora's docs (`shared/reference/agora-convoai.md` §3, §4):
- `/join` refuses a name already used by a live agent (409 `TaskConflict`) and, when the app
  already has `pcu_cap` live agents, answers 422 `ConcurrencyLimitExceeded`.
- `/leave`, query, history and turns of an unknown agent answer 404 `TaskNotFound`; `/leave` of a
  stopped one too ("not found or has exited").
- list: `state` defaults to 2 (RUNNING), `from_time`/`to_time` (Unix seconds, on the start time)
  to the last 2 hours, `limit` to 20; `cursor` is the agent_id the page starts at, and
  `meta.cursor` is empty on the last page. Agora's reference shows `state` comma-separated, its API
  definition says one state per query: both are accepted, unless `single_state_list` refuses a
  list (400) as the stricter reading would. Pages are ordered by (start time, agent_id) and a
  cursor whose agent has since left the listing resumes where that agent would be.
- history answers only while the agent is RUNNING (`keep_history_after_stop` lifts that).
- turns: `page_index` from 1, `page_size` 10-200 (default 50); `pagination.is_last_page`.
"""

from __future__ import annotations

import math
import random
import secrets
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Literal

from service import lifecycle

SimEndpoint = Literal["join", "leave", "query", "list", "history", "turns"]
ENDPOINTS: Final[tuple[SimEndpoint, ...]] = ("join", "leave", "query", "list", "history", "turns")

LIST_WINDOW_S: Final = 7200
LIST_LIMIT: Final = 20
TURNS_PAGE_SIZE: Final = 50
TURNS_PAGE_SIZE_RANGE: Final = (10, 200)
LIVE: Final = frozenset({"STARTING", "RUNNING", "RECOVERING", "STOPPING"})

# The default end of a session: left, then history, then turns.
END_EVENTS: Final = (102, 103, 112)


class SimError(Exception):
    """An error answer: HTTP `status` with Agora's `reason` and `detail`."""

    def __init__(self, status: int, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.status, self.reason, self.detail = status, reason, detail


@dataclass(frozen=True, slots=True, kw_only=True)
class SimApp:
    """One Agora project as the simulator knows it."""

    app_id: str
    webhook_secret: str
    customer_id: str | None = None
    customer_secret: str | None = None
    certificate: str | None = None
    pcu_cap: int = 20


@dataclass(slots=True, kw_only=True)
class SimAgent:
    agent_id: str
    app_id: str
    name: str
    channel: str
    labels: dict[str, str]
    start_ts: int
    state: str = "RUNNING"
    stop_ts: int | None = None
    message: str | None = None
    contents: list[dict[str, Any]] = field(default_factory=list)
    turns: list[dict[str, Any]] = field(default_factory=list)

    def payload(self, **extra: Any) -> dict[str, Any]:
        """The fields every ConvoAI notification payload carries."""
        body: dict[str, Any] = {
            "agent_id": self.agent_id,
            "name": self.name,
            "channel": self.channel,
            "start_ts": self.start_ts,
        }
        if self.labels:
            body["labels"] = dict(self.labels)
        return {**body, **extra}


@dataclass(frozen=True, slots=True, kw_only=True)
class Outgoing:
    """A notification to send: `ncs.Sender` signs and delivers it."""

    app_id: str
    agent_id: str
    event_type: int
    payload: Mapping[str, Any]


@dataclass(frozen=True, slots=True, kw_only=True)
class Call:
    """One REST request as answered (for assertions and benchmarks)."""

    endpoint: SimEndpoint
    agent_id: str | None
    status: int
    at: float


@dataclass(slots=True)
class Fault:
    """Statuses to answer (consumed in order) once `after` more requests were answered normally,
    and latency added to every request."""

    statuses: deque[int] = field(default_factory=deque)
    retry_after: str | None = "1"
    latency_s: float = 0.0
    after: int = 0


# Notifications of one agent, in the order they happen; a batch may be shuffled by the sender.
Notify = Callable[[Sequence[Outgoing]], None]


class Backend:
    def __init__(
        self,
        apps: Sequence[SimApp],
        *,
        notify: Notify | None = None,
        clock: Callable[[], float] = time.time,
        keep_history_after_stop: bool = False,
        send_history_webhook: bool = True,
        legacy_errors: bool = False,
        single_state_list: bool = False,
        latency_s: float = 0.0,
        seed: int | None = None,
    ) -> None:
        self.apps = {app.app_id: app for app in apps}
        self.notify = notify
        self.clock = clock
        self.keep_history_after_stop = keep_history_after_stop
        self.send_history_webhook = send_history_webhook
        self.legacy_errors = legacy_errors
        self.single_state_list = single_state_list
        self.latency_s = latency_s
        self.agents: dict[str, SimAgent] = {}
        self.calls: list[Call] = []
        # Every request target received (raw path and query), routed or not: see `api._Recorder`.
        self.requests: list[str] = []
        self.faults: dict[SimEndpoint, Fault] = {e: Fault() for e in ENDPOINTS}
        self.rng = random.Random(seed)

    # Fault injection and the call log -------------------------------------------------------

    def inject(
        self,
        endpoint: SimEndpoint,
        statuses: Sequence[int] = (),
        *,
        retry_after: str | None = "1",
        latency_s: float | None = None,
        after: int = 0,
    ) -> None:
        """Answer `statuses` to the requests of `endpoint` that follow the next `after` ones;
        `latency_s` on all of them."""
        fault = self.faults[endpoint]
        fault.statuses.extend(statuses)
        fault.retry_after = retry_after
        fault.after = after
        if latency_s is not None:
            fault.latency_s = latency_s

    def record(self, endpoint: SimEndpoint, agent_id: str | None, status: int) -> None:
        self.calls.append(
            Call(endpoint=endpoint, agent_id=agent_id, status=status, at=self.clock())
        )

    def count(self, endpoint: SimEndpoint, agent_id: str | None = None) -> int:
        return sum(
            1
            for call in self.calls
            if call.endpoint == endpoint and (agent_id is None or call.agent_id == agent_id)
        )

    # Lifecycle --------------------------------------------------------------------------------

    def join(
        self,
        app_id: str,
        *,
        name: str,
        channel: str,
        labels: Mapping[str, str] | None = None,
        agent_id: str | None = None,
    ) -> SimAgent:
        """Start an agent (what `/join` does); raise `SimError` as Agora would.

        `agent_id` pins the id Agora would generate (tests that made the agent up first, or
        that need an id Agora would never make, to see what the service does with it)."""
        app = self._app(app_id)
        live = [a for a in self.agents.values() if a.app_id == app_id and a.state in LIVE]
        if any(a.name == name for a in live):
            raise SimError(409, "TaskConflict", f"agent with name {name!r} already exists")
        if len(live) >= app.pcu_cap:
            raise SimError(
                422,
                "ConcurrencyLimitExceeded",
                f"too many concurrent requests, exceeding the quota limit ({app.pcu_cap})",
            )
        agent = SimAgent(
            agent_id=agent_id or secrets.token_hex(16).upper(),
            app_id=app.app_id,
            name=name,
            channel=channel,
            labels=dict(labels or {}),
            start_ts=int(self.clock()),
        )
        self.agents[agent.agent_id] = agent
        self._send(agent, [(101, agent.payload())])
        return agent

    def talk(
        self, agent_id: str, *, user: str, assistant: str, error: bool = False, quiet: bool = False
    ) -> None:
        """One turn of conversation: transcript lines, a turn record, 111 (and 110 if `error`);
        `quiet` records the turn without notifications."""
        agent = self._live(agent_id)
        now_ms = int(self.clock() * 1000)
        turn_id = len(agent.turns) + 1
        agent.contents += [
            {"role": "user", "content": user},
            {"role": "assistant", "content": assistant},
        ]
        figures = {
            "asr_ttlw": self.rng.randint(250, 500),
            "llm_ttfb": self.rng.randint(400, 900),
            "llm_ttfs": self.rng.randint(600, 1200),
            "tts_ttfb": self.rng.randint(80, 200),
        }
        agent.turns.append(_turn(agent, turn_id, figures, end_ms=now_ms))
        events: list[tuple[int, dict[str, Any]]] = [
            (111, agent.payload(metrics=[{"turn_id": turn_id, **figures}]))
        ]
        if error:
            failure = {
                "module": "tts",
                "turn_id": turn_id,
                "code": 429,
                "message": "vendor rate limited",
            }
            events.append((110, agent.payload(turn_id=turn_id, errors=[failure])))
        if not quiet:
            self._send(agent, events)

    def stop(
        self,
        agent_id: str,
        *,
        status: Literal["STOPPED", "FAILED"] = "STOPPED",
        message: str = "OK",
        notify: Sequence[int] | None = None,
    ) -> SimAgent:
        """End the session and send its end-of-session notifications (`notify`, default 102,
        103 unless history webhooks are off, 112), in that order unless the sender shuffles."""
        agent = self._live(agent_id)
        agent.state, agent.stop_ts, agent.message = status, int(self.clock()), message
        if notify is None:
            notify = [e for e in END_EVENTS if e != 103 or self.send_history_webhook]
        self._send(agent, [(event, self._end_payload(agent, event)) for event in notify])
        return agent

    def _end_payload(self, agent: SimAgent, event: int) -> dict[str, Any]:
        if event == 102:
            return agent.payload(stop_ts=agent.stop_ts, status=agent.state, message=agent.message)
        if event == 103:
            return agent.payload(stop_ts=agent.stop_ts, contents=list(agent.contents))
        if event == 112:
            return agent.payload(
                stop_ts=agent.stop_ts,
                total_turn_count=len(agent.turns),
                is_truncated=len(agent.turns) > 200,
                turns=agent.turns[:200],
            )
        raise ValueError(f"event {event} is not an end-of-session notification")

    def _send(self, agent: SimAgent, events: Sequence[tuple[int, dict[str, Any]]]) -> None:
        if self.notify is not None and events:
            self.notify(
                [
                    Outgoing(app_id=agent.app_id, agent_id=agent.agent_id, event_type=e, payload=p)
                    for e, p in events
                ]
            )

    # REST reads -------------------------------------------------------------------------------

    def leave(self, app_id: str, agent_id: str) -> dict[str, Any]:
        agent = self._agent(app_id, agent_id)
        if agent.state not in LIVE:
            raise SimError(404, "TaskNotFound", "agent not found or has exited")
        self.stop(agent_id)
        return {}

    def query(self, app_id: str, agent_id: str) -> dict[str, Any]:
        agent = self._agent(app_id, agent_id)
        return {
            "message": agent.message or "",
            "start_ts": agent.start_ts,
            "stop_ts": agent.stop_ts or 0,
            "name": agent.name,
            "status": agent.state,
            "agent_id": agent.agent_id,
        }

    def list_agents(self, app_id: str, params: Mapping[str, str]) -> dict[str, Any]:
        self._app(app_id)
        now = int(self.clock())
        states = _states(params.get("state", "2"), single=self.single_state_list)
        since = _integer(params, "from_time", now - LIST_WINDOW_S)
        until = _integer(params, "to_time", now)
        limit = _integer(params, "limit", LIST_LIMIT)
        if limit < 1:
            raise SimError(400, "InvalidFieldValue", "limit must be at least 1")
        matching = self._matching(app_id, states, since, until, params.get("channel"))
        start = 0
        cursor = params.get("cursor")
        if cursor:
            at = self.agents.get(cursor)
            if at is None or at.app_id != app_id:
                raise SimError(400, "InvalidFieldValue", "cursor does not match any agent")
            key = (at.start_ts, at.agent_id)
            start = next(
                (i for i, a in enumerate(matching) if (a.start_ts, a.agent_id) >= key),
                len(matching),
            )
        page = matching[start : start + limit]
        following = matching[start + limit : start + limit + 1]
        return {
            "data": {
                "count": len(page),
                "list": [
                    {"start_ts": a.start_ts, "status": a.state, "agent_id": a.agent_id}
                    for a in page
                ],
            },
            "meta": {"cursor": following[0].agent_id if following else "", "total": len(matching)},
            "status": "ok",
        }

    def _matching(
        self, app_id: str, states: set[int], since: int, until: int, channel: str | None
    ) -> list[SimAgent]:
        """The list's matches in page order: by start time, then agent_id."""
        return sorted(
            (
                a
                for a in self.agents.values()
                if a.app_id == app_id
                and lifecycle.State(a.state).code in states
                and since <= a.start_ts <= until
                and (channel is None or a.channel == channel)
            ),
            key=lambda a: (a.start_ts, a.agent_id),
        )

    def history(self, app_id: str, agent_id: str) -> dict[str, Any]:
        agent = self._agent(app_id, agent_id)
        if agent.state != "RUNNING" and not self.keep_history_after_stop:
            raise SimError(404, "TaskNotFound", "agent not found or has exited")
        return {
            "agent_id": agent.agent_id,
            "start_ts": agent.start_ts,
            "status": agent.state,
            "contents": list(agent.contents),
        }

    def turns(self, app_id: str, agent_id: str, params: Mapping[str, str]) -> dict[str, Any]:
        agent = self._agent(app_id, agent_id)
        index = _integer(params, "page_index", 1)
        size = _integer(params, "page_size", TURNS_PAGE_SIZE)
        low, high = TURNS_PAGE_SIZE_RANGE
        if index < 1 or not low <= size <= high:
            raise SimError(
                400, "InvalidFieldValue", f"page_index must be >= 1 and page_size {low}-{high}"
            )
        total_pages = max(1, math.ceil(len(agent.turns) / size))
        return {
            "agent_id": agent.agent_id,
            "name": agent.name,
            "channel": agent.channel,
            "total_turn_count": len(agent.turns),
            "pagination": {
                "page_index": index,
                "total_pages": total_pages,
                "is_last_page": index >= total_pages,
            },
            "turns": [_rest_turn(t) for t in agent.turns[(index - 1) * size : index * size]],
        }

    def _app(self, app_id: str) -> SimApp:
        app = self.apps.get(app_id)
        if app is None:
            raise SimError(403, "ServiceNotEnabled", "the project has not enabled this service")
        return app

    def _agent(self, app_id: str, agent_id: str) -> SimAgent:
        self._app(app_id)
        agent = self.agents.get(agent_id)
        if agent is None or agent.app_id != app_id:
            raise SimError(404, "TaskNotFound", "agent not found or has exited")
        return agent

    def _live(self, agent_id: str) -> SimAgent:
        agent = self.agents[agent_id]
        if agent.state not in LIVE:
            raise SimError(404, "TaskNotFound", "agent not found or has exited")
        return agent


def _turn(
    agent: SimAgent, turn_id: int, figures: Mapping[str, int], *, end_ms: int
) -> dict[str, Any]:
    """A turn as event 112 carries it (2.5 s of user speech, then the answer)."""
    return {
        "agent_id": agent.agent_id,
        "channel": agent.channel,
        "turn_id": turn_id,
        "start": {
            "start_at": end_ms - 2500,
            "type": "voice_input",
            "metadata": {"speech_duration_ms": 1800, "interrupt_duration_ms": 160},
        },
        "end": {"end_at": end_ms, "type": "ok"},
        "metrics": {
            "e2e_latency_ms": sum(figures.values()) // 2,
            "segmented_latency_ms": {
                "asr_ttlw": figures["asr_ttlw"],
                "llm_ttft": figures["llm_ttfb"],
                "tts_ttfb": figures["tts_ttfb"],
            },
        },
    }


def _rest_turn(turn: Mapping[str, Any]) -> dict[str, Any]:
    """/turns lists segmented latencies as [{name, latency}] where 112 uses an object."""
    metrics = dict(turn.get("metrics", {}))
    segments = metrics.get("segmented_latency_ms", {})
    metrics["segmented_latency_ms"] = [{"name": k, "latency": v} for k, v in segments.items()]
    return {**turn, "metrics": metrics}


def _states(raw: str, *, single: bool) -> set[int]:
    if single and "," in raw:
        raise SimError(400, "InvalidFieldValue", "state takes one value per query")
    try:
        return {int(part) for part in raw.split(",") if part.strip()}
    except ValueError:
        raise SimError(400, "InvalidFieldValue", "state must be comma-separated integers") from None


def _integer(params: Mapping[str, str], key: str, default: int) -> int:
    raw = params.get(key)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise SimError(400, "InvalidFieldValue", f"{key} must be an integer") from None
