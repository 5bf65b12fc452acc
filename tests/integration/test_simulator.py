"""The Agora simulator itself, over real HTTP: REST rules from the reference, NCS delivery."""

from __future__ import annotations

import asyncio
import base64
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.datastructures import Headers
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from service import accesstoken, events, signatures
from service.simulator import ncs, server
from service.simulator.backend import SimApp
from tests.factories import poll

APP = SimApp(
    app_id="app-one",
    webhook_secret="ncs-secret",
    customer_id="cid",
    customer_secret="csecret",
    certificate="5CFd2fd1755d40ecb72977518be15d3b",
    pcu_cap=3,
)
BASIC = {"Authorization": "Basic " + base64.b64encode(b"cid:csecret").decode()}
FAST = ncs.DeliveryPolicy(retry_gaps_s=(0.0, 0.2, 0.4), timeout_s=2.0)


@dataclass
class Received:
    at: float
    headers: Headers
    body: bytes


@dataclass
class Receiver:
    """A stand-in webhook endpoint: records every request, answers `answer(n)` (status, delay)."""

    answer: Callable[[int], tuple[int, float]] = lambda n: (200, 0.0)
    seen: list[Received] = field(default_factory=list)

    async def endpoint(self, request: Request) -> Response:
        body = await request.body()
        status, delay = self.answer(len(self.seen))
        self.seen.append(Received(time.monotonic(), request.headers, body))
        await asyncio.sleep(delay)
        return JSONResponse({"status": "ok"}, status_code=status)


@contextmanager
def receiving(receiver: Receiver) -> Iterator[str]:
    loop = server.BackgroundLoop()
    app = Starlette(routes=[Route("/{path:path}", receiver.endpoint, methods=["POST"])])
    listener = server.Listener(app)
    try:
        loop.run(listener.start, timeout=10)
        yield listener.url
    finally:
        loop.run(listener.stop, timeout=10)
        loop.close()


@contextmanager
def simulator(**options: Any) -> Iterator[server.Running]:
    with server.in_thread([APP], **options) as sim:
        yield sim


def rest(sim: server.Running, method: str, path: str, **kwargs: Any) -> httpx.Response:
    headers = kwargs.pop("headers", BASIC)
    url = f"{sim.api_base_url}/v2/projects/app-one/{path}"
    return httpx.request(method, url, headers=headers, timeout=5, **kwargs)


# NCS sender ------------------------------------------------------------------------------------


def test_notifications_are_signed_so_the_services_verifier_accepts_them() -> None:
    receiver = Receiver()
    with receiving(receiver) as url, simulator(target=url, delivery=FAST) as sim:
        agent = sim.call(sim.backend.join, "app-one", name="a", channel="c")
        sim.call(sim.backend.talk, agent.agent_id, user="hi", assistant="hello", error=True)
        sim.call(sim.backend.stop, agent.agent_id)
        sim.run(lambda: sim.sender.drain(10))
    assert all(
        set(r.headers.keys()) >= {"agora-signature-v2", "agora-signature"} for r in receiver.seen
    )
    for received in receiver.seen:
        signatures.verify(received.body, received.headers, ["ncs-secret"])
        signatures.verify(
            received.body,
            {"Agora-Signature": received.headers["agora-signature"]},
            ["ncs-secret"],
        )
    notes = [events.parse(r.body) for r in receiver.seen]
    assert [n.event_type for n in notes] == [101, 111, 110, 102, 103, 112]
    assert {n.agent_id for n in notes} == {agent.agent_id}
    assert notes[3].event is not None and notes[3].event.status == "STOPPED"  # type: ignore[union-attr]
    assert all(abs(n.notify_ms - time.time() * 1000) < 60_000 for n in notes if n.notify_ms)


def test_ncs_retries_at_once_then_with_growing_gaps_and_gives_up_after_three_retries() -> None:
    receiver = Receiver(answer=lambda n: (500, 0.0))
    with receiving(receiver) as url, simulator(target=url, delivery=FAST) as sim:
        sim.call(sim.backend.join, "app-one", name="a", channel="c")
        sim.run(lambda: sim.sender.drain(10))
        (delivery,) = sim.sender.deliveries
    assert delivery.outcome == "failed"
    assert [a.status for a in delivery.attempts] == [500, 500, 500, 500]
    assert len(receiver.seen) == 4
    notes = [events.parse(r.body) for r in receiver.seen]
    assert {n.notice_id for n in notes} == {delivery.notice_id}  # same noticeId on every retry
    gaps = [b.at - a.at for a, b in zip(receiver.seen, receiver.seen[1:], strict=False)]
    assert gaps[0] < 0.15  # the first retry is immediate
    assert 0.2 <= gaps[1] < gaps[2]  # then growing gaps
    assert gaps[2] >= 0.4


