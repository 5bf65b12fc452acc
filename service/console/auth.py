"""Login, logout and who is asking: the session behind a console request.

`GET /console/login` answers the form (field `token`) with a CSRF secret in a cookie and its MAC
in the form; `POST /console/login` checks the Origin (or Referer), the CSRF pair and the token
(`visibility.apps_for`, as the API checks a bearer token), then sets the session cookie:
HttpOnly, SameSite=Strict, Path=/console, Secure when the request came over https (directly or
as `X-Forwarded-Proto` says). `POST /console/logout` needs the session's own CSRF token.
`viewer(request)` answers who is logged in and which apps they may see, asked again on every
request, so a token removed from the configuration loses its sessions at once.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Final
from urllib.parse import parse_qs, urlsplit

import structlog
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from service import visibility
from service.console import layout, sessions

log = structlog.get_logger(__name__)

MAX_FORM_BYTES: Final = 8192
HOME: Final = "/console"


@dataclass(frozen=True, slots=True, kw_only=True)
class Viewer:
    apps: frozenset[str]
    csrf: str  # for the logout form
    session: str  # a short, stable name of the session for logs (not the token)


def session_key(request: Request) -> str | None:
    key = request.state.settings.console_session_key
    return str(key) if key is not None else None


def viewer(request: Request) -> Viewer | None:
    """Who is logged in (a valid session whose token is still configured), or None."""
    key = session_key(request)
    cookie = request.cookies.get(sessions.COOKIE)
    if key is None or cookie is None:
        return None
    session = sessions.unseal(key, cookie, now=int(time.time()))
    if session is None:
        return None
    token = sessions.match(key, session, visibility.tokens(request.state.settings))
    apps = visibility.apps_for(request.state.settings, token) if token is not None else None
    if apps is None:
        return None
    return Viewer(apps=apps, csrf=session.csrf, session=session.fingerprint[:12])


def login_form(request: Request) -> Response:
    key = session_key(request)
    if key is None:
        return disabled()
    secret = request.cookies.get(sessions.LOGIN_COOKIE) or sessions.login_secret()
    return _form(request, key=key, secret=secret, error=None, status=200)


async def login(request: Request) -> Response:
    key = session_key(request)
    if key is None:
        return disabled()
    form = await _form_fields(request)
    secret = request.cookies.get(sessions.LOGIN_COOKIE)
    if (
        not same_origin(request)
        or secret is None
        or not sessions.same(sessions.login_csrf(key, secret), form.get("csrf"))
    ):
        log.warning("console_login_refused", reason="csrf")
        fresh = sessions.login_secret()
        message = "The form had expired. Please try again."
        return _form(request, key=key, secret=fresh, error=message, status=403)
    token = (form.get("token") or "").strip()
    apps = visibility.apps_for(request.state.settings, token) if token else None
    if apps is None:
        log.warning("console_login_refused", reason="token")
        return _form(
            request, key=key, secret=secret, error="That token is not accepted.", status=401
        )
    session = sessions.issue(key, token, now=int(time.time()))
    log.info("console_login", token_ref=session.fingerprint[:12], apps=len(apps))
    response = RedirectResponse(_next(form.get("next")), status_code=303)
    _set_cookie(
        request, response, sessions.COOKIE, sessions.seal(key, session), sessions.LIFETIME_S
    )
    response.delete_cookie(sessions.LOGIN_COOKIE, path="/console/login")
    return response


async def logout(request: Request) -> Response:
    who = viewer(request)
    form = await _form_fields(request)
    if who is not None and (
        not same_origin(request) or not sessions.same(who.csrf, form.get("csrf"))
    ):
        log.warning("console_logout_refused", reason="csrf")
        return layout.render(
            "message.html",
            _message("Log out was refused", "Please try again from the console."),
            status=403,
        )
    if who is not None:
        log.info("console_logout", token_ref=who.session)
    response = RedirectResponse("/console/login", status_code=303)
    response.delete_cookie(sessions.COOKIE, path="/console")
    return response


def to_login(request: Request) -> Response:
    """Send someone without a session to the login form, coming back here afterwards."""
    target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    return RedirectResponse(f"/console/login{layout.query({'next': target})}", status_code=303)


def disabled() -> Response:
    return layout.render(
        "message.html",
        _message(
            "The console is off",
            "Set CONSOLE_SESSION_KEY (at least 32 random characters, the same on every replica)"
            " to turn it on. make run and make demo make one for you.",
        ),
        status=503,
    )


def same_origin(request: Request) -> bool:
    """Whether a form was posted from our own pages: Origin (else Referer), when the browser
    sends one, names this host."""
    claimed = request.headers.get("origin") or request.headers.get("referer")
    if claimed is None:
        return True  # not a browser (browsers send Origin with every form POST); CSRF token still needed
    return urlsplit(claimed).netloc == request.headers.get("host", "")


def secure(request: Request) -> bool:
    forwarded = request.headers.get("x-forwarded-proto", "").split(",")[0].strip().lower()
    return request.url.scheme == "https" or forwarded == "https"


def _form(request: Request, *, key: str, secret: str, error: str | None, status: int) -> Response:
    response = layout.render(
        "login.html",
        {
            "csrf": sessions.login_csrf(key, secret),
            "next": _next(request.query_params.get("next")),
            "error": error,
            "viewer": None,
        },
        status=status,
    )
    _set_cookie(
        request,
        response,
        sessions.LOGIN_COOKIE,
        secret,
        sessions.LOGIN_LIFETIME_S,
        path="/console/login",
    )
    return response


def _set_cookie(
    request: Request,
    response: Response,
    name: str,
    value: str,
    max_age: int,
    *,
    path: str = "/console",
) -> None:
    response.set_cookie(
        name,
        value,
        max_age=max_age,
        path=path,
        httponly=True,
        samesite="strict",
        secure=secure(request),
    )


async def _form_fields(request: Request) -> dict[str, str]:
    """The urlencoded form, first value of each field; at most `MAX_FORM_BYTES`."""
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_FORM_BYTES:
            return {}
    try:
        fields = parse_qs(body.decode("utf-8", "replace"), max_num_fields=20)
    except ValueError:  # too many fields
        return {}
    return {name: values[0] for name, values in fields.items() if values}


def _next(target: str | None) -> str:
    """Where to go after logging in: a console page of ours, never another site."""
    if not target or not target.startswith(HOME) or "\\" in target or "//" in target:
        return HOME
    parts = urlsplit(target)
    if parts.scheme or parts.netloc:
        return HOME
    return target


def _message(title: str, text: str) -> dict[str, object]:
    return {"title": title, "text": text, "viewer": None}
