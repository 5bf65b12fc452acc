"""Demo-like data for the browser tests: a day of sessions in the simulator, sent as signed
webhooks in event-time order.

The simulator (`service.simulator.backend`) plays Agora on a clock we move: sessions last 10-50
minutes and arrive most often about nine hours before now, so concurrency rises towards the cap
(20; Agora refuses joins beyond it) and falls again, whatever the time of day; a few fail. Most sessions send only 101 and
102; one recent session tells its whole story (metrics, an error, transcript and turns), and a few
are still live.
"""

from __future__ import annotations

import contextlib
import heapq
import math
import random
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import httpx

from service.simulator import backend as sim
from service.simulator import sessions
from tests.factories import APP_ID, SECRET, deliver

DAY_S = 86_400
STORY_NAME = "support-bot-renewals"
LIVE_AGENTS = 6


@dataclass(slots=True)
class Seeded:
    story_agent_id: str = ""
    story_lines: list[str] = field(default_factory=list)
    sent: int = 0


@dataclass(order=True, slots=True)
class _Step:
    at: float
    order: int
    run: Callable[[], None] = field(compare=False)


def seed(url: str, *, now: float, seed: int = 7) -> Seeded:
    """Play a day up to `now` and post every notification to the service at `url`."""
    clock = _Clock(now - DAY_S)
    outgoing: list[tuple[float, sim.Outgoing]] = []
    backend = sim.Backend(
        [sim.SimApp(app_id=APP_ID, webhook_secret=SECRET, pcu_cap=20)],
        notify=lambda batch: outgoing.extend((clock.now, item) for item in batch),
        clock=clock,
        seed=seed,
    )
    rng = random.Random(seed)
    seeded = Seeded()
    steps = _day(backend, rng, now=now) + _story(backend, now=now, seeded=seeded)
    steps += _live(backend, rng, now=now)
    heapq.heapify(steps)
    while steps:
        step = heapq.heappop(steps)
        clock.now = step.at
        step.run()
    seeded.sent = _post(url, outgoing)
    return seeded


class _Clock:
    def __init__(self, start: float) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now


def _day(backend: sim.Backend, rng: random.Random, *, now: float) -> list[_Step]:
    """Sessions over the last day, busiest about nine hours ago, quiet in the last two."""
    steps: list[_Step] = []
    at = now - DAY_S
    number = 0
    while at < now - 3600:
        hours_ago = (now - at) / 3600
        per_minute = 0.06 + 0.5 * max(0.0, math.sin((hours_ago - 2) / 14 * math.pi))
        at += rng.expovariate(per_minute) * 60
        length = rng.uniform(600, 3000)
        number += 1
        steps += _session(backend, rng, number=number, start=at, length=length, order=len(steps))
    return steps


def _session(
    backend: sim.Backend,
    rng: random.Random,
    *,
    number: int,
    start: float,
    length: float,
    order: int,
) -> list[_Step]:
    name = f"agent-{number:04d}"
    holder: list[str] = []

    def join() -> None:
        try:
            agent = backend.join(
                APP_ID,
                name=name,
                channel=f"room-{number:04d}",
                labels={"tenant": rng.choice(["acme", "globex", "initech"]), "queue": "support"},
            )
        except sim.SimError:
            return  # at the cap: Agora refused it
        holder.append(agent.agent_id)

    def stop() -> None:
        if holder:
            failed = rng.random() < 0.04
            backend.stop(
                holder[0],
                status="FAILED" if failed else "STOPPED",
                message="RTC connection error" if failed else "OK",
                notify=[102],
            )

    return [_Step(start, order, join), _Step(start + length, order + 1, stop)]


def _story(backend: sim.Backend, *, now: float, seeded: Seeded) -> list[_Step]:
    """One session that ended ten minutes ago, with everything Agora reports about it."""
    start, holder = now - 1500, []
    lines = sessions.LINES[:6]

    def join() -> None:
        agent = backend.join(
            APP_ID,
            name=STORY_NAME,
            channel="room-renewals-5531",
            labels={"tenant": "acme", "campaign": "renewals"},
        )
        holder.append(agent.agent_id)
        seeded.story_agent_id = agent.agent_id

    def talk(index: int) -> Callable[[], None]:
        user, assistant = lines[index]
        return lambda: backend.talk(holder[0], user=user, assistant=assistant, error=index == 3)

    steps = [_Step(start, -3, join)]
    steps += [_Step(start + 60 + 140 * i, -2, talk(i)) for i in range(len(lines))]
    steps.append(_Step(now - 600, -1, lambda: backend.stop(holder[0], message="OK")))
    seeded.story_lines = [line for pair in lines for line in pair]
    return steps


def _live(backend: sim.Backend, rng: random.Random, *, now: float) -> list[_Step]:
    """Sessions started in the last half hour and still going."""
    steps = []
    for i in range(LIVE_AGENTS):
        name = f"live-{i:02d}"

        def join(name: str = name, i: int = i) -> None:
            labels = {"tenant": "acme", "queue": "sales"}
            with contextlib.suppress(sim.SimError):  # at the cap: refused, as Agora would
                backend.join(APP_ID, name=name, channel=f"room-live-{i:02d}", labels=labels)

        steps.append(_Step(now - rng.uniform(60, 1800), 10_000 + i, join))
    return steps


def _post(url: str, outgoing: Sequence[tuple[float, sim.Outgoing]]) -> int:
    """Send each notification, signed, stamped with the time it happened; four at a time."""

    def send(item: tuple[float, sim.Outgoing]) -> None:
        at, note = item
        delivery = deliver(note.event_type, dict(note.payload), notify_ms=int(at * 1000))
        response = client.post(
            f"/v1/webhooks/agora/{note.app_id}", content=delivery.body, headers=delivery.headers
        )
        assert response.status_code == 200, response.text

    with (
        httpx.Client(base_url=url, timeout=30) as client,
        ThreadPoolExecutor(max_workers=4) as pool,
    ):
        list(pool.map(send, outgoing))
    return len(outgoing)
