"""The console's pages over HTTP: sessions, CSRF, escaping, headers, filters and links.

What moves (the stream in a browser, live updates) is tested in a real browser in
tests/browser/; here every page is requested as a plain client would.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from starlette.testclient import TestClient

from service import config, signatures
from service.app import create_app
from service.console import layout
from tests.factories import (
    APP_ID,
    READ_TOKEN,
    SCOPED_TOKEN,
    SECOND_APP,
    SECOND_SECRET,
    SECRET,
    apps_file,
    deliver,
    payload,
    poll,
    post,
    scoped_environment,
)

KEY = "console-session-key-for-the-tests-0123456789"
HOSTILE = '<script>alert("x")</script>\'"><img src=x onerror=alert(1)>'
CONSOLE_FILES = Path(__file__).parents[2] / "service" / "console"


@pytest.fixture
def console(make_settings: Callable[..., config.Settings]) -> Iterator[TestClient]:
    with TestClient(create_app(make_settings(CONSOLE_SESSION_KEY=KEY))) as client:
        yield client


def csrf_of(html: str) -> str:
    found = re.search(r'name="csrf" value="([^"]+)"', html)
    assert found is not None, html
    return found.group(1)


def login(client: TestClient, token: str = READ_TOKEN, **extra: str) -> object:
    form = client.get("/console/login")
    data = {"token": token, "csrf": csrf_of(form.text), **extra}
    return client.post(
        "/console/login", data=data, headers={"Origin": "http://testserver"}, follow_redirects=False
    )


def test_without_a_session_every_page_leads_to_the_login_form(console: TestClient) -> None:
    for path in (
        "/console",
        "/console/agents?state=RUNNING",
        "/console/agents/a1",
        "/console/errors",
    ):
        response = console.get(path, follow_redirects=False)
        assert response.status_code == 303
        assert response.headers["location"].startswith("/console/login?next=")
    form = console.get("/console/login")
    assert form.status_code == 200 and 'name="token"' in form.text
    assert console.get("/console/fragments/agent-rows").status_code == 401
    assert console.get("/console/stream").json() == {"error": "unauthorized"}


def test_logging_in_sets_a_strict_http_only_cookie_that_holds_no_token(console: TestClient) -> None:
    response = login(console, next="/console/agents?state=RUNNING")
    assert response.status_code == 303  # type: ignore[attr-defined]
    assert response.headers["location"] == "/console/agents?state=RUNNING"  # type: ignore[attr-defined]
    cookie = next(
        c
        for c in response.headers.get_list("set-cookie")  # type: ignore[attr-defined]
        if c.startswith("ledger_console=")
    )
    attributes = {part.strip().lower() for part in cookie.split(";")[1:]}
    assert {"httponly", "samesite=strict", "path=/console"} <= attributes
    assert "secure" not in attributes  # plain http
    assert READ_TOKEN not in cookie
    assert console.get("/console").status_code == 200


def test_the_cookie_is_secure_when_the_request_came_over_https(console: TestClient) -> None:
    form = console.get("/console/login")
    response = console.post(
        "/console/login",
        data={"token": READ_TOKEN, "csrf": csrf_of(form.text)},
        headers={"Origin": "https://testserver", "X-Forwarded-Proto": "https"},
        follow_redirects=False,
    )
    assert "; secure" in response.headers["set-cookie"].lower()


def test_a_wrong_token_is_refused_and_says_so(console: TestClient) -> None:
    response = login(console, token="not-a-token")
    assert response.status_code == 401  # type: ignore[attr-defined]
    assert "That token is not accepted." in response.text  # type: ignore[attr-defined]
    assert console.get("/console", follow_redirects=False).status_code == 303


@pytest.mark.parametrize(
    ("csrf", "origin"),
    [
        ("forged", "http://testserver"),  # not the form's token
        (None, "http://evil.example"),  # the form's token, posted from another site
    ],
)
def test_a_login_posted_without_our_form_is_refused(
    console: TestClient, csrf: str | None, origin: str
) -> None:
    form = console.get("/console/login")
    response = console.post(
        "/console/login",
        data={"token": READ_TOKEN, "csrf": csrf or csrf_of(form.text)},
        headers={"Origin": origin},
        follow_redirects=False,
    )
    assert response.status_code == 403
    assert "ledger_console" not in response.headers.get("set-cookie", "")


def test_after_logging_in_only_console_pages_are_a_destination(console: TestClient) -> None:
    for target in ("https://evil.example/", "//evil.example/console", "/v1/agents", "/console\\@x"):
        assert login(console, next=target).headers["location"] == "/console"  # type: ignore[attr-defined]


def test_logging_out_needs_the_session_csrf_token_and_ends_the_session(console: TestClient) -> None:
    login(console)
    page = console.get("/console")
    refused = console.post(
        "/console/logout", data={"csrf": "forged"}, headers={"Origin": "http://testserver"}
    )
    assert refused.status_code == 403
    assert console.get("/console", follow_redirects=False).status_code == 200
    done = console.post(
        "/console/logout",
        data={"csrf": csrf_of(page.text)},
        headers={"Origin": "http://testserver"},
        follow_redirects=False,
    )
    assert (done.status_code, done.headers["location"]) == (303, "/console/login")
    assert console.get("/console", follow_redirects=False).status_code == 303


def test_a_tampered_cookie_is_no_session(console: TestClient) -> None:
    login(console)
    cookie = console.cookies.get("ledger_console")
    assert cookie is not None
    body, _, signature = cookie.partition(".")
    console.cookies.clear()
    console.cookies.set("ledger_console", body + "x." + signature)
    assert console.get("/console", follow_redirects=False).status_code == 303


def test_a_session_ends_when_its_token_is_removed_from_the_configuration(
    make_settings: Callable[..., config.Settings],
) -> None:
    with TestClient(create_app(make_settings(CONSOLE_SESSION_KEY=KEY))) as before:
        login(before)
        cookie = before.cookies.get("ledger_console")
    settings = make_settings(CONSOLE_SESSION_KEY=KEY, READ_API_TOKENS="another-token")
    with TestClient(create_app(settings), cookies={"ledger_console": cookie or ""}) as after:
        assert after.get("/console", follow_redirects=False).status_code == 303


def test_without_a_session_key_the_console_says_it_is_off(client: TestClient) -> None:
    response = client.get("/console")
    assert response.status_code == 503
    assert "CONSOLE_SESSION_KEY" in response.text


def test_every_page_forbids_inline_scripts_and_anything_from_elsewhere(console: TestClient) -> None:
    post(console, deliver(101, payload("a1")))
    login(console)
    for path in (
        "/console/login",
        "/console",
        "/console/agents",
        "/console/agents/a1",
        "/console/errors",
    ):
        response = console.get(path)
        assert response.status_code == 200, path
        policy = response.headers["content-security-policy"]
        assert policy == layout.CSP
        assert "default-src 'self'" in policy and "script-src 'self'" in policy
        assert "unsafe-inline" not in policy and "unsafe-eval" not in policy
        assert response.headers["x-frame-options"] == "DENY"
        # One script, ours; no inline script, no event handler attribute, nothing from elsewhere.
        assert re.findall(r"<script[^>]*>", response.text) == [
            f'<script src="/console/static/console.js?v={layout.__version__}" defer>'
        ]
        assert not re.search(r"\son[a-z]+=", response.text)
        assert "http://" not in response.text and "https://" not in response.text


def test_no_asset_of_the_console_comes_from_elsewhere() -> None:
    for path in CONSOLE_FILES.rglob("*"):
        if path.suffix in (".html", ".js", ".css", ".svg"):
            text = path.read_text(encoding="utf-8")
            found = re.findall(r"(?:https?:)?//[a-z0-9.-]+\.[a-z]{2,}", text)
            assert found in ([], ["http://www.w3.org"]), (path, found)  # the SVG namespace


def test_static_files_are_served_from_the_package(console: TestClient) -> None:
    script = console.get("/console/static/console.js")
    assert script.status_code == 200 and "EventSource" in script.text
    assert console.get("/console/static/console.css").status_code == 200


def test_untrusted_names_labels_and_transcripts_are_escaped_everywhere(console: TestClient) -> None:
    start = 1_795_000_000
    post(
        console,
        deliver(
            101,
            payload("a1", name=HOSTILE, channel=HOSTILE, start_ts=start, labels={HOSTILE: HOSTILE}),
        ),
    )
    post(
        console,
        deliver(110, payload("a1", errors=[{"module": HOSTILE, "code": 1, "message": HOSTILE}])),
    )
    post(
        console,
        deliver(
            103,
            payload(
                "a1",
                contents=[
                    {"role": "user", "content": HOSTILE},
                    {"role": HOSTILE, "content": HOSTILE},
                ],
            ),
        ),
    )
    login(console)
    hostile_filter = "/console/errors" + layout.query({"module": HOSTILE, "code": "1"})
    for path in (
        "/console",
        "/console/agents",
        "/console/agents/a1",
        "/console/errors",
        hostile_filter,
    ):
        text = console.get(path).text
        assert "<script>alert" not in text and "<img src=x" not in text, path
        assert len(re.findall(r"<script", text)) == 1, path
    agent = console.get("/console/agents/a1").text
    assert (
        agent.count("&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt;&#39;&#34;&gt;&lt;img src=x")
        >= 5
    )


def test_the_agents_list_takes_the_apis_filters_as_its_url(console: TestClient) -> None:
    post(console, deliver(101, payload("a1", labels={"tenant": "acme"})))
    post(console, deliver(101, payload("a2", labels={"tenant": "other"})))
    login(console)
    page = console.get("/console/agents?state=RUNNING&label.tenant=acme")
    assert page.status_code == 200
    assert 'data-agent-id="a1"' in page.text and 'data-agent-id="a2"' not in page.text
    # What the filter form sends is redirected to the API's own parameters.
    form = console.get(
        "/console/agents?app_id=&state=running&channel=&label=tenant%3Dacme&since=2026-01-31T12:00&until=",
        follow_redirects=False,
    )
    assert form.status_code == 303
    assert form.headers["location"] == (
        "/console/agents?state=RUNNING&label.tenant=acme&since=2026-01-31T12%3A00%3A00Z"
    )
    bad = console.get("/console/agents?state=sleeping")
    assert bad.status_code == 400 and "state: one of IDLE" in bad.text


def test_an_agent_page_tells_its_story(console: TestClient) -> None:
    start = 1_795_000_000
    post(console, deliver(101, payload("a1", start_ts=start)))
    post(
        console,
        deliver(111, payload("a1", metrics=[{"turn_id": 1, "asr_ttlw": 300, "tts_ttfb": 90}])),
    )
    post(
        console,
        deliver(
            110, payload("a1", errors=[{"module": "tts", "code": 429, "message": "rate limited"}])
        ),
    )
    turns = [
        {
            "turn_id": 1,
            "start": {"start_at": (start + 1) * 1000, "type": "voice_input"},
            "end": {"end_at": (start + 4) * 1000, "type": "ok"},
            "metrics": {
                "e2e_latency_ms": 850,
                "segmented_latency_ms": {"asr_ttlw": 300, "llm_ttft": 400, "tts_ttfb": 90},
            },
        }
    ]
    post(
        console,
        deliver(
            102, payload("a1", start_ts=start, stop_ts=start + 10, status="STOPPED", message="OK")
        ),
    )
    post(
        console,
        deliver(
            103,
            payload(
                "a1",
                contents=[
                    {"role": "user", "content": "Is my order late?"},
                    {"role": "assistant", "content": "It arrives today."},
                ],
            ),
        ),
    )
    post(console, deliver(112, payload("a1", turns=turns)))
    login(console)
    page = console.get("/console/agents/a1").text
    for expected in (
        "IDLE → RUNNING",
        "RUNNING → STOPPED",
        "metrics, turn 1",
        "error tts 429",
        "transcript received",
        "Is my order late?",
        "It arrives today.",
        "850 ms",
        "10 s",  # the duration
        "101 agent_joined",
        "112 turns_finished",
    ):
        assert expected in page, expected


def test_an_agent_id_in_several_apps_asks_which(
    make_settings: Callable[..., config.Settings], tmp_path: Path
) -> None:
    settings = make_settings(
        CONSOLE_SESSION_KEY=KEY,
        AGORA_APP_ID="",
        AGORA_WEBHOOK_SECRETS="",
        LEDGER_APPS_FILE=apps_file(tmp_path, (APP_ID, SECRET), (SECOND_APP, SECOND_SECRET)),
    )
    with TestClient(create_app(settings)) as client:
        post(client, deliver(101, payload("twin")))
        post(client, deliver(101, payload("twin"), secret=SECOND_SECRET), app_id=SECOND_APP)
        login(client)
        page = client.get("/console/agents/twin")
        assert page.status_code == 409
        assert f"/console/agents/twin?app_id={SECOND_APP}" in page.text
        assert client.get(f"/console/agents/twin?app_id={SECOND_APP}").status_code == 200
        assert client.get("/console/agents/twin?app_id=nope").status_code == 404


def test_the_overview_shows_each_app_against_its_cap(console: TestClient) -> None:
    post(console, deliver(101, payload("a1")))
    login(console)
    page = console.get("/console")
    assert page.status_code == 200
    assert f'data-pcu-app="{APP_ID}"' in page.text
    assert re.search(r"data-pcu-current>1<", page.text)
    assert 'data-stream="/console/stream?after=' in page.text
    for window in ("24h", "7d", "30d"):
        assert console.get(f"/console?window={window}").status_code == 200
    assert console.get("/console?window=1y").status_code == 400


def test_a_huge_payload_is_shown_cut_and_the_page_stays_small(console: TestClient) -> None:
    transcript = [{"role": "user", "content": "x" * 1000} for _ in range(300)]
    post(console, deliver(101, payload("a1")))
    post(console, deliver(103, payload("a1", contents=transcript)))
    login(console)
    page = console.get("/console/agents/a1").text
    assert "the API has it whole" in page
    assert len(page) < 800_000


@pytest.fixture
def counting(make_settings: Callable[..., config.Settings]) -> Iterator[TestClient]:
    """The console with webhook counts stored every 50 ms instead of every 10 s."""
    settings = make_settings(CONSOLE_SESSION_KEY=KEY, WEBHOOK_COUNTS_FLUSH_S="0.05")
    with TestClient(create_app(settings)) as client:
        yield client


def figure(html: str, attribute: str) -> int | None:
    """The number in the element whose last attribute is `data-ATTRIBUTE` (None if absent)."""
    found = re.search(rf"data-{re.escape(attribute)}>(\d+)<", html)
    return int(found.group(1)) if found else None


def signed(body: bytes, secret: str = SECRET) -> dict[str, str]:
    return {"Content-Type": "application/json", **signatures.sign(body, secret)}


def test_the_overview_counts_how_webhooks_were_answered_and_why_refused(
    counting: TestClient,
) -> None:
    for agent_id in ("a1", "a2", "a3"):
        assert post(counting, deliver(101, payload(agent_id))).json() == {"status": "accepted"}
    repeated = deliver(101, payload("a1"))
    post(counting, repeated)  # a fourth accepted
    for _ in range(2):
        assert post(counting, repeated).json() == {"status": "duplicate"}
    assert post(counting, deliver(101, payload("a4"), product_id=1)).json() == {"status": "ignored"}
    assert post(counting, deliver(101, {"name": "no id"})).json() == {"status": "unapplied"}
    url = f"/v1/webhooks/agora/{APP_ID}"
    body = deliver(101, payload("a5")).body
    for secret in ("wrong", "also-wrong"):
        assert counting.post(url, content=body, headers=signed(body, secret)).status_code == 401
    assert counting.post(url, content=b"{not json", headers=signed(b"{not json")).status_code == 400
    large = b" " * (1024 * 1024 + 1)
    assert counting.post(url, content=large, headers=signed(large)).status_code == 413
    for app_id in ("app-nobody-serves", "app-nobody-serves", "<img src=x onerror=alert(1)>"):
        assert counting.post(f"/v1/webhooks/agora/{app_id}", content=body).status_code == 404
    expected = {
        "webhooks-accepted": 4,
        "webhooks-duplicate": 2,
        "webhooks-ignored": 1,
        "webhooks-unapplied": 1,
        "webhooks-rejected": 4,
        'rejected-reason="invalid_signature"': 2,
        'rejected-reason="invalid_notification"': 1,
        'rejected-reason="payload_too_large"': 1,
    }
    login(counting)

    def shown() -> dict[str, int | None]:
        page = counting.get("/console").text
        return {attribute: figure(page, attribute) for attribute in expected}

    poll(lambda: shown() == expected, timeout=10)
    page = counting.get("/console").text
    assert "1 stored notification waits to be applied" in page
    # Refusals for apps nobody serves are not any app's; a path that is no App ID is "(none)".
    assert "<code>app-nobody-serves</code> 2" in page and "<code>(none)</code> 1" in page
    assert "last 24 h" in page


def nearest_rank(values: list[int], p: float) -> int:
    ordered = sorted(values)
    return ordered[max(math.ceil(p * len(ordered)), 1) - 1]


def test_the_overview_shows_the_days_top_errors_and_turn_latency(console: TestClient) -> None:
    now_ms = int(time.time() * 1000)
    day_ago_ms = now_ms - 86_400_000
    for agent_id, errors in (
        ("a1", [("tts", 429), ("tts", 429), ("llm", 500)]),
        ("a2", [("tts", 429)]),
    ):
        post(console, deliver(101, payload(agent_id)))
        items = [{"module": m, "code": c, "message": "m"} for m, c in errors]
        post(console, deliver(110, payload(agent_id, errors=items)))
    # Older than a day: counted nowhere on the overview.
    stale = [{"module": "asr", "code": 1, "message": "old"}]
    post(console, deliver(110, payload("a1", errors=stale), notify_ms=day_ago_ms - 60_000))
    latencies = [900, 450, 1200, 700, 300, 2600, 800]
    turns = [
        {
            "turn_id": i + 1,
            "end": {"end_at": now_ms - 60_000 + i},
            "metrics": {"e2e_latency_ms": e2e},
        }
        for i, e2e in enumerate(latencies)
    ]
    turns.append(
        {"turn_id": 99, "end": {"end_at": day_ago_ms - 60_000}, "metrics": {"e2e_latency_ms": 1}}
    )
    post(console, deliver(112, payload("a1", turns=turns)))
    login(console)
    page = console.get("/console").text
    rows = re.findall(
        r'data-error-module="([^"]*)" data-error-code="([^"]*)">.*?data-error-count>(\d+)<.*?'
        r"data-error-agents>(\d+)<",
        page,
        re.S,
    )
    assert rows == [("tts", "429", "3", "2"), ("llm", "500", "1", "1")]
    assert "/console/errors?app_id=app-one&amp;module=tts&amp;code=429" in page
    p50, p90 = nearest_rank(latencies, 0.5), nearest_rank(latencies, 0.9)
    assert figure(page, "latency-turns") == len(latencies)
    assert re.search(rf"data-latency-p50>{p50:,} ms<", page), p50
    assert re.search(rf"data-latency-p90>{p90:,} ms<", page), p90


def test_the_overview_shows_each_apps_history_backlog(console: TestClient) -> None:
    start = int(time.time()) - 600
    for agent_id in ("a1", "a2"):
        post(console, deliver(101, payload(agent_id, start_ts=start)))
    post(
        console,
        deliver(102, payload("a1", start_ts=start, stop_ts=start + 60, status="STOPPED")),
    )
    login(console)
    page = console.get("/console").text
    # No worker runs here: the stopped agent's job waits, its history is pending.
    assert figure(page, "backlog-queued") == 1
    assert figure(page, "backlog-running") == 0
    assert figure(page, "histories-pending") == 1
    assert figure(page, "histories-complete") == 0
    post(console, deliver(103, payload("a1", contents=[{"role": "user", "content": "hi"}])))
    page = console.get("/console").text
    assert (figure(page, "histories-complete"), figure(page, "histories-pending")) == (1, 0)


def test_the_errors_page_lists_errors_across_agents_newest_first_with_filters_and_pages(
    console: TestClient,
) -> None:
    now_ms = int(time.time() * 1000)
    sent = []
    for i in range(60):
        agent_id = f"a{i % 3}"
        module, code = ("tts", 429) if i % 2 else ("llm", 500 + i % 4)
        items = [{"module": module, "code": code, "message": f"error {i}"}]
        post(
            console,
            deliver(110, payload(agent_id, errors=items), notify_ms=now_ms - 1000 * (60 - i)),
        )
        sent.append((f"error {i}", agent_id, module, code))
    login(console)
    newest_first = [s for s in reversed(sent)]
    first = console.get("/console/errors")
    assert first.status_code == 200
    assert re.findall(r'class="message">(error \d+)<', first.text) == [
        s[0] for s in newest_first[:50]
    ]
    older = re.search(r'href="(/console/errors\?cursor=[^"]+)">Older', first.text)
    assert older is not None
    second = console.get(older.group(1).replace("&amp;", "&")).text
    assert re.findall(r'class="message">(error \d+)<', second) == [s[0] for s in newest_first[50:]]
    assert "Older →" not in second
    # Each row leads to its agent.
    assert f'href="/console/agents/a2?app_id={APP_ID}"' in first.text
    filtered = console.get("/console/errors?module=llm&code=501").text
    expected = [s[0] for s in newest_first if s[2] == "llm" and s[3] == 501]
    assert re.findall(r'class="message">(error \d+)<', filtered) == expected
    assert console.get(f"/console/errors?app_id={APP_ID}&module=nothing").status_code == 200
    for bad in ("code=4x", "code=99999999999999999999", "cursor=not-ours", "module=" + "m" * 300):
        assert console.get(f"/console/errors?{bad}").status_code == 400, bad
    assert console.get("/console/errors?app_id=nope").status_code == 404


def test_the_errors_page_names_each_rows_agent_and_lists_untimed_errors_last(
    console: TestClient,
) -> None:
    now_ms = int(time.time() * 1000)
    names = {"a1": "front desk", "a2": "after hours"}
    for agent_id, name in names.items():
        post(console, deliver(101, payload(agent_id, name=name)))
    for message, agent_id, at_ms in (
        ("older", "a1", now_ms - 120_000),
        ("untimed", "a1", 1),  # 1970: not a usable time, so no event time is stored
        ("newer", "a2", now_ms - 60_000),
    ):
        items = [{"module": "tts", "code": 429, "message": message}]
        sent = payload(agent_id, name=names[agent_id], errors=items)
        post(console, deliver(110, sent, notify_ms=at_ms))
    login(console)
    page = console.get(f"/console/errors?app_id={APP_ID}").text
    rows = re.findall(
        r'<tr data-error-agent="(a\d)">\s*<td class="time">([^<]*)</td>.*?'
        r'<a href="[^"]*">([^<]*)</a>.*?class="message">(\w+)<',
        page,
        re.S,
    )
    # As GET /v1/errors lists them: newest first, an error without a time after every timed one.
    assert [(agent, name, message) for agent, _, name, message in rows] == [
        ("a2", "after hours", "newer"),
        ("a1", "front desk", "older"),
        ("a1", "front desk", "untimed"),
    ]
    assert rows[-1][1] == "time unknown"


def test_a_scoped_token_sees_nothing_of_another_app_anywhere_in_the_console(
    make_settings: Callable[..., config.Settings], tmp_path: Path
) -> None:
    settings = config.load(
        scoped_environment(
            make_settings().sqlalchemy_url,
            tmp_path,
            CONSOLE_SESSION_KEY=KEY,
            WEBHOOK_COUNTS_FLUSH_S="0.05",
        )
    )
    with TestClient(create_app(settings)) as client:
        for app_id, secret in ((APP_ID, SECRET), (SECOND_APP, SECOND_SECRET)):
            mine = f"agent-of-{app_id}"
            post(
                client,
                deliver(101, payload(mine, name=f"name-{app_id}"), secret=secret),
                app_id=app_id,
            )
            errors = [{"module": f"module-{app_id}", "code": 7, "message": f"message-{app_id}"}]
            post(client, deliver(110, payload(mine, errors=errors), secret=secret), app_id=app_id)
        client.post("/v1/webhooks/agora/app-nobody-serves", content=b"{}")
        login(client, token=SCOPED_TOKEN)
        pages = {
            path: client.get(path)
            for path in ("/console", "/console/agents", "/console/errors", "/console?window=7d")
        }
        for path, page in pages.items():
            assert page.status_code == 200, path
            assert SECOND_APP not in page.text, path
            assert APP_ID in page.text, path
        assert "app-nobody-serves" not in pages["/console"].text
        assert f"message-{APP_ID}" in pages["/console/errors"].text
        assert f"module-{APP_ID}" in pages["/console"].text
        assert client.get(f"/console/agents/agent-of-{SECOND_APP}").status_code == 404
        other = client.get(f"/console/agents/agent-of-{SECOND_APP}?app_id={SECOND_APP}")
        assert other.status_code == 404 and SECOND_APP not in other.text.replace(
            f"agent-of-{SECOND_APP}", ""
        )
        for path in (
            f"/console/errors?app_id={SECOND_APP}",
            f"/console/agents?app_id={SECOND_APP}",
        ):
            assert client.get(path).status_code in (400, 404), path
        rows = client.get(f"/console/fragments/agent-rows?app_id={SECOND_APP}")
        assert f"agent-of-{SECOND_APP}" not in rows.text
