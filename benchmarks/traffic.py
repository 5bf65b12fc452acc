"""What the ingest benchmark sends: realistic ConvoAI sessions over several apps, as NCS signs them.

`Sessions` is an endless, deterministic stream of notifications. Agent k (of app k mod len(apps))
sends its notifications of `kinds` at stream times k, k + gap, k + 2·gap, ..., so that about
`in_flight` agents are in flight at once: each time step carries the start of a new agent, the
middle events of earlier ones and the end of one that started a session ago, as on a busy app
(never one agent's notifications back to back). `take(count, rate=...)` answers the next `count`
notifications, their times (`start_ts`, `stop_ts` as whole seconds, turn times in ms) set to when
they will be sent at `rate` per second from now, so the PCU edges fall in the current minutes;
`put_back` returns the ones a run did not send, to go first next time.

The bodies are NCS's envelope (`noticeId` unique per app, `productId` 17, `notifyMs`) around the
payloads of Agora's documentation: labels, names, channels, error items, metrics for a few turns,
112's turns with segmented latency, 103's short transcript. Nothing here imports the service, so
the benchmark keeps working whatever the service's internals become.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import random
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

MIX = (101, 111, 110, 112, 102, 103)
PAIRS = (101, 102)
TURNS = 3


@dataclass(frozen=True, slots=True)
class App:
    app_id: str
    secret: str


@dataclass(frozen=True, slots=True)
class Notification:
    app_id: str
    agent_id: str
    notice_id: str
    event_type: int
    body: bytes


def headers(body: bytes, secret: str) -> dict[str, str]:
    """NCS's headers: both signatures (hex HMAC-SHA256 and HMAC-SHA1 of the raw body)."""
    key = secret.encode()
    return {
        "Content-Type": "application/json",
        "Agora-Signature-V2": hmac.new(key, body, hashlib.sha256).hexdigest(),
        "Agora-Signature": hmac.new(key, body, hashlib.sha1).hexdigest(),
    }


@dataclass(slots=True)
class _Agent:
    index: int
    app: App
    agent_id: str
    start_ts: int = 0
    stop_ts: int | None = None
    rng: random.Random = field(default_factory=random.Random)