def test_an_answer_slower_than_the_timeout_counts_as_a_failure() -> None:
    receiver = Receiver(answer=lambda n: (200, 1.0 if n == 0 else 0.0))
    policy = ncs.DeliveryPolicy(retry_gaps_s=(0.0, 0.1, 0.2), timeout_s=0.3)
    with receiving(receiver) as url, simulator(target=url, delivery=policy) as sim:
        sim.call(sim.backend.join, "app-one", name="a", channel="c")
        sim.run(lambda: sim.sender.drain(10))
        (delivery,) = sim.sender.deliveries
    assert [a.status for a in delivery.attempts] == [None, 200]
    assert delivery.outcome == "delivered"


def test_duplicates_drops_and_shuffling_are_applied_on_request() -> None:
    receiver = Receiver()
    policy = ncs.DeliveryPolicy(retry_gaps_s=(0.0,), duplicates=1.0, shuffle=True)
    with receiving(receiver) as url, simulator(target=url, delivery=policy, seed=3) as sim:
        orders = []
        for i in range(8):
            agent = sim.call(sim.backend.join, "app-one", name=f"a{i}", channel="c")
            sim.call(sim.backend.stop, agent.agent_id)
        sim.run(lambda: sim.sender.drain(10))
        by_agent: dict[str, list[int]] = {}
        for note in (events.parse(r.body) for r in receiver.seen):
            assert note.agent_id is not None
            by_agent.setdefault(note.agent_id, []).append(note.event_type)
        orders = [tuple(dict.fromkeys(types)) for types in by_agent.values()]
        notices = [events.parse(r.body).notice_id for r in receiver.seen]
    assert len(receiver.seen) == 2 * 8 * 4  # every notification twice
    assert all(notices.count(n) == 2 for n in notices)
    assert {o[0] for o in orders} == {101}
    assert {tuple(sorted(o[1:])) for o in orders} == {(102, 103, 112)}
    assert any(o[1:] != (102, 103, 112) for o in orders)  # some sessions ended out of order

    dropping = ncs.DeliveryPolicy(drop=1.0)
    with receiving(Receiver()) as url, simulator(target=url, delivery=dropping) as sim:
        sim.call(sim.backend.join, "app-one", name="lost", channel="c")
        sim.run(lambda: sim.sender.drain(5))
        assert sim.sender.stats()["dropped"] == 1


# REST API ---------------------------------------------------------------------------------------


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_the_list_defaults_to_running_agents_of_the_last_two_hours_twenty_per_page() -> None:
    clock = Clock(1_800_000_000)
    with simulator(clock=clock) as sim:
        app = SimApp(
            app_id="app-one",
            webhook_secret="s",
            customer_id="cid",
            customer_secret="csecret",
            pcu_cap=100,
        )
        sim.backend.apps["app-one"] = app
        clock.now -= 3 * 3600
        old = [
            sim.call(sim.backend.join, "app-one", name=f"old-{i}", channel="c") for i in range(2)
        ]
        clock.now += 3 * 3600 - 60
        running = [
            sim.call(sim.backend.join, "app-one", name=f"run-{i}", channel="c") for i in range(25)
        ]
        stopped = sim.call(sim.backend.join, "app-one", name="stopped", channel="c")
        sim.call(sim.backend.stop, stopped.agent_id)
        clock.now += 60

        first = rest(sim, "GET", "agents").json()
        assert first["status"] == "ok"
        assert first["data"]["count"] == 20 and first["meta"]["total"] == 25
        expected = sorted(running, key=lambda a: (a.start_ts, a.agent_id))
        assert [i["agent_id"] for i in first["data"]["list"]] == [a.agent_id for a in expected[:20]]
        assert first["meta"]["cursor"] == expected[20].agent_id
        assert first["data"]["list"][0].keys() == {"start_ts", "status", "agent_id"}
        second = rest(sim, "GET", "agents", params={"cursor": first["meta"]["cursor"]}).json()
        assert [i["agent_id"] for i in second["data"]["list"]] == [
            a.agent_id for a in expected[20:]
        ]
        assert second["meta"]["cursor"] == ""

        wide = rest(sim, "GET", "agents", params={"from_time": 0, "limit": 100}).json()
        assert wide["meta"]["total"] == 27  # the two started three hours ago too
        assert {i["agent_id"] for i in wide["data"]["list"]} >= {a.agent_id for a in old}
        ended = rest(sim, "GET", "agents", params={"state": "4,6"}).json()
        assert [i["agent_id"] for i in ended["data"]["list"]] == [stopped.agent_id]
        assert [i["status"] for i in ended["data"]["list"]] == ["STOPPED"]
        bad = rest(sim, "GET", "agents", params={"state": "running"})
        assert (bad.status_code, bad.json()["reason"]) == (400, "InvalidFieldValue")
        assert set(bad.json()) == {"detail", "reason"}


