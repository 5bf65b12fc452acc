"""Who may read what: the one answer to "which apps may this request see", from its bearer token.

Three kinds of token (CONTRACT §2, §8):

    READ_API_TOKENS          every configured app
    ADMIN_API_TOKENS         every configured app, and may erase histories
    an app's `read_tokens`   that app only (LEDGER_APPS_FILE)

A token listed in several places gets the union of what each place grants (a token in two apps'
`read_tokens` sees both; a token that is also an admin token is an admin).

How every route module uses it (the read API, the insight routes, the stream, the console):

- `grant = access.require(request)` first, before any parameter is read: 401 `unauthorized`
  unless the request carries a configured token (`grant_for(settings, token)` is the same for a
  token from elsewhere, such as the console's session cookie);
- `grant.app_ids` is what the token may see. About any other app, answer exactly as about an app
  that does not exist: `grant.require_app(app_id)` raises the same 404 `not_found`; lists, counts
  and the stream filter on `grant.app_ids` (never on `settings.apps`);
- `await access.agent_key(conn, grant, agent_id=…, app_id=…)` resolves `/v1/agents/{agent_id}…`:
  the 409 `ambiguous_agent` names only apps the token sees, so a scoped token never learns that
  another app holds the same agent_id;
- `access.require_admin(request)` for erasure: 401 as above, then 403 `forbidden` for any
  non-admin token, before anything is looked up (a read token learns nothing from it);
- `grant.who` names the token for logs by its place (`admin_token=2`, `read_token=1`,
  `app_token=<app_id>#1`), never by its value.

Tokens are compared in constant time: the SHA-256 of the presented token against the SHA-256 of
every configured token with `hmac.compare_digest`, all of them, with no early exit, so neither
the timing nor the length of a token tells which one (or how much of one) matched.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterator
from dataclasses import dataclass

from sqlalchemy.ext.asyncio import AsyncConnection
from starlette.requests import Request

from service import queries
from service.config import Settings
from service.errors import AmbiguousAgent, Forbidden, NotFound, Unauthorized


@dataclass(frozen=True, slots=True, kw_only=True)
class Grant:
    """What one bearer token may do: see `app_ids`; erase histories if `admin`."""

    app_ids: frozenset[str]
    admin: bool
    who: str  # the token's place in the configuration, for logs; never the token

    @property
    def apps(self) -> list[str]:
        """`app_ids` sorted, for SQL filters and stable answers."""
        return sorted(self.app_ids)

    def sees(self, app_id: str) -> bool:
        return app_id in self.app_ids

    def require_app(self, app_id: str) -> str:
        """`app_id` if the token may see it; else 404 `not_found`, as for an unknown app."""
        if app_id not in self.app_ids:
            raise NotFound()
        return app_id


@dataclass(frozen=True, slots=True, kw_only=True)
class _Entry:
    digest: bytes
    who: str
    app_id: str | None  # None: every configured app
    admin: bool


def require(request: Request) -> Grant:
    """The grant of the request's `Authorization: Bearer` token; 401 `unauthorized` without one."""
    scheme, _, presented = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not presented.strip():
        raise Unauthorized()
    grant = grant_for(request.state.settings, presented.strip())
    if grant is None:
        raise Unauthorized()
    return grant


def require_admin(request: Request) -> Grant:
    """As `require`, then 403 `forbidden` unless the token is one of `ADMIN_API_TOKENS`."""
    grant = require(request)
    if not grant.admin:
        raise Forbidden()
    return grant


def grant_for(settings: Settings, token: str) -> Grant | None:
    """What `token` may do under `settings`, or None if it is not a configured token."""
    candidate = _digest(token)
    matched = [entry for entry in _entries(settings) if _same(entry.digest, candidate)]
    if not matched:
        return None
    configured = frozenset(settings.apps)
    apps = frozenset(
        app_id
        for entry in matched
        for app_id in (configured if entry.app_id is None else {entry.app_id})
    )
    admins = [entry for entry in matched if entry.admin]
    return Grant(
        app_ids=apps & configured,
        admin=bool(admins),
        who=(admins or matched)[0].who,
    )


async def agent_key(
    conn: AsyncConnection, grant: Grant, *, agent_id: str, app_id: str | None
) -> tuple[str, str]:
    """`(app_id, agent_id)` of the agent a `/v1/agents/{agent_id}…` path names.

    With `app_id` (the query parameter): that app, 404 if the token does not see it. Without: the
    one app, among those the token sees, that holds the id; 404 if none, 409 `ambiguous_agent`
    (naming only apps the token sees) if several. Whether the agent exists in the named app is
    left to the caller's query. An id PostgreSQL cannot hold (a NUL, an unpaired surrogate) names
    no stored agent: 404 without a query.
    """
    if not _storable(agent_id):
        raise NotFound()
    if app_id is not None:
        return grant.require_app(app_id), agent_id
    apps = await queries.agent_apps(conn, agent_id, app_ids=grant.apps)
    if not apps:
        raise NotFound()
    if len(apps) > 1:
        raise AmbiguousAgent(apps)
    return apps[0], agent_id


def _entries(settings: Settings) -> Iterator[_Entry]:
    for position, token in enumerate(settings.read_api_tokens, start=1):
        yield _Entry(
            digest=_digest(str(token)), who=f"read_token={position}", app_id=None, admin=False
        )
    for position, token in enumerate(settings.admin_api_tokens, start=1):
        yield _Entry(
            digest=_digest(str(token)), who=f"admin_token={position}", app_id=None, admin=True
        )
    for app_id, app in sorted(settings.apps.items()):
        for position, token in enumerate(app.read_tokens, start=1):
            yield _Entry(
                digest=_digest(str(token)),
                who=f"app_token={app_id}#{position}",
                app_id=app_id,
                admin=False,
            )


def _storable(text: str) -> bool:
    if "\x00" in text:
        return False
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).digest()


def _same(configured: bytes, candidate: bytes) -> bool:
    # Both are 32-byte digests: compare_digest takes the same time whatever they hold.
    return hmac.compare_digest(configured, candidate)
