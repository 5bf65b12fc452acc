"""REST credentials: which apps have them, and the `Authorization` header each call carries.

An app calls Agora's REST API with its App Certificate (Agora's preferred mode: every call
carries an AccessToken2 minted for it, `agora token=…`, scoped to the App ID) or else with its
customer ID and secret (HTTP Basic). An app with neither cannot call at all: reconciliation and
history fetching are off for it, which the worker says once at start (`missing`, `VARIABLES`).
Values never leave this module but in the header; messages name variables, never values.
"""

from __future__ import annotations

import base64
import time
from collections.abc import Callable
from typing import Final

from service import accesstoken
from service.config import AppSettings, Settings

# What to set to give an app REST credentials (names only).
VARIABLES: Final = (
    "AGORA_CUSTOMER_ID and AGORA_CUSTOMER_SECRET, or AGORA_APP_CERTIFICATE"
    " (customer_id and customer_secret, or app_certificate, for an app in LEDGER_APPS_FILE)"
)
# Minted REST tokens live this long; each call mints its own.
TOKEN_EXPIRE_S: Final = 600


def has_credentials(app: AppSettings) -> bool:
    """Whether the app can call Agora: an App Certificate, or a customer ID and secret."""
    return app.app_certificate is not None or (
        app.customer_id is not None and app.customer_secret is not None
    )


def missing(settings: Settings) -> list[str]:
    """The configured apps without REST credentials, sorted."""
    return sorted(app.app_id for app in settings.apps.values() if not has_credentials(app))


class Signer:
    """The `Authorization` header of one app's calls (the app must have credentials)."""

    def __init__(self, app: AppSettings, *, clock: Callable[[], float] = time.time) -> None:
        if not has_credentials(app):
            raise ValueError(f"app {app.app_id!r} has no REST credentials")
        self._app, self._clock = app, clock
        self._basic = ""
        if app.customer_id is not None and app.customer_secret is not None:
            pair = f"{app.customer_id}:{app.customer_secret}".encode()
            self._basic = "Basic " + base64.b64encode(pair).decode("ascii")

    def authorization(self, *, channel: str | None) -> str:
        """A fresh token for the certificate (scoped to `channel` when known), else Basic."""
        if self._app.app_certificate is None:
            return self._basic  # set: an app without a certificate has the pair
        token = accesstoken.convoai(
            app_id=self._app.app_id,
            certificate=str(self._app.app_certificate),
            channel=channel or "",
            account="0",  # any uid, as the official SDK signs calls made outside a session
            issued_at=int(self._clock()),
            expire_s=TOKEN_EXPIRE_S,
        )
        return f"agora token={token}"
