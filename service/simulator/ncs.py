"""The NCS sender: Agora's webhook deliveries, signed, retried and (on request) misbehaving.

Each notification is built with `events.build` and signed with `signatures.sign` (both
`Agora-Signature-V2` and `Agora-Signature`). Delivery follows Agora's documented behaviour: a
non-200 answer or no answer within 10 seconds is a failure; NCS resends immediately, then with
growing gaps, and gives up after three retries (four attempts). `noticeId` stays the same across
retries; `notifyMs` is the send time of each attempt.

The notifications of one agent are sent one after the other (each after the previous one's first
attempt), so the service sees them in order unless retries reorder them, as with the real NCS.
`shuffle` sends each end-of-session batch (102, 103, 112) in random order, `duplicates` sends a
second copy of a delivered notification with probability P (Agora's "redundant" notifications),
`drop` never sends one with probability P (a lost webhook, for reconciliation to find), and
`lose` never sends those it answers True for (lost webhooks a test chooses, e.g. every 101 of
some agents).
"""

from __future__ import annotations

import asyncio
import itertools
import random
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Final, Literal
from urllib.parse import urlsplit

import httpx
import structlog

from service import events, signatures
from service.simulator.backend import Outgoing

log = structlog.get_logger(__name__)

# Agora does not publish its retry intervals; "immediately, then growing gaps", three retries.
RETRY_GAPS_S: Final = (0.0, 1.0, 3.0)
TIMEOUT_S: Final = 10.0


@dataclass(frozen=True, slots=True, kw_only=True)
class DeliveryPolicy:
    retry_gaps_s: tuple[float, ...] = RETRY_GAPS_S
    timeout_s: float = TIMEOUT_S
    shuffle: bool = False
    duplicates: float = 0.0
    drop: float = 0.0
    lose: Callable[[Outgoing], bool] | None = None


@dataclass(slots=True, kw_only=True)
class Attempt:
    at: float
    status: int | None  # None: no answer (timeout or connection failure)


@dataclass(slots=True, kw_only=True)
class Delivery:
    notice_id: str
    app_id: str
    agent_id: str
    event_type: int
    outcome: Literal["pending", "delivered", "failed", "dropped"] = "pending"
    attempts: list[Attempt] = field(default_factory=list)
    copies: int = 1


class Sender:
    def __init__(
        self,
        target: str,
        secrets: Mapping[str, str],
        *,
        policy: DeliveryPolicy | None = None,
        seed: int | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.target = target.rstrip("/")
        self.secrets = dict(secrets)
        self.policy = policy or DeliveryPolicy()
        self.deliveries: list[Delivery] = []
        self._rng = random.Random(seed)
        self._clock = clock
        self._prefix = self._rng.randrange(10**9, 10**10)
        self._numbers = itertools.count(1)
        self._tails: dict[str, asyncio.Future[None]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._http = httpx.AsyncClient(
            timeout=httpx.Timeout(self.policy.timeout_s),
            limits=httpx.Limits(max_connections=32),
        )

    def url_for(self, app_id: str) -> str:
        """The service's webhook URL for `app_id` (a target given with its path is used as is)."""
        if urlsplit(self.target).path.rstrip("/") not in ("", "/"):
            return self.target
        return f"{self.target}/v1/webhooks/agora/{app_id}"

    def submit(self, batch: Sequence[Outgoing]) -> None:
        """Schedule the delivery of one agent's notifications (the backend's `notify`)."""
        batch = list(batch)
        if self.policy.shuffle and len(batch) > 1:
            self._rng.shuffle(batch)
        loop = asyncio.get_running_loop()
        for outgoing in batch:
            delivery = Delivery(
                notice_id=f"{self._prefix}:{next(self._numbers)}:{outgoing.event_type}",
                app_id=outgoing.app_id,
                agent_id=outgoing.agent_id,
                event_type=outgoing.event_type,
            )
            self.deliveries.append(delivery)
            lost = self.policy.lose is not None and self.policy.lose(outgoing)
            if lost or self._rng.random() < self.policy.drop:
                delivery.outcome = "dropped"
                continue
            after = self._tails.get(outgoing.agent_id)
            ready: asyncio.Future[None] = loop.create_future()
            self._tails[outgoing.agent_id] = ready
            task = asyncio.create_task(self._deliver(delivery, outgoing, after=after, ready=ready))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def drain(self, timeout: float | None = None) -> None:
        """Wait until every scheduled delivery has succeeded or given up."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while self._tasks:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            await asyncio.wait(set(self._tasks), timeout=left)
            if deadline is not None and time.monotonic() >= deadline:
                return

    async def aclose(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._http.aclose()

    def stats(self) -> dict[str, int]:
        counts = {"delivered": 0, "failed": 0, "dropped": 0, "pending": 0, "duplicates": 0}
        for delivery in self.deliveries:
            counts[delivery.outcome] += 1
            counts["duplicates"] += delivery.copies - 1
        return counts

    async def _deliver(
        self,
        delivery: Delivery,
        outgoing: Outgoing,
        *,
        after: asyncio.Future[None] | None,
        ready: asyncio.Future[None],
    ) -> None:
        try:
            if after is not None:
                await asyncio.shield(after)
            for number, gap in enumerate((0.0, *self.policy.retry_gaps_s)):
                if number > 0 and gap > 0:
                    await asyncio.sleep(gap)
                status = await self._post(delivery, outgoing)
                if not ready.done():
                    ready.set_result(None)
                if status == 200:
                    delivery.outcome = "delivered"
                    if self._rng.random() < self.policy.duplicates:
                        delivery.copies += 1
                        await self._post(delivery, outgoing)
                    return
            delivery.outcome = "failed"
            log.warning(
                "ncs_delivery_gave_up",
                notice_id=delivery.notice_id,
                agent_id=delivery.agent_id,
                event_type=delivery.event_type,
                attempts=len(delivery.attempts),
            )
        finally:
            if not ready.done():
                ready.set_result(None)

    async def _post(self, delivery: Delivery, outgoing: Outgoing) -> int | None:
        body = events.build(
            outgoing.event_type,
            outgoing.payload,
            notice_id=delivery.notice_id,
            notify_ms=int(self._clock() * 1000),
        )
        headers = {
            "Content-Type": "application/json",
            **signatures.sign(body, self.secrets[outgoing.app_id]),
        }
        status: int | None
        try:
            response = await self._http.post(
                self.url_for(outgoing.app_id), content=body, headers=headers
            )
            status = response.status_code
        except httpx.HTTPError:
            status = None
        delivery.attempts.append(Attempt(at=time.monotonic(), status=status))
        return status
