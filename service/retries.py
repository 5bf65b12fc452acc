"""When to try an Agora call again, and how long to wait first: the retry policy (pure).

The stamina README's rules, with Agora's `Retry-After` added: only a retryable failure is tried
again; the wait after the n-th failure is full jitter, uniform in [0, min(max, initial·2ⁿ⁻¹)],
unless Agora named a wait in `Retry-After`, which is taken as given; attempts are bounded by
`AGORA_RETRY_ATTEMPTS` and the whole call by `AGORA_RETRY_TIMEOUT_S`, so a wait that would
outlast that budget ends the call instead. What counts as retryable, the logging and the
waiting itself are the client's (`agora.py`).
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime

from service.config import Settings


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

    def next_delay(
        self, *, failures: int, retry_after: float | None, elapsed_s: float
    ) -> float | None:
        """Seconds to wait before trying a retryable failure again; None to give up.

        `failures` counts this one; `elapsed_s` is the time the call has taken so far.
        """
        if failures >= self.attempts:
            return None
        delay = retry_after if retry_after is not None else self.full_jitter(failures)
        if elapsed_s + delay > self.timeout_s:
            return None  # the wait would outlast the call's budget
        return delay


def parse_retry_after(value: str | None, *, now: datetime | None = None) -> float | None:
    """Seconds from a `Retry-After` header (delta-seconds or an HTTP date); None if absent/bad."""
    if value is None or not value.strip():
        return None
    value = value.strip()
    if value.isascii() and value.isdigit():  # not "²": str.isdigit takes any Unicode digit
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - (now or datetime.now(UTC))).total_seconds())
