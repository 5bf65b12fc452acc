"""Signed session cookies and CSRF tokens for the console (pure: no I/O, `now` passed in).

A session cookie holds no token: only a fingerprint of the token that logged in (an HMAC of it
under the session key), when it was issued, when it expires and the session's CSRF token, signed
with HMAC-SHA256 under `CONSOLE_SESSION_KEY`. Each request maps the fingerprint back to a token
that is still configured, so removing a token from the configuration ends its sessions, and
changing the key ends them all. Every MAC is domain-separated by a label, so one can never stand
for another.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import secrets
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final

LIFETIME_S: Final = 12 * 3600
COOKIE: Final = "ledger_console"
LOGIN_COOKIE: Final = "ledger_login"  # the login form's CSRF secret, set with the form
LOGIN_LIFETIME_S: Final = 3600
MAX_COOKIE_CHARS: Final = 1024


@dataclass(frozen=True, slots=True, kw_only=True)
class Session:
    fingerprint: str
    issued_at: int  # Unix seconds
    expires_at: int
    csrf: str  # sent back by the logout form


def _mac(key: str, label: str, value: str) -> str:
    message = f"{label}\x00{value}".encode()
    return hmac.new(key.encode(), message, hashlib.sha256).hexdigest()


def fingerprint(key: str, token: str) -> str:
    return _mac(key, "token", token)


def match(key: str, session: Session, tokens: Iterable[str]) -> str | None:
    """The configured token this session was opened with, or None if it is gone."""
    found: str | None = None
    for token in tokens:
        # No early exit: every token is compared, whichever matches.
        if same(fingerprint(key, token), session.fingerprint):
            found = token
    return found


def issue(key: str, token: str, *, now: int) -> Session:
    return Session(
        fingerprint=fingerprint(key, token),
        issued_at=now,
        expires_at=now + LIFETIME_S,
        csrf=secrets.token_urlsafe(24),
    )


def seal(key: str, session: Session) -> str:
    """The cookie value: the session as base64url JSON, a dot, and its signature."""
    body = json.dumps(
        {
            "f": session.fingerprint,
            "i": session.issued_at,
            "e": session.expires_at,
            "c": session.csrf,
        },
        separators=(",", ":"),
    )
    encoded = base64.urlsafe_b64encode(body.encode()).decode().rstrip("=")
    return f"{encoded}.{_mac(key, 'session', encoded)}"


def unseal(key: str, cookie: str, *, now: int) -> Session | None:
    """The session in a cookie if its signature holds and it has not expired, else None."""
    encoded, _, signature = cookie.partition(".")
    if len(cookie) > MAX_COOKIE_CHARS or not same(_mac(key, "session", encoded), signature):
        return None
    try:
        fields = json.loads(base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4)))
        session = Session(
            fingerprint=str(fields["f"]),
            issued_at=int(fields["i"]),
            expires_at=int(fields["e"]),
            csrf=str(fields["c"]),
        )
    except (binascii.Error, ValueError, TypeError, KeyError):
        return None
    return session if session.issued_at <= now < session.expires_at else None


def login_secret() -> str:
    return secrets.token_urlsafe(24)


def login_csrf(key: str, secret: str) -> str:
    """The login form's hidden field for the secret in its cookie: only we can make it."""
    return _mac(key, "login", secret)


def same(expected: str, presented: str | None) -> bool:
    """Constant-time equality of two strings (any characters)."""
    if presented is None:
        return False
    return hmac.compare_digest(expected.encode("utf-8"), presented.encode("utf-8", "replace"))
