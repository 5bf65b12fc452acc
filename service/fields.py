"""Reading payload fields leniently (pure): a value is taken where its meaning is plain.

Agora's docs are loose about types and its payloads vary by release, so a field of the wrong type
is not a reason to lose a notification (CONTRACT §3, Hardening). Each reader answers the value in
the type we store, or None when there is no plain meaning, and notes what it left out in a
`Problems` list that the caller stores beside the notification:

- a number where a string is documented becomes that string (`"message": 500` → `"500"`);
- a numeric string where a number is documented becomes the number (`"code": "429"` → 429);
- a fractional number where an integer is documented is truncated;
- a timestamp (seconds, or milliseconds above 10¹²) that is not representable, before 2000 or
  more than a day after the notification was received counts as absent;
- a value out of the range of its column counts as absent.

Envelope fields are strict (`events.parse` refuses a bad envelope); these readers never raise.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any, Final

INT32: Final = 2**31
INT64: Final = 2**63
# Unix seconds below this (2000-01-01) are placeholders such as 111's `start_ts: 1000`.
EARLIEST_S: Final = 946_684_800
# Values at or above this are milliseconds.
MS_THRESHOLD: Final = 1_000_000_000_000
EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
# Beyond any date (year 9999 in milliseconds): the rest is not a time.
_LATEST_MS: Final = 253_402_300_800_000
# A reported time more than this after the notification was received is absurd.
FUTURE_SLACK: Final = timedelta(days=1)
# Longest numeric string read as a number: beyond it, it is not a plain number for our columns.
_MAX_DIGITS: Final = 40


class Problems:
    """What was left out while reading a payload, as short phrases naming the field."""

    __slots__ = ("items",)

    # Enough to say what is wrong without storing a novel for a body of 100,000 bad items.
    LIMIT: Final = 20

    def __init__(self) -> None:
        self.items: list[str] = []

    def add(self, where: str, what: str) -> None:
        if len(self.items) < self.LIMIT:
            self.items.append(f"{where} {what}")
        elif len(self.items) == self.LIMIT:
            self.items.append("and more")

    def summary(self) -> str | None:
        return "; ".join(self.items) if self.items else None


def text(value: object, where: str, problems: Problems, *, max_chars: int | None = None) -> Any:
    """A string; a number becomes its decimal text. None when absent or not plain."""
    if value is None:
        return None
    if isinstance(value, str):
        result = value
    elif isinstance(value, bool) or not isinstance(value, int | float):
        problems.add(where, "is not a string")
        return None
    elif isinstance(value, float) and not math.isfinite(value):
        problems.add(where, "is not a finite number")
        return None
    else:
        result = _number_text(value)
    if max_chars is not None and len(result) > max_chars:
        problems.add(where, f"is longer than {max_chars} characters")
        return None
    return result


def integer(
    value: object, where: str, problems: Problems, *, limit: int | None = INT32
) -> int | None:
    """An integer in [-limit, limit): ints, truncated finite floats and numeric strings."""
    if value is None:
        return None
    number = _as_number(value)
    if number is None:
        problems.add(where, "is not a number")
        return None
    if limit is not None and not -limit <= number < limit:
        problems.add(where, "is out of range")
        return None
    return number


def timestamp(
    value: object, where: str, problems: Problems, *, received_at: datetime
) -> datetime | None:
    """A Unix time in seconds or milliseconds; None (noted) when absurd."""
    if value is None:
        return None
    number = _as_number(value)
    found = None if number is None else from_unix(number, latest=received_at + FUTURE_SLACK)
    if found is None:
        problems.add(where, "is not a plausible time")
    return found


def from_unix(number: int | float, *, latest: datetime | None = None) -> datetime | None:
    """Seconds (or milliseconds, ≥ 10¹²) as aware UTC; None before 2000 or after `latest`."""
    if isinstance(number, bool) or not isinstance(number, int | float):
        return None
    if isinstance(number, float) and not math.isfinite(number):
        return None
    if not EARLIEST_S <= number < _LATEST_MS:
        return None
    micros = int(number) * (1000 if number >= MS_THRESHOLD else 1_000_000)
    try:
        found = EPOCH + timedelta(microseconds=micros)
    except OverflowError:
        return None
    if latest is not None and found > latest:
        return None
    return found


def mapping(value: object, where: str, problems: Problems) -> Mapping[str, Any] | None:
    """An object; anything else is left out (noted)."""
    if value is None or isinstance(value, dict):
        return value
    problems.add(where, "is not an object")
    return None


def sequence(value: object, where: str, problems: Problems) -> list[Any]:
    """An array; anything else reads as empty (noted)."""
    if value is None:
        return []
    if isinstance(value, list):
        return value
    problems.add(where, "is not an array")
    return []


def rebuild(
    value: Any,
    leaf: Callable[[Any], Any],
    *,
    key: Callable[[str], str] | None = None,
    depth: int | None = None,
) -> tuple[Any, bool]:
    """A copy of a decoded JSON value with `leaf` applied to every scalar (and `key` to every
    object key), and every array or object nested deeper than `depth` levels (the value itself
    is level 1) as None; and whether anything was cut so. Iterative: a value nested as deeply as
    a body may be (about a thousand levels) takes no room on the stack. Of keys that `key` makes
    equal, the last one's value stays, as in a dict built from them in order."""
    out: list[Any] = [None]
    cut = False
    # (source, where its copy goes, under which key or index, its level)
    stack: list[tuple[Any, Any, Any, int]] = [(value, out, 0, 1)]
    while stack:
        source, parent, at, level = stack.pop()
        if isinstance(source, dict | list):
            if depth is not None and level > depth:
                parent[at] = None
                cut = True
                continue
            children: list[tuple[Any, Any, Any]]
            if isinstance(source, dict):
                copy: dict[str, Any] = {}
                for k in source:
                    copy[key(k) if key else k] = None  # the keys' order, filled below
                children = [(item, copy, key(k) if key else k) for k, item in source.items()]
                parent[at] = copy
            else:
                items: list[Any] = [None] * len(source)
                children = [(item, items, i) for i, item in enumerate(source)]
                parent[at] = items
            stack.extend((item, into, k, level + 1) for item, into, k in reversed(children))
        else:
            parent[at] = leaf(source)
    return out[0], cut


def finite_number(value: Any) -> Any:
    """A scalar as kept in free-form data: a number too large for a float (decoded as
    infinity) as None, since jsonb holds no infinity; anything else as it is."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def turn_id(value: object, where: str, problems: Problems) -> str | None:
    """A turn id as text: integers and strings alike (`""` is none)."""
    if value == "":
        return None
    found: str | None = text(value, where, problems, max_chars=64)
    return found


def _as_number(value: object) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        return int(value) if math.isfinite(value) else None
    if isinstance(value, str):
        raw = value.strip()
        if not raw or len(raw) > _MAX_DIGITS:
            return None
        try:
            return int(raw)
        except ValueError:
            pass
        try:
            parsed = float(raw)
        except ValueError:
            return None
        return int(parsed) if math.isfinite(parsed) else None
    return None


def _number_text(value: int | float) -> str:
    if isinstance(value, float) and value.is_integer() and abs(value) < 2**53:
        return str(int(value))
    return str(value)