class Sessions:
    """The stream; `take` continues where the previous `take` stopped."""

    def __init__(
        self, *, apps: Sequence[App], kinds: Sequence[int], in_flight: int, prefix: str
    ) -> None:
        self.apps, self.kinds, self.prefix = list(apps), tuple(kinds), prefix
        self.gap = max(1, in_flight // max(1, len(self.kinds) - 1))
        self._agents: dict[int, _Agent] = {}
        self._steps = self._walk()
        self._returned: deque[Notification] = deque()

    def take(self, count: int, *, rate: float) -> list[Notification]:
        """The next `count` notifications, timed as if sent at `rate` per second from now
        (those put back keep their times)."""
        out = [self._returned.popleft() for _ in range(min(count, len(self._returned)))]
        began = time.time()
        for i in range(count - len(out)):
            agent, event_type = next(self._steps)
            out.append(self._notification(agent, event_type, at=began + i / rate))
        return out

    def put_back(self, unsent: Sequence[Notification]) -> None:
        self._returned.extendleft(reversed(unsent))

    def _walk(self) -> Iterator[tuple[_Agent, int]]:
        step = 0
        while True:
            for position, event_type in enumerate(self.kinds):
                index = step - position * self.gap
                if index >= 0:
                    yield self._agent(index, last=position == len(self.kinds) - 1), event_type
            step += 1

    def _agent(self, index: int, *, last: bool) -> _Agent:
        agent = self._agents.get(index) or self._new_agent(index)
        if last:
            del self._agents[index]
        return agent

    def _new_agent(self, index: int) -> _Agent:
        agent_id = f"{self.prefix}{index:0{max(8, 26 - len(self.prefix))}d}"
        app = self.apps[index % len(self.apps)]
        agent = _Agent(index, app, agent_id, rng=random.Random(f"{self.prefix}/{index}"))
        self._agents[index] = agent
        return agent

    def _notification(self, agent: _Agent, event_type: int, *, at: float) -> Notification:
        if not agent.start_ts:
            agent.start_ts = int(at)
        notice_id = f"{self.prefix}:{agent.index}:{event_type}"
        payload = _PAYLOADS[event_type](agent, at)
        document = {
            "noticeId": notice_id,
            "productId": 17,
            "eventType": event_type,
            "notifyMs": int(at * 1000),
            "sid": f"sid-{agent.agent_id}",
            "payload": payload,
        }
        body = json.dumps(document, separators=(",", ":")).encode()
        return Notification(agent.app.app_id, agent.agent_id, notice_id, event_type, body)


def _common(agent: _Agent) -> dict[str, Any]:
    return {
        "agent_id": agent.agent_id,
        "name": f"support-{agent.index:x}",
        "start_ts": agent.start_ts,
        "channel": f"sess-{agent.index}",
    }


def _labels(agent: _Agent) -> dict[str, str]:
    return {"tenant": agent.app.app_id, "session_ref": f"S-{agent.index}"}


def _stop_ts(agent: _Agent, at: float) -> int:
    if agent.stop_ts is None:  # the first of 112, 102, 103 to be sent fixes the end
        agent.stop_ts = max(agent.start_ts, int(at))
    return agent.stop_ts


def _joined(agent: _Agent, at: float) -> dict[str, Any]:
    return {**_common(agent), "labels": _labels(agent)}


def _metrics(agent: _Agent, at: float) -> dict[str, Any]:
    rng = agent.rng
    turns = [
        {"turn_id": turn, "asr_ttlw": rng.randint(250, 600), "llm_ttfb": rng.randint(400, 900),
         "llm_ttfs": rng.randint(600, 1200), "tts_ttfb": rng.randint(80, 200)}
        for turn in range(1, TURNS + 1)
    ]  # fmt: skip
    return {**_common(agent), "metrics": turns, "labels": _labels(agent)}


def _error(agent: _Agent, at: float) -> dict[str, Any]:
    errors = [
        {"module": "tts", "turn_id": 2, "code": 429, "message": "vendor rate limited"},
        {"module": "llm", "turn_id": 2, "code": 504, "message": "upstream timeout"},
    ]
    return {**_common(agent), "turn_id": 2, "errors": errors, "labels": _labels(agent)}


def _turns(agent: _Agent, at: float) -> dict[str, Any]:
    stop_ts = _stop_ts(agent, at)
    begin_ms = agent.start_ts * 1000
    turns = [_turn(agent, turn, begin_ms + (turn - 1) * 4000) for turn in range(1, TURNS + 1)]
    return {
        **_common(agent),
        "stop_ts": stop_ts,
        "total_turn_count": TURNS,
        "is_truncated": False,
        "labels": _labels(agent),
        "turns": turns,
    }


def _turn(agent: _Agent, turn: int, start_at: int) -> dict[str, Any]:
    rng = agent.rng
    start: dict[str, Any] = {"start_at": start_at, "type": "greeting"}
    if turn > 1:
        start = {"start_at": start_at, "type": "voice_input",
                 "metadata": {"speech_duration_ms": rng.randint(800, 3000),
                              "interrupt_duration_ms": 0}}  # fmt: skip
    segmented = {"algorithm_processing": rng.randint(80, 160), "asr_ttlw": rng.randint(250, 600),
                 "llm_ttft": rng.randint(300, 800), "llm_ftfs": rng.randint(100, 300),
                 "tts_ttfb": rng.randint(80, 200), "transport": rng.randint(30, 90)}  # fmt: skip
    return {
        "agent_id": agent.agent_id,
        "channel": f"sess-{agent.index}",
        "turn_id": turn,
        "start": start,
        "end": {"end_at": start_at + rng.randint(1500, 3500), "type": "ok"},
        "metrics": {"e2e_latency_ms": sum(segmented.values()), "segmented_latency_ms": segmented},
    }


def _left(agent: _Agent, at: float) -> dict[str, Any]:
    idle = agent.rng.random() < 0.3
    return {
        **_common(agent),
        "stop_ts": _stop_ts(agent, at),
        "status": "STOPPED",
        "message": "Idle for too long" if idle else "OK",
        "labels": _labels(agent),
    }


def _history(agent: _Agent, at: float) -> dict[str, Any]:
    contents = [
        {"role": "assistant", "content": "Hi, this is support. How can I help?"},
        {"role": "user", "content": f"My order {agent.index} has not arrived yet."},
        {"role": "assistant", "content": "Let me check that order for you. One moment."},
        {"role": "user", "content": "Thanks, it was due on Monday."},
        {"role": "assistant", "content": "It ships today; you will get a tracking link."},
    ]
    return {
        **_common(agent),
        "stop_ts": _stop_ts(agent, at),
        "contents": contents,
        "labels": _labels(agent),
    }


_PAYLOADS: dict[int, Callable[[_Agent, float], dict[str, Any]]] = {
    101: _joined,
    111: _metrics,
    110: _error,
    112: _turns,
    102: _left,
    103: _history,
}