def test_the_list_may_insist_on_one_state_per_query_and_resumes_past_a_departed_cursor() -> None:
    with simulator(single_state_list=True) as sim:
        joined = [
            sim.call(sim.backend.join, "app-one", name=f"a{i}", channel="c") for i in range(3)
        ]
        first, second, third = sorted(joined, key=lambda a: (a.start_ts, a.agent_id))
        several = rest(sim, "GET", "agents", params={"state": "1,2"})
        assert (several.status_code, several.json()["reason"]) == (400, "InvalidFieldValue")
        page = rest(sim, "GET", "agents", params={"state": "2", "limit": 1}).json()
        assert [i["agent_id"] for i in page["data"]["list"]] == [first.agent_id]
        assert page["meta"]["cursor"] == second.agent_id
        sim.call(sim.backend.stop, second.agent_id)  # the cursor's agent leaves the listing
        params = {"state": "2", "limit": 1, "cursor": page["meta"]["cursor"]}
        after = rest(sim, "GET", "agents", params=params).json()
        assert [i["agent_id"] for i in after["data"]["list"]] == [third.agent_id]
        assert after["meta"]["cursor"] == ""
        sim.call(sim.backend.inject, "list", [503], after=1)
        statuses = [rest(sim, "GET", "agents").status_code for _ in range(3)]
        assert statuses == [200, 503, 200]


def test_join_refuses_the_agent_past_the_pcu_cap_and_a_name_in_use() -> None:
    with simulator() as sim:
        body = {"properties": {"channel": "c"}}
        ids = [rest(sim, "POST", "join", json={**body, "name": f"a{i}"}).json() for i in range(3)]
        assert {i["status"] for i in ids} == {"RUNNING"}
        over = rest(sim, "POST", "join", json={**body, "name": "a3"})
        assert over.status_code == 422
        assert over.json()["reason"] == "ConcurrencyLimitExceeded"
        same = rest(sim, "POST", "join", json={**body, "name": "a3"})
        assert same.status_code == 422
        assert rest(sim, "POST", f"agents/{ids[0]['agent_id']}/leave").status_code == 200
        again = rest(sim, "POST", f"agents/{ids[0]['agent_id']}/leave")
        assert (again.status_code, again.json()["reason"]) == (404, "TaskNotFound")
        taken = rest(sim, "POST", "join", json={**body, "name": "a1"})
        assert (taken.status_code, taken.json()["reason"]) == (409, "TaskConflict")
        assert rest(sim, "POST", "join", json={**body, "name": "a3"}).status_code == 200
        missing = rest(sim, "POST", "join", json={"name": "x"})
        assert (missing.status_code, missing.json()["reason"]) == (400, "MissingRequiredField")
        query = rest(sim, "GET", f"agents/{ids[0]['agent_id']}").json()
        assert query["status"] == "STOPPED" and query["stop_ts"] > 0 and query["message"] == "OK"


def test_history_answers_only_while_the_agent_runs_unless_kept_after_stop() -> None:
    for keep, after_stop in ((False, 404), (True, 200)):
        with simulator(keep_history_after_stop=keep) as sim:
            agent = sim.call(sim.backend.join, "app-one", name="a", channel="c")
            sim.call(sim.backend.talk, agent.agent_id, user="hi", assistant="hello")
            running = rest(sim, "GET", f"agents/{agent.agent_id}/history")
            assert running.status_code == 200
            assert running.json()["status"] == "RUNNING"
            assert running.json()["contents"] == [
                {"role": "user", "content": "hi"},
                {"role": "assistant", "content": "hello"},
            ]
            sim.call(sim.backend.stop, agent.agent_id)
            assert rest(sim, "GET", f"agents/{agent.agent_id}/history").status_code == after_stop
            unknown = rest(sim, "GET", "agents/NOPE/history")
            assert (unknown.status_code, unknown.json()["reason"]) == (404, "TaskNotFound")


