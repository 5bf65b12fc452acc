"""Which apps a presented token may read: the one question the API's stream and the console ask.

Today a token in `READ_API_TOKENS` sees every configured app and any other token sees nothing.
Scoped tokens (an app's own read tokens, admin tokens) will answer here, so that the stream and
the console follow whatever the read API allows without changes of their own.
"""

from __future__ import annotations

import hmac

from starlette.requests import Request

from service.config import Settings
from service.errors import Unauthorized


def tokens(settings: Settings) -> tuple[str, ...]:
    """Every token that may read (and so log in to the console)."""
    return tuple(str(token) for token in settings.read_api_tokens)


def apps_for(settings: Settings, token: str) -> frozenset[str] | None:
    """The apps `token` may read, or None when it is not a token of this service."""
    candidate = token.encode("utf-8", "replace")
    matched = False
    for known in tokens(settings):
        # No early exit: timing does not tell which token (or how much of one) matched.
        matched |= hmac.compare_digest(known.encode("utf-8"), candidate)
    return frozenset(settings.apps) if matched else None


def bearer_apps(request: Request) -> frozenset[str]:
    """The apps the request's bearer token may read; `Unauthorized` without a valid one."""
    scheme, _, presented = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not presented.strip():
        raise Unauthorized()
    apps = apps_for(request.state.settings, presented.strip())
    if apps is None:
        raise Unauthorized()
    return apps
