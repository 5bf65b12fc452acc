"""Any arrival order, any number of copies: the same final record as in-order delivery.

Hypothesis generates agent sessions (101, 110 k times, 111, 102 STOPPED or FAILED, 103, optionally 112),
delivers them once in order to one agent and, to a twin agent, in a random permutation with
random byte-identical duplicates (Agora's redundant sends). Both records must be equal once the
ids are mapped: agent columns, transitions, errors, metrics, turns, history and the history job.

Sessions also cover the order rules of CONTRACT §4: a second, different stop (the earliest by
event time is the end, FAILED on a tie), a 102 without `start_ts` (the slot is what it would have
been had the start come first), and labels and names that differ from event to event (a name
from the earliest event that carries one; labels merged key by key, the latest value winning).

Transitions are compared on (from, to, cause, event time). Which notification carried the
evidence (`notice_id`, `inferred`) legitimately differs: a 102 that arrives first implies the join
that a later 101 confirms. The log is append-only, so when a later arrival corrects what an
earlier one said (an earlier stop, a start learned after the stop) it records the correction as
one more row; then the path the agent took, read in event time up to its end, is what must match.
"""

from __future__ import annotations

import itertools
import json
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from starlette.testclient import TestClient

from service import config
from service.app import create_app
from tests.factories import Delivery, Sql, deliver, environment, post

_ids = itertools.count()
# Fixed for the whole run (hypothesis replays draws), four days before it began.
LATEST_START = int(time.time()) - 4 * 86_400


@pytest.fixture(scope="module")
def module_client(create_database: Callable[[], str]) -> Iterator[tuple[TestClient, Sql]]:
    url = create_database()
    with TestClient(create_app(config.load(environment(url)))) as client:
        yield client, Sql(url)


@st.composite
def sessions(draw: st.DrawFn) -> dict[str, Any]:
    # Sessions that ended in the past: a time more than a day ahead of arrival counts as absent.
    start = draw(st.integers(min_value=1_700_000_000, max_value=LATEST_START))
    duration = draw(st.integers(min_value=0, max_value=72 * 3600))
    return {
        "start": start,
        "stop": start + duration,
        "errors": draw(
            st.lists(
                st.tuples(st.sampled_from(["llm", "tts", "asr", "agent"]), st.integers(0, 600)),
                max_size=4,
            )
        ),
        "status": draw(st.sampled_from(["STOPPED", "FAILED"])),
        "message": draw(st.sampled_from(["OK", "Idle for too long", "RTC connection error", None])),
        "turns": draw(st.integers(min_value=0, max_value=3)),
        "labels": draw(st.sampled_from([None, {"tenant": "acme"}])),
        # A second 102 with another outcome, some seconds before or after the first.
        "second_stop": draw(
            st.none()
            | st.tuples(
                st.sampled_from(["STOPPED", "FAILED"]),
                st.integers(min_value=-30, max_value=30),
                st.sampled_from(["OK", "RTC connection error", None]),
            )
        ),
        "start_on_stop": draw(st.booleans()),
        # Per event (by position): labels and a name that vary, or none.
        "varying": draw(
            st.lists(
                st.tuples(
                    st.sampled_from([None, {"tier": "gold"}, {"tier": "free", "x": 1}, {}]),
                    st.sampled_from([None, "support", "sales"]),
                ),
                min_size=8,
                max_size=8,
            )
        ),
    }