def test_every_request_target_is_recorded_and_an_id_agora_never_makes_is_not_found() -> None:
    with simulator() as sim:
        sim.call(sim.backend.join, "app-one", name="a", channel="c", agent_id="agënt")
        odd = rest(sim, "GET", "agents/ag%C3%ABnt/history")
        missing = rest(sim, "GET", "admin/secret?evil=1")
        requests = sim.call(lambda: list(sim.backend.requests))
    assert (odd.status_code, odd.json()["reason"]) == (404, "TaskNotFound")
    assert missing.status_code == 404  # no route: recorded all the same
    assert [r.rsplit("/app-one/", 1)[1] for r in requests] == [
        "agents/ag%C3%ABnt/history",
        "admin/secret?evil=1",
    ]


def test_turns_are_paged_as_documented() -> None:
    with simulator() as sim:
        agent = sim.call(sim.backend.join, "app-one", name="a", channel="c")
        for i in range(23):
            sim.call(sim.backend.talk, agent.agent_id, user=f"u{i}", assistant="a", quiet=True)
        default = rest(sim, "GET", f"agents/{agent.agent_id}/turns").json()
        assert default["pagination"] == {"page_index": 1, "total_pages": 1, "is_last_page": True}
        assert default["total_turn_count"] == 23 and len(default["turns"]) == 23
        assert isinstance(default["turns"][0]["metrics"]["segmented_latency_ms"], list)
        pages = [
            rest(
                sim,
                "GET",
                f"agents/{agent.agent_id}/turns",
                params={"page_index": i, "page_size": 10},
            ).json()
            for i in (1, 2, 3)
        ]
        assert [len(p["turns"]) for p in pages] == [10, 10, 3]
        assert [p["pagination"]["is_last_page"] for p in pages] == [False, False, True]
        assert {p["pagination"]["total_pages"] for p in pages} == {3}
        assert [t["turn_id"] for p in pages for t in p["turns"]] == list(range(1, 24))
        small = rest(sim, "GET", f"agents/{agent.agent_id}/turns", params={"page_size": 5})
        assert (small.status_code, small.json()["reason"]) == (400, "InvalidFieldValue")


def test_requests_need_basic_credentials_or_a_token_signed_for_the_app() -> None:
    with simulator() as sim:
        agent = sim.call(sim.backend.join, "app-one", name="a", channel="c")
        path = f"agents/{agent.agent_id}"

        def token(certificate: str, app_id: str = "app-one") -> dict[str, str]:
            minted = accesstoken.convoai(
                app_id=app_id,
                certificate=certificate,
                channel="c",
                account="0",
                issued_at=int(time.time()),
            )
            return {"Authorization": f"agora token={minted}"}

        wrong_basic = {"Authorization": "Basic " + base64.b64encode(b"cid:nope").decode()}
        for headers in ({}, wrong_basic, token("0" * 32), token(APP.certificate or "", "other")):
            refused = rest(sim, "GET", path, headers=headers)
            assert refused.status_code == 401, headers
            assert refused.json() == {
                "detail": "authentication failed",
                "reason": "InvalidPermission",
            }
        assert rest(sim, "GET", path, headers=token(APP.certificate or "")).status_code == 200
        assert rest(sim, "GET", path).status_code == 200


def test_injected_faults_answer_first_with_retry_after_then_the_real_answer() -> None:
    with simulator(legacy_errors=True) as sim:
        agent = sim.call(sim.backend.join, "app-one", name="a", channel="c")
        sim.call(sim.backend.inject, "query", [429, 503], retry_after="2", latency_s=0.2)
        started = time.monotonic()
        answers = [rest(sim, "GET", f"agents/{agent.agent_id}") for _ in range(3)]
        elapsed = time.monotonic() - started
        assert [a.status_code for a in answers] == [429, 503, 200]
        assert answers[0].headers["retry-after"] == "2"
        assert answers[0].json() == {
            "message": "injected 429",
            "requestResponse": {},
            "statusCode": "TooManyRequests",
            "taskId": "",
        }
        assert elapsed >= 0.6  # the added latency, on every request
        calls = poll(lambda: [c.status for c in sim.backend.calls if c.endpoint == "query"])
        assert calls == [429, 503, 200]


@pytest.mark.parametrize("target", ["http://127.0.0.1:9", "http://127.0.0.1:9/v1/webhooks/agora"])
def test_the_webhook_url_is_derived_from_the_target(target: str) -> None:
    sender = ncs.Sender(target, {"app-one": "s"})
    expected = (
        "http://127.0.0.1:9/v1/webhooks/agora/app-one"
        if target.endswith(":9")
        else "http://127.0.0.1:9/v1/webhooks/agora"
    )
    assert sender.url_for("app-one") == expected
    asyncio.run(sender.aclose())
