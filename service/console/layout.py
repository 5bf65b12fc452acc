"""The console's Jinja2 environment, its filters, and the headers every console answer carries.

Autoescaping is on for every template: agent names, labels, transcripts and payloads are
untrusted and never marked safe. The Content-Security-Policy lets a page load scripts, styles,
images and connections from this origin only, and run no inline script: pages hand data to
`static/console.js` through `data-` attributes.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any, Final
from urllib.parse import quote, urlencode

import jinja2
from starlette.responses import HTMLResponse, Response

from service import __version__

CSP: Final = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; font-src 'self'; object-src 'none'; base-uri 'none'; "
    "form-action 'self'; frame-ancestors 'none'"
)
HEADERS: Final = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}


@functools.cache
def environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("service.console", "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(segment=segment, when=when, clock=clock, duration=duration, ms=ms)
    env.globals.update(version=__version__, query=query)
    return env


def render(template: str, context: Mapping[str, Any], *, status: int = 200) -> Response:
    html = environment().get_template(template).render(context)
    return HTMLResponse(html, status_code=status, headers=HEADERS)


def fragment(template: str, context: Mapping[str, Any]) -> Response:
    """Part of a page (the live parts fetch these): same headers, no layout."""
    return render(template, context)


def segment(value: object) -> str:
    """`value` as one URL path segment (every reserved character encoded)."""
    return quote(str(value), safe="")


def query(pairs: Iterable[tuple[str, object]] | Mapping[str, object]) -> str:
    """A query string (with its `?`, or empty) from pairs; None values are left out."""
    items = pairs.items() if isinstance(pairs, Mapping) else pairs
    kept = [(key, str(value)) for key, value in items if value is not None]
    return "?" + urlencode(kept) if kept else ""


def _parse(value: object) -> datetime | None:
    if isinstance(value, datetime):
        return value.astimezone(UTC)
    if isinstance(value, str) and value:
        try:
            return datetime.fromisoformat(value).astimezone(UTC)
        except ValueError:
            return None
    return None


def when(value: object) -> str:
    """`2026-11-28 07:10:03 UTC`; an em dash when there is no time."""
    at = _parse(value)
    return at.strftime("%Y-%m-%d %H:%M:%S UTC") if at is not None else "—"


def clock(value: object) -> str:
    """`07:10:03.250`: the time of day, to the millisecond (timelines)."""
    at = _parse(value)
    return at.strftime("%H:%M:%S.%f")[:-3] if at is not None else "—"


def duration(seconds: float | None) -> str:
    """`2 h 05 min`, `3 min 20 s`, `42 s`; an em dash for None."""
    if seconds is None:
        return "—"
    whole = max(int(seconds), 0)
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours} h {minutes:02d} min"
    if minutes:
        return f"{minutes} min {secs:02d} s"
    return f"{secs} s"


def ms(value: object) -> str:
    """`850 ms`, `1,390 ms` (one unit, so a column compares at a glance); an em dash when not
    a number."""
    if not isinstance(value, int | float) or isinstance(value, bool):
        return "—"
    return f"{value:,.0f} ms"