def session_deliveries(agent_id: str, s: dict[str, Any]) -> list[Delivery]:
    base: dict[str, Any] = {
        "agent_id": agent_id,
        "name": "support",
        "channel": "sess-1",
        "start_ts": s["start"],
    }
    if s["labels"] is not None:
        base["labels"] = s["labels"]
    notice = (f"{agent_id}:{i}" for i in itertools.count())
    out = [deliver(101, base, notice_id=next(notice), notify_ms=s["start"] * 1000 + 5)]
    for i, (module, code) in enumerate(s["errors"]):
        errors = [{"module": module, "code": code, "message": f"error {i}", "turn_id": i}]
        out.append(
            deliver(
                110,
                {**base, "turn_id": i, "errors": errors},
                notice_id=next(notice),
                notify_ms=s["start"] * 1000 + 100 * (i + 1),
            )
        )
    metrics = [{"turn_id": 1, "asr_ttlw": 400, "llm_ttfb": 700, "tts_ttfb": 100}]
    out.append(
        deliver(
            111,
            {**base, "stop_ts": s["stop"], "metrics": metrics},
            notice_id=next(notice),
            notify_ms=s["stop"] * 1000,
        )
    )
    left = {**base, "stop_ts": s["stop"], "status": s["status"]}
    if s["message"] is not None:
        left["message"] = s["message"]
    if not s["start_on_stop"]:
        del left["start_ts"]
    out.append(deliver(102, left, notice_id=next(notice), notify_ms=s["stop"] * 1000 + 10))
    if s["second_stop"] is not None:
        status, offset, message = s["second_stop"]
        other = {**left, "stop_ts": max(s["start"], s["stop"] + offset), "status": status}
        other.pop("message", None)
        if message is not None:
            other["message"] = message
        out.append(deliver(102, other, notice_id=next(notice), notify_ms=s["stop"] * 1000 + 15))
    contents = [{"role": "assistant", "content": "hello"}, {"role": "user", "content": "bye"}]
    out.append(
        deliver(
            103,
            {**base, "stop_ts": s["stop"], "contents": contents},
            notice_id=next(notice),
            notify_ms=s["stop"] * 1000 + 20,
        )
    )
    if s["turns"]:
        turns = [
            {
                "turn_id": t,
                "start": {"start_at": s["start"] * 1000 + t, "type": "voice_input"},
                "end": {"end_at": s["start"] * 1000 + t + 1, "type": "ok"},
                "metrics": {"e2e_latency_ms": 900},
            }
            for t in range(1, s["turns"] + 1)
        ]
        out.append(
            deliver(
                112,
                {
                    **base,
                    "stop_ts": s["stop"],
                    "total_turn_count": s["turns"],
                    "is_truncated": False,
                    "turns": turns,
                },
                notice_id=next(notice),
                notify_ms=s["stop"] * 1000 + 30,
            )
        )
    return [_vary(delivery, i, s) for i, delivery in enumerate(out)]


def _vary(delivery: Delivery, position: int, s: dict[str, Any]) -> Delivery:
    """The same notification with this position's labels and name merged in."""
    labels, name = s["varying"][position % len(s["varying"])]
    if labels is None and name is None:
        return delivery
    document = json.loads(delivery.body)
    payload = document["payload"]
    if labels is not None:
        payload["labels"] = {**payload.get("labels", {}), **labels}
    if name is not None:
        payload["name"] = name
    return deliver(
        document["eventType"],
        payload,
        notice_id=document["noticeId"],
        notify_ms=document["notifyMs"],
    )


def path(transitions: list[dict[str, Any]]) -> list[tuple[str, Any]]:
    """The states the agent went through, in event time, up to its end (the first terminal
    state; FAILED before STOPPED at the same time)."""
    rank = {"FAILED": 0, "STOPPED": 1}
    ordered = sorted(transitions, key=lambda t: (t["event_at"], rank.get(t["to_state"], 2)))
    out: list[tuple[str, Any]] = []
    for t in ordered:
        out.append((t["to_state"], t["event_at"]))
        if t["to_state"] in rank:
            break
    return out


