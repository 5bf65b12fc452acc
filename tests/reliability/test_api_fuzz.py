"""Fuzzing every endpoint of /openapi.json with schemathesis, with a read token, an admin token
(which may erase) and without.

The operations come from the document the service serves (checked equal to `openapi.DOCUMENT`);
requests go over real HTTP to a `serve` process on a database holding a few agents, so that
besides 401, 404 and 400 answers the fuzzer also sees full agents, events, histories and PCU.
Half the examples for a path with `agent_id` or `app_id` use a seeded one. Every answer must be a
documented status with a body that matches its schema, never a 5xx, and input that breaks the
schema must be refused with a 4xx.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, settings
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

schema = schemathesis.openapi.from_dict(openapi.DOCUMENT)

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
