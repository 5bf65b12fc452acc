"""Which apps a presented token may read, for the stream and the console: `access`'s answer.

`access` decides for every kind of token (read, admin, an app's own); the console checks a
session's token against every configured one, so it also needs them all (`tokens`).
"""

from __future__ import annotations

from starlette.requests import Request

from service import access
from service.config import Settings


def tokens(settings: Settings) -> tuple[str, ...]:
    """Every token that may read (and so log in to the console)."""
    scoped = (str(t) for app in settings.apps.values() for t in app.read_tokens)
    everywhere = (str(t) for t in (*settings.read_api_tokens, *settings.admin_api_tokens))
    return (*everywhere, *scoped)


def apps_for(settings: Settings, token: str) -> frozenset[str] | None:
    """The apps `token` may read, or None when it is not a token of this service."""
    grant = access.grant_for(settings, token)
    return grant.app_ids if grant is not None else None


def bearer_apps(request: Request) -> frozenset[str]:
    """The apps the request's bearer token may read; `Unauthorized` without a valid one."""
    return access.require(request).app_ids
