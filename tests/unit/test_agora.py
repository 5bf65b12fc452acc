"""The Agora REST client against `httpx.MockTransport` (Agora is the only thing faked)."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Awaitable, Callable, Iterator
from datetime import UTC, datetime
from typing import Any, TypeVar

import httpx
import pytest

from service import accesstoken, agora, config, lifecycle, metrics, replies

T = TypeVar("T")
BASE = "http://agora.test/api/conversational-ai-agent"
PROJECT = "/api/conversational-ai-agent/v2/projects/app-one"
CERTIFICATE = "5CFd2fd1755d40ecb72977518be15d3b"


def settings(**overrides: str) -> config.Settings:
    env = {
        "AGORA_APP_ID": "app-one",
        "AGORA_WEBHOOK_SECRETS": "ncs-secret",
        "AGORA_CUSTOMER_ID": "cid",
        "AGORA_CUSTOMER_SECRET": "csecret",
        "AGORA_API_BASE_URL": BASE,
        "AGORA_RETRY_ATTEMPTS": "4",
        "AGORA_RETRY_WAIT_INITIAL_S": "0.001",
        "AGORA_RETRY_WAIT_MAX_S": "0.002",
        "AGORA_RETRY_TIMEOUT_S": "5",
    }
    return config.load({**env, **overrides})


def call(
    handler: Callable[[httpx.Request], httpx.Response],
    action: Callable[[agora.AgoraClient], Awaitable[T]],
    **overrides: str,
) -> T:
    """Run `action` with a client whose every request is answered by `handler`."""
    conf = settings(**overrides)

    async def run() -> T:
        async with httpx.AsyncClient(
            base_url=conf.agora_api_base_url, transport=httpx.MockTransport(handler)
        ) as http:
            return await action(agora.Agora(http, conf).for_app("app-one"))

    return asyncio.run(run())


def answers(*responses: httpx.Response | Exception) -> tuple[list[httpx.Request], Any]:
    """A handler answering `responses` in order, and the list of requests it saw."""
    seen: list[httpx.Request] = []
    queue: Iterator[httpx.Response | Exception] = iter(responses)

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        answer = next(queue)
        if isinstance(answer, Exception):
            raise answer
        return answer

    return seen, handler


def test_history_is_fetched_with_basic_auth_and_typed() -> None:
    seen, handler = answers(
        httpx.Response(
            200,
            json={
                "agent_id": "a1",
                "start_ts": 1751400000,
                "status": "RUNNING",
                "contents": [{"role": "user", "content": "hello."}],
            },
        )
    )
    history = call(handler, lambda client: client.history("a1"))
    assert history == replies.History(
        agent_id="a1",
        status="RUNNING",
        started_at=datetime(2025, 7, 1, 20, 0, tzinfo=UTC),
        contents=({"role": "user", "content": "hello."},),
    )
    (request,) = seen
    assert request.url.path == f"{PROJECT}/agents/a1/history"
    assert request.headers["authorization"] == "Basic " + base64.b64encode(b"cid:csecret").decode()


def test_an_app_certificate_means_a_fresh_agora_token_per_call() -> None:
    seen, handler = answers(
        httpx.Response(200, json={"agent_id": "a1", "status": "STOPPED", "start_ts": 1751400000}),
        httpx.Response(200, json={"agent_id": "a1", "status": "STOPPED", "start_ts": 1751400000}),
    )

    async def twice(client: agora.AgoraClient) -> None:
        await client.query("a1", channel="sess-1")
        await client.query("a1", channel="sess-1")

    call(handler, twice, AGORA_APP_CERTIFICATE=CERTIFICATE)
    headers = [r.headers["authorization"] for r in seen]
    assert all(h.startswith("agora token=007") for h in headers)
    token = accesstoken.parse(headers[0].removeprefix("agora token="))
    assert token.app_id == "app-one" and accesstoken.verify(token, CERTIFICATE)
    assert token.services[0].name == "sess-1"
    assert headers[0] != headers[1]  # minted per call (fresh salt)


def test_rate_limits_and_server_errors_are_retried_until_success() -> None:
    seen, handler = answers(
        httpx.Response(429, headers={"Retry-After": "0"}, json={"detail": "slow", "reason": "x"}),
        httpx.Response(503, json={"detail": "down", "reason": "ServiceUnavailable"}),
        httpx.ConnectError("refused"),
        httpx.Response(200, json={"agent_id": "a1", "status": "RUNNING", "contents": []}),
    )
    history = call(handler, lambda client: client.history("a1"))
    assert history.status == "RUNNING"
    assert len(seen) == 4


def test_retries_stop_after_the_configured_attempts() -> None:
    seen, handler = answers(*[httpx.Response(502) for _ in range(10)])
    with pytest.raises(agora.AgoraUnavailable) as caught:
        call(handler, lambda client: client.history("a1"), AGORA_RETRY_ATTEMPTS="3")
    assert len(seen) == 3
    assert caught.value.status == 502


def test_a_retry_after_longer_than_the_time_budget_ends_the_call_at_once() -> None:
    seen, handler = answers(httpx.Response(429, headers={"Retry-After": "120"}))
    with pytest.raises(agora.AgoraUnavailable) as caught:
        call(handler, lambda client: client.history("a1"))
    assert len(seen) == 1
    assert caught.value.retry_after == 120.0


@pytest.mark.parametrize(
    ("body", "reason", "detail"),
    [
        # API v2.7+
        (
            {"detail": "agent not found or has exited", "reason": "TaskNotFound"},
            "TaskNotFound",
            "agent not found or has exited",
        ),
        # the older format
        (
            {
                "message": "task not found",
                "requestResponse": {},
                "statusCode": "TaskNotFound",
                "taskId": "t-1",
            },
            "TaskNotFound",
            "task not found",
        ),
        # no body at all
        (None, None, None),
    ],
)
def test_client_errors_are_final_and_both_error_formats_are_read(
    body: dict[str, Any] | None, reason: str | None, detail: str | None
) -> None:
    response = httpx.Response(404, json=body) if body is not None else httpx.Response(404)
    seen, handler = answers(response)
    with pytest.raises(agora.AgoraRejected) as caught:
        call(handler, lambda client: client.history("a1"))
    assert len(seen) == 1
    assert (caught.value.status, caught.value.reason, caught.value.agora_detail) == (
        404,
        reason,
        detail,
    )


def list_page(items: list[tuple[str, str]], cursor: str) -> httpx.Response:
    listed = [{"start_ts": 1751400000, "status": s, "agent_id": i} for i, s in items]
    return httpx.Response(
        200,
        json={
            "data": {"count": len(listed), "list": listed},
            "meta": {"cursor": cursor, "total": 5},
            "status": "ok",
        },
    )


def test_the_list_follows_cursors_across_every_page_once_per_state() -> None:
    running = [(i, "RUNNING") for i in "abcde"]
    seen, handler = answers(
        list_page([("s", "STARTING")], ""),
        list_page(running[:2], "c"),
        list_page(running[2:4], "e"),
        list_page(running[4:], ""),
    )
    since = datetime(2026, 1, 1, tzinfo=UTC)
    found = call(
        handler,
        lambda client: client.list_agents(
            states=(lifecycle.State.STARTING, lifecycle.State.RUNNING), since=since, page_size=2
        ),
    )
    assert [a.agent_id for a in found] == ["s", "a", "b", "c", "d", "e"]
    assert found[0].state is lifecycle.State.STARTING
    assert found[1].state is lifecycle.State.RUNNING
    assert [dict(r.url.params) for r in seen] == [
        {"state": "1", "limit": "2", "from_time": "1767225600"},
        {"state": "2", "limit": "2", "from_time": "1767225600"},
        {"state": "2", "limit": "2", "from_time": "1767225600", "cursor": "c"},
        {"state": "2", "limit": "2", "from_time": "1767225600", "cursor": "e"},
    ]
    assert all(r.url.path == f"{PROJECT}/agents" for r in seen)


def test_an_agent_listed_under_two_states_is_kept_once_as_last_seen() -> None:
    seen, handler = answers(
        list_page([("a", "RUNNING"), ("b", "RUNNING")], ""),
        list_page([("a", "STOPPING")], ""),
    )
    found = call(
        handler,
        lambda client: client.list_agents(
            states=(lifecycle.State.RUNNING, lifecycle.State.STOPPING)
        ),
    )
    assert [(a.agent_id, a.state) for a in found] == [
        ("b", lifecycle.State.RUNNING),
        ("a", lifecycle.State.STOPPING),
    ]
    assert len(seen) == 2


def test_turns_are_read_page_by_page_until_the_last() -> None:
    def page(index: int, total: int, turn_ids: list[int]) -> httpx.Response:
        turns = [
            {
                "turn_id": t,
                "start": {"start_at": 1751400001000, "type": "voice_input"},
                "end": {"end_at": 1751400002000, "type": "ok"},
                "metrics": {"e2e_latency_ms": 900},
            }
            for t in turn_ids
        ]
        pagination = {"page_index": index, "total_pages": total, "is_last_page": index == total}
        return httpx.Response(
            200,
            json={
                "agent_id": "a1",
                "total_turn_count": 5,
                "pagination": pagination,
                "turns": turns,
            },
        )

    seen, handler = answers(page(1, 3, [1, 2]), page(2, 3, [3, 4]), page(3, 3, [5]))
    turns = call(handler, lambda client: client.turns("a1", page_size=2))
    assert [t.turn_id for t in turns.turns] == [1, 2, 3, 4, 5]
    assert (turns.total_turn_count, turns.pages) == (5, 3)
    assert turns.turns[0].e2e_latency_ms == 900
    assert [r.url.params["page_index"] for r in seen] == ["1", "2", "3"]


def test_an_unreadable_success_is_malformed_not_retried() -> None:
    seen, handler = answers(httpx.Response(200, content=b"<html>"))
    with pytest.raises(agora.AgoraMalformed):
        call(handler, lambda client: client.query("a1"))
    assert len(seen) == 1


def test_an_app_without_rest_credentials_is_not_configured() -> None:
    conf = config.load(
        {"AGORA_APP_ID": "app-one", "AGORA_WEBHOOK_SECRETS": "s", "AGORA_API_BASE_URL": BASE}
    )
    with pytest.raises(agora.AgoraNotConfigured):
        agora.Agora(httpx.AsyncClient(), conf).for_app("app-one")
    with pytest.raises(agora.AgoraNotConfigured):
        agora.Agora(httpx.AsyncClient(), conf).for_app("other-app")


# Ids a notification may carry but that must never reach a URL (CONTRACT §3).
NOT_PLAIN = [
    "../../../../admin/secret",  # climbs out of the project
    "q?evil=1&",  # would turn the path into a query
    "a%2Fb",  # an encoded slash
    "a/b",
    "..",
    "a#b",
    "a b",
    "a1\n",  # `$` in a regex would let a trailing newline through
    "agënt",  # letters, but not ASCII ones
    "١٢٣",  # digits, but not ASCII ones
    "\uff41\uff42\uff43",  # fullwidth letters
    "a" * 129,  # one too long
    "",
]


def requests_counted() -> float:
    """Every Agora request the metrics have counted so far (all endpoints and statuses)."""
    return sum(
        sample.value
        for family in metrics.AGORA_REQUESTS.collect()
        for sample in family.samples
        if sample.name.endswith("_total")
    )


@pytest.mark.parametrize("agent_id", NOT_PLAIN)
@pytest.mark.parametrize("endpoint", ["query", "history", "turns"])
def test_an_agent_id_that_is_not_plain_is_refused_before_any_request(
    agent_id: str, endpoint: str
) -> None:
    seen, handler = answers(*[httpx.Response(200, json={}) for _ in range(3)])
    counted = requests_counted()
    with pytest.raises(agora.AgoraIdNotPlain) as caught:
        call(handler, lambda client: getattr(client, endpoint)(agent_id))
    assert seen == []
    assert requests_counted() == counted  # nothing went out, so nothing is counted as a call
    assert (caught.value.endpoint, caught.value.reason, caught.value.retryable) == (
        endpoint,
        "AgentIdNotPlain",
        False,
    )
    # The message never echoes the id.
    assert str(caught.value) == f"{endpoint}: the agent id is not a plain id; nothing was sent"


@pytest.mark.parametrize("agent_id", ["1NWBGFFW4Q", "a-b_c", "a" * 128, "0"])
def test_a_plain_agent_id_is_one_path_segment_and_parameters_stay_out_of_the_path(
    agent_id: str,
) -> None:
    turns = {"turns": [], "pagination": {"is_last_page": True}}
    seen, handler = answers(
        httpx.Response(200, json={"status": "RUNNING"}),
        httpx.Response(200, json={"contents": []}),
        httpx.Response(200, json=turns),
    )

    async def each(client: agora.AgoraClient) -> None:
        await client.query(agent_id)
        await client.history(agent_id)
        await client.turns(agent_id)

    call(handler, each)
    assert [r.url.raw_path.decode() for r in seen] == [
        f"{PROJECT}/agents/{agent_id}",
        f"{PROJECT}/agents/{agent_id}/history",
        f"{PROJECT}/agents/{agent_id}/turns?page_index=1&page_size=200",
    ]


@pytest.mark.parametrize(
    ("value", "plain"),
    [
        ("A-z_09", True),
        ("a" * 128, True),
        ("a" * 129, False),
        ("", False),
        ("a.b", False),
        ("a\n", False),
        ("a\x00", False),
        ("é", False),
    ],
)
def test_a_plain_id_is_one_to_128_ascii_letters_digits_dashes_or_underscores(
    value: str, plain: bool
) -> None:
    assert agora.is_plain_id(value) is plain
