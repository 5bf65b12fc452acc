"""Every error the service raises on purpose.

    ServiceError                      base; message defaults to the class docstring
    ├── ConfigError                   a setting has a wrong value (start-up only)
    ├── IllegalTransition             the lifecycle table has no entry (state unchanged)
    ├── RequestRejected               answered to the caller as JSON {"error", "detail"?}
    │   ├── UnknownApp                404 unknown_app
    │   ├── PayloadTooLarge           413 payload_too_large
    │   ├── InvalidSignature          401 invalid_signature
    │   ├── MalformedEvent            400 invalid_notification
    │   ├── Unauthorized              401 unauthorized
    │   ├── Forbidden                 403 forbidden (a valid token that may not do this)
    │   ├── NotFound                  404 not_found
    │   ├── AmbiguousAgent            409 ambiguous_agent (with the app_ids)
    │   ├── InvalidParameter          400 invalid_parameter
    │   └── StreamFull                503 too_many_subscribers (with Retry-After)
    └── Unavailable                   503 unavailable: a dependency (the database) is down

`status_hint` is the HTTP status an edge should answer with; `code` is the stable string in the
JSON body. Raise specific errors, catch them at the edges (`app.py`), chain with `from exc`.
No message may carry a secret, a token or a raw body.
"""

from __future__ import annotations

from typing import ClassVar


class ServiceError(Exception):
    """The service failed."""

    status_hint: ClassVar[int] = 500
    code: ClassVar[str] = "internal_error"

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message or (self.__doc__ or "").strip())

    @property
    def detail(self) -> str:
        return str(self)


class ConfigError(ServiceError):
    """The configuration is invalid."""


class IllegalTransition(ServiceError):
    """The lifecycle has no transition for this state and event."""


class RequestRejected(ServiceError):
    """The request was rejected."""

    status_hint = 400
    code = "bad_request"
    # Whether the JSON answer carries "detail"; the contract gives it only to some errors.
    show_detail: ClassVar[bool] = False

    def extra(self) -> dict[str, object]:
        """More members of the JSON answer, beside "error" (and "detail")."""
        return {}

    def headers(self) -> dict[str, str]:
        """Headers of the answer besides the JSON content type."""
        return {}


class UnknownApp(RequestRejected):
    """No app with this App ID is configured."""

    status_hint = 404
    code = "unknown_app"


class PayloadTooLarge(RequestRejected):
    """The body is larger than the limit."""

    status_hint = 413
    code = "payload_too_large"


class InvalidSignature(RequestRejected):
    """The notification signature is missing or does not match."""

    status_hint = 401
    code = "invalid_signature"


class MalformedEvent(RequestRejected):
    """The notification is not a valid Agora NCS notification."""

    status_hint = 400
    code = "invalid_notification"
    show_detail = True


class Unauthorized(RequestRejected):
    """A valid bearer token is required."""

    status_hint = 401
    code = "unauthorized"


class Forbidden(RequestRejected):
    """This token may not do this (erasure needs an admin token)."""

    status_hint = 403
    code = "forbidden"


class NotFound(RequestRejected):
    """No such resource."""

    status_hint = 404
    code = "not_found"


class AmbiguousAgent(RequestRejected):
    """This agent_id exists in several apps: say which with `app_id`."""

    status_hint = 409
    code = "ambiguous_agent"

    def __init__(self, app_ids: list[str]) -> None:
        super().__init__()
        self.app_ids = app_ids

    def extra(self) -> dict[str, object]:
        return {"app_ids": self.app_ids}


class InvalidParameter(RequestRejected):
    """A query parameter is invalid."""

    status_hint = 400
    code = "invalid_parameter"
    show_detail = True


class StreamFull(RequestRejected):
    """This process streams to as many subscribers as it may; retry in a few seconds."""

    status_hint = 503
    code = "too_many_subscribers"
    show_detail = True

    def headers(self) -> dict[str, str]:
        return {"Retry-After": "5"}


class Unavailable(ServiceError):
    """A dependency is unavailable; retry later."""

    status_hint = 503
    code = "unavailable"
