"""Fuzzing every endpoint of /openapi.json with schemathesis, with a read token, an admin token
(which may erase) and without.

The operations come from the document the service serves (checked equal to `openapi.DOCUMENT`);
requests go over real HTTP to a `serve` process on a database holding a few agents, so that
besides 401, 404 and 400 answers the fuzzer also sees full agents, events, histories and PCU.
Half the examples for a path with `agent_id` or `app_id` use a seeded one. Every answer must be a
documented status with a body that matches its schema, never a 5xx, and input that breaks the
schema must be refused with a 4xx.

Schemathesis keeps to what the schema describes, so a second fuzzer sends what a hostile client
would: every GET route of the document with junk in each of its parameters (digits `str.isdigit()`
takes but `int()` does not, numbers past every bound, times off the calendar once in UTC, NUL,
lone surrogates, bytes that are not UTF-8, very long values, repeated and unknown parameters) and
cursors crafted from the real ones the service gave out. Same invariant: no 5xx, every answer a
documented status with a body matching its schema, and a 400's detail naming a parameter sent.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from schemathesis import checks
from schemathesis.specs.openapi import checks as openapi_checks

from service import openapi
from tests.factories import (
    ADMIN_TOKEN,
    APP_ID,
    READ_TOKEN,
    deliver,
    environment,
    payload,
    reader_headers,
)
from tests.processes import ServiceProcess, serving

pytestmark = pytest.mark.slow

# The stream never ends on its own, so it cannot be called like the others: its answers to bad
# input are checked in tests/http/test_stream.py.
schema = schemathesis.openapi.from_dict(openapi.DOCUMENT).exclude(path="/v1/stream")

CHECKS = [
    checks.not_a_server_error,
    openapi_checks.status_code_conformance,
    openapi_checks.content_type_conformance,
    openapi_checks.response_headers_conformance,
    openapi_checks.response_schema_conformance,
    openapi_checks.negative_data_rejection,
]
SEEDED_AGENTS = ("agent-running", "agent-stopped")


def seed(url: str) -> None:
    """One agent running, one stopped with errors, metrics, a transcript and turns."""
    start = 1_751_400_000
    running, stopped = SEEDED_AGENTS
    deliveries = [
        deliver(101, payload(running, start_ts=start, labels={"tenant": "acme"})),
        deliver(101, payload(stopped, start_ts=start)),
        deliver(110, payload(stopped, errors=[{"module": "tts", "code": 429, "message": "m"}])),
        deliver(111, payload(stopped, metrics=[{"turn_id": 1, "asr_ttlw": 300}])),
        deliver(102, payload(stopped, start_ts=start, stop_ts=start + 60, status="FAILED")),
        deliver(103, payload(stopped, contents=[{"role": "user", "content": "hi"}])),
        deliver(112, payload(stopped, turns=[{"turn_id": 1, "end": {"end_at": 1751400030000}}])),
    ]
    with httpx.Client(base_url=url, timeout=10) as client:
        for delivery in deliveries:
            response = client.post(
                f"/v1/webhooks/agora/{APP_ID}", content=delivery.body, headers=delivery.headers
            )
            assert response.json() == {"status": "accepted"}, response.text
        for _ in range(2):  # no agent_id: listed by /notifications, so that it pages
            delivery = deliver(101, {"channel": "c"})
            response = client.post(
                f"/v1/webhooks/agora/{APP_ID}", content=delivery.body, headers=delivery.headers
            )
            assert response.json() == {"status": "unapplied"}, response.text


@pytest.fixture(scope="module")
def server(
    create_database: Callable[[], str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServiceProcess]:
    log_dir: Path = tmp_path_factory.mktemp("api-fuzz")
    env = environment(create_database(), SHUTDOWN_DRAIN_S="0", ADMIN_API_TOKENS=ADMIN_TOKEN)
    with serving(env, log_dir) as (process,):
        seed(process.url)
        yield process


def test_the_fuzzed_document_is_the_one_served(server: ServiceProcess) -> None:
    served = httpx.get(f"{server.url}/openapi.json", timeout=5).json()
    assert served == httpx.Response(200, json=openapi.DOCUMENT).json()


@schema.given(seeded=st.booleans(), agent=st.sampled_from(SEEDED_AGENTS))
@schema.parametrize()
@settings(
    max_examples=30,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
@pytest.mark.parametrize("token", ["valid", "admin", "none"])
def test_no_answer_is_a_server_error_or_breaks_the_schema(
    case: Any, server: ServiceProcess, token: str, seeded: bool, agent: str
) -> None:
    if seeded and case.path_parameters:
        if "agent_id" in case.path_parameters:
            case.path_parameters["agent_id"] = agent
        if "app_id" in case.path_parameters:
            case.path_parameters["app_id"] = APP_ID
    # The token replaces any Authorization header the fuzzer made up; "none" sends none at all.
    case.headers = {k: v for k, v in (case.headers or {}).items() if k.lower() != "authorization"}
    if token in ("valid", "admin"):
        case.headers.update(reader_headers(ADMIN_TOKEN if token == "admin" else READ_TOKEN))
    response = case.call(base_url=server.url, timeout=10)
    case.validate_response(response, checks=CHECKS)
    if token == "none" and case.path.startswith("/v1/") and case.method == "GET":
        assert response.status_code == 401, response.text
    assert READ_TOKEN not in response.text and ADMIN_TOKEN not in response.text


# ---- Junk in every parameter of every GET route ----------------------------------------------

# The stream never ends when its parameters are good (its own tests read it): left out here.
READS = sorted(
    path
    for path, item in openapi.DOCUMENT["paths"].items()
    if "get" in item and path[:4] == "/v1/" and path != "/v1/stream"
)
LISTS = {  # a route that pages, and where a real cursor for it comes from
    "/v1/agents": "/v1/agents",
    "/v1/agents/{agent_id}/events": f"/v1/agents/{SEEDED_AGENTS[1]}/events",
    "/v1/apps/{app_id}/notifications": f"/v1/apps/{APP_ID}/notifications",
}
HOSTILE_TEXT = (
    "",
    " ",
    "\x00",
    "a\x00b",
    "\ud800",  # sent as its UTF-8-ish bytes ED A0 80: not UTF-8
    "\udfffx",
    "\ufffd",
    "\u202e",
    "..",
    "../../x",
    "q?evil=1&",
    "a/b",
    "%00",
    "x" * 3000,
    "💥",
)
NUMBER_JUNK = (
    "²",
    "٣",
    "\uff15",
    "-1",
    "0",
    "1.5",
    "1e2",
    "+5",
    " 5",
    "0x10",
    "9" * 30,
    "9" * 5000,
    "NaN",
    "Infinity",
    "500",
    "501",
    "31622400",
    "31622401",
    "1",
)
TIME_JUNK = (
    "0001-01-01T00:00:00+01:00",
    "0001-01-01T00:00:00Z",
    "9999-12-31T23:59:59-01:00",
    "9999-12-31T23:59:59.999999Z",
    "2026-01-01T00:00:00",
    "2026-01-01T00:00:00.123456789Z",
    "2026-01-01t00:00:00z",
    "2026-01-01T23:59:60Z",
    "2026-02-30T00:00:00Z",
    "2026-01-01T00:00:00+24:00",
    "٢٠٢٦-01-01T00:00:00Z",
    "2026-W01-1T00:00:00Z",
    "20260101T000000Z",
    "2025-07-01T20:00:00Z",
    "1751400000",
)
ENUM_JUNK = (
    "unapplied",
    "UNAPPLIED",
    "accepted",
    "24h",
    "1h",
    "7d",
    "30d",
    "2h",
    "running",
    "FAILED",
)
# What a cursor's members are swapped for: values no row can have, of every JSON type.
CURSOR_MEMBERS: tuple[Any, ...] = (
    10**30,
    -(10**30),
    2**63,
    -(2**63) - 1,
    253_402_300_800_000_000,
    -62_135_596_800_000_001,
    -1,
    0,
    True,
    1.5,
    None,
    [1],
    {"a": 1},
    "a\x00b",
    "\ud800",
    "",
    "x" * 3000,
)


def encode_cursor(key: Any) -> str:
    text = json.dumps(key).encode("utf-8", "surrogatepass")
    return base64.urlsafe_b64encode(text).decode().rstrip("=")


def decode_cursor(cursor: str) -> Any:
    return json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))


@pytest.fixture(scope="module")
def real_cursors(server: ServiceProcess) -> dict[str, str]:
    """A real next_cursor of each list, by the route it came from."""
    found = {}
    with httpx.Client(base_url=server.url, headers=reader_headers(), timeout=10) as client:
        for route, path in LISTS.items():
            cursor = client.get(path, params={"limit": 1}).json()["next_cursor"]
            assert cursor, route
            found[route] = cursor
    return found


@st.composite
def crafted_cursors(draw: st.DrawFn, real: dict[str, str], route: str) -> str:
    """A real cursor, mostly this list's, with members swapped, dropped or added, or its text
    damaged; or junk that only looks like a cursor."""
    cursor = real.get(route) if draw(st.integers(0, 3)) else None
    cursor = cursor or draw(st.sampled_from(sorted(real.values())))
    key = decode_cursor(cursor)
    how = draw(st.sampled_from(("member", "member", "shape", "text", "junk", "as_is")))
    if how == "member":
        key[draw(st.integers(0, len(key) - 1))] = draw(st.sampled_from(CURSOR_MEMBERS))
    elif how == "shape":
        key = draw(st.sampled_from(([*key, 1], key[:-1], [], {"at": key[0]}, key[0], [key])))
    elif how == "text":
        at = draw(st.integers(0, len(cursor) - 1))
        return draw(
            st.sampled_from((cursor[:at], cursor[:at] + "!" + cursor[at + 1 :], cursor * 2))
        )
    elif how == "junk":
        raw = draw(st.sampled_from((b"[" * 3000, b"\xff\xfe", b"[1" + b"0" * 5000 + b"]", b"null")))
        return draw(st.sampled_from((base64.urlsafe_b64encode(raw).decode(), "!!!", "A" * 5000)))
    else:
        return cursor
    return encode_cursor(key)


def junk_for(name: str, route: str, real: dict[str, str]) -> st.SearchStrategy[str]:
    """Junk for one parameter, with values of its kind among it."""
    hostile = st.sampled_from(HOSTILE_TEXT) | st.text(max_size=12)
    if name in ("limit", "step"):
        return st.sampled_from(NUMBER_JUNK) | st.integers().map(str) | hostile
    if name in ("since", "until", "from", "to"):
        return st.sampled_from(TIME_JUNK) | hostile
    if name == "cursor":
        return crafted_cursors(real, route) | hostile
    if name in ("state", "window", "status"):
        return st.sampled_from(ENUM_JUNK) | hostile
    if name == "agent_id":
        return st.sampled_from(SEEDED_AGENTS) | hostile
    if name == "app_id":
        return st.sampled_from((APP_ID, "nobody")) | hostile
    return st.sampled_from(("acme", "sess-8841", "agent-running")) | hostile


def valid_for(name: str, route: str, real: dict[str, str]) -> st.SearchStrategy[str]:
    """A value the service takes, so that junk elsewhere is what it has to read."""
    values = {
        "limit": ("1", "2", "500"),
        "step": ("60", "300", "3600"),
        "since": ("2025-07-01T00:00:00Z",),
        "until": ("2025-07-02T00:00:00+02:00",),
        "from": ("2025-07-01T19:00:00Z",),
        "to": ("2025-07-01T21:00:00.5Z",),
        "state": ("RUNNING", "failed"),
        "window": ("1h", "24h"),
        "status": ("unapplied",),
        "agent_id": SEEDED_AGENTS,
        "app_id": (APP_ID,),
        "cursor": (real.get(route, ""),),
    }.get(name, ("acme", "sess-8841"))
    return st.sampled_from(values)


def quoted(text: str) -> str:
    """Percent-encoded bytes of `text`, a lone surrogate as the three bytes it would have."""
    return quote(text.encode("utf-8", "surrogatepass"), safe="")


def as_read(text: str) -> str:
    """`text` as the server reads it back from `quoted(text)`: bytes that are not UTF-8 as U+FFFD."""
    return text.encode("utf-8", "surrogatepass").decode("utf-8", "replace")


def parameters(route: str) -> list[dict[str, Any]]:
    return list(openapi.DOCUMENT["paths"][route]["get"].get("parameters", []))


@st.composite
def hostile_requests(
    draw: st.DrawFn, real: dict[str, str]
) -> tuple[str, dict[str, str], list[tuple[str, str]]]:
    """(route, path parameters, query pairs): junk in one parameter of the route, sometimes in
    all of them, the others valid or left out."""
    route = draw(st.sampled_from(READS))
    params = parameters(route)
    if not params:  # `/v1/apps`: nothing to fuzz but parameters it does not take
        return (
            route,
            {},
            [(draw(st.sampled_from(HOSTILE_TEXT)), draw(st.sampled_from(NUMBER_JUNK)))],
        )
    target = draw(st.sampled_from([param["name"] for param in params]))
    if route in LISTS and draw(st.booleans()):
        target = "cursor"  # cursors take the most crafting
    everywhere = draw(st.integers(0, 4)) == 0
    path_params: dict[str, str] = {}
    query: list[tuple[str, str]] = []
    for param in params:
        name = param["name"]
        junk = everywhere or name == target
        values = junk_for(name, route, real) if junk else valid_for(name, route, real)
        if param["in"] == "path":
            path_params[name] = draw(values)
        elif junk or draw(st.booleans()):
            if name == "label.{KEY}":
                keys = ("tenant", "", "\x00", "k" * 3000, "\ud800") if junk else ("tenant",)
                name = "label." + draw(st.sampled_from(keys))
            repeated = junk and draw(st.integers(0, 7)) == 0  # given twice
            query += [(name, draw(values)) for _ in range(2 if repeated else 1)]
    if draw(st.integers(0, 9)) == 0:
        query.append((draw(st.sampled_from(("colour", "\x00", "LIMIT", "cursor "))), "1"))
    return route, path_params, query


@pytest.mark.parametrize("token", ["valid", "none"])
def test_junk_in_any_parameter_or_cursor_is_never_a_server_error(
    server: ServiceProcess, real_cursors: dict[str, str], token: str
) -> None:
    headers = reader_headers() if token == "valid" else {}
    client = httpx.Client(base_url=server.url, timeout=10)

    @settings(max_examples=400 if token == "valid" else 40, deadline=None)
    @given(request=hostile_requests(real_cursors))
    def one_request(request: tuple[str, dict[str, str], list[tuple[str, str]]]) -> None:
        route, path_params, query = request
        path = route
        for name, value in path_params.items():
            path = path.replace(f"{{{name}}}", quoted(value))
        target = path + "?" + "&".join(f"{quoted(k)}={quoted(v)}" for k, v in query)
        # Parameters, not the HTTP server's limit on a request line, are what is fuzzed here.
        assume(len(target) < 15_000)
        response = client.get(target, headers=headers)
        assert response.status_code < 500, (target, response.text)
        operation = schema[route]["GET"]
        case = operation.Case(path_parameters=path_params, query=dict(query), headers=headers)
        case.validate_response(response, checks=JUNK_CHECKS)
        if token == "none":  # refused before anything is read, unless no route has that path
            unrouted = any(value in ("", "..") or "/" in value for value in path_params.values())
            assert response.status_code == (404 if unrouted else 401), (target, response.text)
        elif response.status_code == 400:
            # The parameter at fault: one sent, or one to add (a series' step for a longer span).
            detail = response.json()["detail"]
            named = {as_read(name) for name, _ in query} | {p["name"] for p in parameters(route)}
            assert detail.split(":")[0] in named, (target, detail)

    with client:
        one_request()


# Junk may be valid by the schema and still refused (a date-time in year 0), so negative data
# rejection is left to the schemathesis test above.
JUNK_CHECKS = [
    checks.not_a_server_error,
    openapi_checks.status_code_conformance,
    openapi_checks.content_type_conformance,
    openapi_checks.response_schema_conformance,
]
