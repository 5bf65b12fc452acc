"""Simulated ConvoAI sessions: agents start at a steady rate, talk, and stop.

Each session joins (101; a 422 when the app is at its PCU cap is counted, not retried), has a few
turns spread over its life (111 per turn, now and then a 110), and ends (102, 103, 112): most stop
normally ("OK"), some idle out, a few fail ("RTC connection error"). Lengths vary ±50 % around
`duration_s`.
"""

from __future__ import annotations

import asyncio
import random
from dataclasses import dataclass
from typing import Final

import structlog

from service.simulator.backend import Backend, SimError

log = structlog.get_logger(__name__)

LINES: Final = (
    ("My router keeps dropping Wi-Fi.", "Let's restart it first. Is the power light green?"),
    ("It is blinking orange.", "That means it lost the line. Is the grey cable plugged in?"),
    ("I'd like to change my delivery address.", "Sure, what is the new address?"),
    ("Can I get a refund for last month?", "I can help with that. What was the order number?"),
    ("What time do you open tomorrow?", "We open at nine in the morning."),
    ("Is my appointment still on Friday?", "Yes, Friday at ten thirty."),
    ("The app shows an error when I pay.", "Which error code do you see on the screen?"),
    ("Thanks, that fixed it.", "Glad to hear it! Anything else I can do?"),
)


@dataclass(slots=True)
class Summary:
    started: int = 0
    rejected: int = 0
    stopped: int = 0
    failed: int = 0


async def run(
    backend: Backend,
    *,
    app_id: str,
    agents: int,
    rate: float,
    duration_s: float,
    stop: asyncio.Event,
    seed: int | None = None,
) -> Summary:
    """Start `agents` sessions at `rate` per second and wait for all of them to end."""
    rng = random.Random(seed)
    summary = Summary()
    tasks: list[asyncio.Task[None]] = []
    for number in range(agents):
        if stop.is_set():
            break
        length = duration_s * rng.uniform(0.5, 1.5)
        tasks.append(
            asyncio.create_task(
                _session(
                    backend,
                    app_id=app_id,
                    number=number,
                    length=length,
                    rng=rng,
                    stop=stop,
                    summary=summary,
                )
            )
        )
        await _sleep(1 / rate, stop)
    await asyncio.gather(*tasks)
    return summary


async def _session(
    backend: Backend,
    *,
    app_id: str,
    number: int,
    length: float,
    rng: random.Random,
    stop: asyncio.Event,
    summary: Summary,
) -> None:
    try:
        agent = backend.join(
            app_id,
            name=f"sim-agent-{number}",
            channel=f"sim-channel-{number}",
            labels={"source": "simulator", "session": str(number)},
        )
    except SimError as error:
        summary.rejected += 1
        log.info("simulated_join_refused", reason=error.reason, status=error.status)
        return
    summary.started += 1
    turns = rng.randint(2, 8)
    for turn in range(turns):
        if await _sleep(length / (turns + 1), stop):
            break
        user, assistant = LINES[(number + turn) % len(LINES)]
        backend.talk(agent.agent_id, user=user, assistant=assistant, error=rng.random() < 0.05)
    await _sleep(length / (turns + 1), stop)
    roll = rng.random()
    if roll < 0.03:
        backend.stop(agent.agent_id, status="FAILED", message="RTC connection error")
        summary.failed += 1
    else:
        backend.stop(agent.agent_id, message="OK" if roll < 0.9 else "Idle for too long")
        summary.stopped += 1


async def _sleep(seconds: float, stop: asyncio.Event) -> bool:
    """Sleep, or return early (True) when `stop` is set."""
    try:
        await asyncio.wait_for(stop.wait(), timeout=seconds)
    except TimeoutError:
        return False
    return True