def record(sql: Sql, agent_id: str) -> dict[str, Any]:
    """Everything stored about the agent, with its own id replaced so twins compare equal."""

    def scrub(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [
            {k: (v.replace(agent_id, "AGENT") if isinstance(v, str) else v) for k, v in row.items()}
            for row in rows
        ]

    params = {"a": agent_id}
    return {
        "agent": scrub(
            sql.rows(
                "SELECT agent_id, app_id, name, channel, labels, state, state_at, started_at, stopped_at, stop_status,"
                " stop_message, active_from, active_until, warning, last_event_at, name_at, channel_at"
                " FROM agent WHERE agent_id = %(a)s",
                **params,
            )
        ),
        "transitions": sql.rows(
            "SELECT from_state, to_state, cause, source, event_at FROM agent_transition WHERE agent_id = %(a)s ORDER BY event_at, id",
            **params,
        ),
        "errors": scrub(
            sql.rows(
                "SELECT notice_id, position, module, code, message, turn_id, event_at FROM agent_error WHERE agent_id = %(a)s ORDER BY notice_id, position",
                **params,
            )
        ),
        "metrics": scrub(
            sql.rows(
                "SELECT notice_id, position, turn_id, asr_ttlw, llm_ttfb, llm_ttfs, tts_ttfb, figures FROM agent_metric WHERE agent_id = %(a)s ORDER BY notice_id, position",
                **params,
            )
        ),
        "turns": sql.rows(
            "SELECT turn_id, start_at, end_at, start_type, end_type, e2e_latency_ms, source FROM agent_turn WHERE agent_id = %(a)s ORDER BY turn_id",
            **params,
        ),
        "history": sql.rows(
            "SELECT status, source, contents, reason FROM history WHERE agent_id = %(a)s", **params
        ),
        "jobs": sql.value("SELECT count(*) FROM history_job WHERE agent_id = %(a)s", **params),
        "notifications": sql.value(
            "SELECT count(*) FROM notification WHERE agent_id = %(a)s", **params
        ),
    }


def end_state(s: dict[str, Any]) -> str:
    """The earliest stop by event time; FAILED on a tie."""
    ends = [(s["stop"], s["status"] != "FAILED", s["status"])]
    if s["second_stop"] is not None:
        status, offset, _ = s["second_stop"]
        ends.append((max(s["start"], s["stop"] + offset), status != "FAILED", status))
    return min(ends)[2]


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(session=sessions(), data=st.data())
def test_any_order_and_duplicates_end_in_the_in_order_record(
    module_client: tuple[TestClient, Sql], session: dict[str, Any], data: st.DataObject
) -> None:
    client, sql = module_client
    n = next(_ids)
    in_order, shuffled = f"ordered-{n}", f"shuffled-{n}"
    for delivery in session_deliveries(in_order, session):
        assert post(client, delivery).json() == {"status": "accepted"}

    twin = session_deliveries(shuffled, session)
    copies = data.draw(st.lists(st.sampled_from(twin), max_size=len(twin) * 2), label="duplicates")
    arrival = data.draw(st.permutations(twin + copies), label="arrival order")
    answers = [post(client, delivery) for delivery in arrival]
    assert all(a.status_code == 200 for a in answers)
    assert sorted(a.json()["status"] for a in answers) == sorted(
        ["accepted"] * len(twin) + ["duplicate"] * len(copies)
    )

    expected = record(sql, in_order)
    got = record(sql, shuffled)
    corrections = session["second_stop"] is not None or not session["start_on_stop"]
    if corrections:
        assert path(got.pop("transitions")) == path(expected.pop("transitions"))
    assert got == expected
    # And the in-order record is what the session says.
    assert expected["agent"][0]["state"] == end_state(session)
    if not corrections:
        assert [(t["from_state"], t["to_state"]) for t in expected["transitions"]] == [
            ("IDLE", "RUNNING"),
            ("RUNNING", session["status"]),
        ]
    agent = expected["agent"][0]
    assert agent["active_from"] is not None and agent["active_until"] is not None
    assert expected["jobs"] == 1 and expected["history"][0]["status"] == "complete"
    assert len(expected["errors"]) == len(session["errors"])
