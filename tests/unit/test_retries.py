"""The retry policy: waits, `Retry-After`, and when a call gives up (pure)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from service import retries


@pytest.mark.parametrize(
    ("header", "seconds"),
    [
        ("7", 7.0),
        ("Sat, 21 Nov 2026 10:00:30 GMT", 30.0),
        ("Sat, 21 Nov 2026 09:59:00 GMT", 0.0),  # already past
        ("soon", None),
        ("²", None),  # a digit to str.isdigit, not to float()
        ("", None),
        (None, None),
    ],
)
def test_retry_after_takes_seconds_or_an_http_date(
    header: str | None, seconds: float | None
) -> None:
    now = datetime(2026, 11, 21, 10, 0, 0, tzinfo=UTC)
    assert retries.parse_retry_after(header, now=now) == seconds


def test_full_jitter_stays_within_the_exponential_ceiling() -> None:
    policy = retries.RetryPolicy(wait_initial_s=0.5, wait_max_s=10.0)
    for failures, ceiling in [(1, 0.5), (2, 1.0), (3, 2.0), (6, 10.0), (60, 10.0)]:
        waits = [policy.full_jitter(failures) for _ in range(200)]
        assert all(0 <= w <= ceiling for w in waits)
        assert max(waits) > ceiling / 2  # spread over the whole range, not a fixed delay


@pytest.mark.parametrize(
    ("failures", "retry_after", "elapsed_s", "delay"),
    [
        (1, 3.0, 0.0, 3.0),  # Agora's Retry-After is taken as given
        (2, 0.0, 10.0, 0.0),
        (4, 1.0, 0.0, None),  # the last attempt failed: give up
        (1, 61.0, 0.0, None),  # the wait alone outlasts the 60 s budget
        (2, 5.0, 56.0, None),  # the wait would end past the budget
        (3, 5.0, 55.0, 5.0),  # ... and this one just fits
    ],
)
def test_the_next_delay_honours_retry_after_within_attempts_and_budget(
    failures: int, retry_after: float, elapsed_s: float, delay: float | None
) -> None:
    policy = retries.RetryPolicy(attempts=4, timeout_s=60.0)
    assert (
        policy.next_delay(failures=failures, retry_after=retry_after, elapsed_s=elapsed_s) == delay
    )


def test_without_retry_after_the_next_delay_is_full_jitter() -> None:
    policy = retries.RetryPolicy(attempts=10, wait_initial_s=0.5, wait_max_s=10.0)
    waits = [policy.next_delay(failures=3, retry_after=None, elapsed_s=0.0) for _ in range(100)]
    assert all(w is not None and 0 <= w <= 2.0 for w in waits)
