"""The console in a real browser (headless Chromium): log in, read the overview against the API,
follow an agent to its transcript, watch agents arrive without a reload, log out. Every request
a page makes is recorded: all of them must go to the local server, and no page may log an error
(a Content-Security-Policy violation would be one).

Screenshots of the overview and of an agent page are taken from a day of demo-like data; with
`UPDATE_SCREENSHOTS=1` (`make screenshots`) they replace the ones in docs/screenshots/.
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from service import signatures
from tests.browser import seed
from tests.factories import (
    APP_ID,
    READ_TOKEN,
    SCOPED_TOKEN,
    SECOND_APP,
    SECOND_SCOPED_TOKEN,
    SECOND_SECRET,
    Sql,
    deliver,
    payload,
    poll,
    reader_headers,
    scoped_environment,
)
from tests.processes import ServiceProcess, serving

pytestmark = [pytest.mark.browser, pytest.mark.slow]

KEY = "console-session-key-for-the-browser-tests-0123456789"
SCREENSHOTS = Path(__file__).parents[2] / "docs" / "screenshots"
VIEWPORT = {"width": 1360, "height": 900}
WAIT_MS = 10_000


@dataclass
class Site:
    process: ServiceProcess
    seeded: seed.Seeded

    @property
    def url(self) -> str:
        return self.process.url

    def pcu(self) -> dict[str, Any]:
        answer = httpx.get(f"{self.url}/v1/apps/{APP_ID}/pcu", headers=reader_headers(), timeout=5)
        return dict(answer.json())

    def join(self, agent_id: str) -> float:
        """A 101 for a new agent; answers when it was accepted (ms since the epoch)."""
        delivery = deliver(
            101, payload(agent_id, start_ts=int(time.time()), labels={"tenant": "acme"})
        )
        response = httpx.post(
            f"{self.url}/v1/webhooks/agora/{APP_ID}",
            content=delivery.body,
            headers=delivery.headers,
            timeout=10,
        )
        assert response.json() == {"status": "accepted"}
        return time.time() * 1000


@pytest.fixture(scope="module")
def site(
    create_database: Callable[[], str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Site]:
    log_dir = tmp_path_factory.mktemp("browser")
    # Two apps, each with a token of its own; the demo day is APP_ID's.
    env = scoped_environment(
        create_database(),
        log_dir,
        CONSOLE_SESSION_KEY=KEY,
        HISTORY_GRACE_S="1",
        SHUTDOWN_DRAIN_S="0",
        WEBHOOK_COUNTS_FLUSH_S="0.2",
    )
    with serving(env, log_dir, args=("serve", "--with-worker")) as (process,):
        seeded = seed.seed(process.url, now=time.time())
        # The worker settles the history jobs (no REST credentials here: after the grace).
        backlog = "SELECT count(*) FROM history_job WHERE status <> 'done'"
        poll(lambda: Sql(env["DATABASE_URL"]).value(backlog) == 0, timeout=60)
        yield Site(process, seeded)


@dataclass
class Watched:
    """A page and what it did: every request it made, the errors it logged."""

    page: Any
    requests: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


@pytest.fixture
def watched(chromium: Any, site: Site) -> Iterator[Watched]:
    context = chromium.new_context(viewport=VIEWPORT, base_url=site.url)
    page = context.new_page()
    page.set_default_timeout(WAIT_MS)
    seen = Watched(page)
    # Recorded, not intercepted: an intercepted request would wait for this process to answer it.
    page.on("request", lambda request: seen.requests.append(request.url))
    page.on("console", lambda message: message.type == "error" and seen.errors.append(message.text))
    page.on("pageerror", lambda error: seen.errors.append(str(error)))
    yield seen
    context.close()
    # Nothing left the machine, nothing was refused by the page's own policy.
    assert seen.requests
    assert all(url.startswith(f"{site.url}/") for url in seen.requests), seen.requests
    assert seen.errors == []


def log_in(page: Any, path: str = "/console", token: str = READ_TOKEN) -> None:
    page.goto(path)
    assert "/console/login" in page.url
    page.fill("#token", token)
    page.click("button[type=submit]")
    page.wait_for_url(f"**{path}")
    page.wait_for_selector("#live[data-live='on']")


def shoot(page: Any, name: str, tmp_path: Path) -> None:
    page.screenshot(path=str(tmp_path / f"{name}.png"), full_page=True)
    if os.environ.get("UPDATE_SCREENSHOTS"):
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=True)


@dataclass
class Sent:
    """What the second app was sent, as the overview should count it."""

    accepted: int
    duplicates: int
    rejected: dict[str, int]
    errors: list[tuple[str, str, int, str]]  # agent, module, code, message
    agents: list[str]


@pytest.fixture(scope="module")
def second_app(site: Site) -> Sent:
    """Agents with errors for SECOND_APP, a repeat, and three refused deliveries."""
    url = f"{site.url}/v1/webhooks/agora/{SECOND_APP}"
    agents = ["second-a", "second-b"]
    errors = [
        ("second-a", "asr", 1001, "no speech <b>detected</b>"),
        ("second-a", "asr", 1001, "no speech again"),
        ("second-b", "asr", 1001, "microphone muted"),
        ("second-b", "llm", 42, "<script>alert('model')</script>"),
    ]
    deliveries = [deliver(101, payload(a, name=f"name-{a}"), secret=SECOND_SECRET) for a in agents]
    deliveries += [
        deliver(
            110, payload(a, errors=[{"module": m, "code": c, "message": t}]), secret=SECOND_SECRET
        )
        for a, m, c, t in errors
    ]
    with httpx.Client(timeout=10) as client:
        for delivery in deliveries:
            answer = client.post(url, content=delivery.body, headers=delivery.headers)
            assert answer.json() == {"status": "accepted"}
        repeat = deliveries[0]
        assert client.post(url, content=repeat.body, headers=repeat.headers).json() == {
            "status": "duplicate"
        }
        body = deliveries[0].body
        wrong = {"Content-Type": "application/json", **signatures.sign(body, "not-the-secret")}
        assert client.post(url, content=body, headers=wrong).status_code == 401
        junk = b"[1, 2"
        junk_headers = {"Content-Type": "application/json", **signatures.sign(junk, SECOND_SECRET)}
        assert client.post(url, content=junk, headers=junk_headers).status_code == 400
        assert (
            client.post(url, content=body, headers={"Agora-Signature-V2": "00"}).status_code == 401
        )
    return Sent(
        accepted=len(deliveries),
        duplicates=1,
        rejected={"invalid_signature": 2, "invalid_notification": 1},
        errors=errors,
        agents=agents,
    )


def test_the_overview_shows_the_live_count_the_api_reports_and_keeps_it_live(
    watched: Watched, site: Site, second_app: Sent, tmp_path: Path
) -> None:
    page = watched.page
    log_in(page)
    # The second app's deliveries counted (stored every 0.2 s), for the screenshot.
    second = f"[data-pcu-app='{SECOND_APP}'] [data-webhooks-accepted]"
    poll(lambda: page.reload() or page.locator(second).inner_text() == str(second_app.accepted))
    page.wait_for_selector("#live[data-live='on']")
    shown = page.locator(f"[data-pcu-app='{APP_ID}'] [data-pcu-current]")
    assert int(shown.inner_text()) == site.pcu()["current"] > 0
    assert page.locator(f"[data-pcu-app='{APP_ID}'] .chart .peak").count() == 1
    shoot(page, "overview", tmp_path)
    page.evaluate("window.notReloaded = true")
    site.join("agent-arrives-on-the-overview")
    expected = str(site.pcu()["current"])
    page.wait_for_function(
        "([selector, text]) => document.querySelector(selector).textContent === text",
        arg=[f"[data-pcu-app='{APP_ID}'] [data-pcu-current]", expected],
    )
    assert page.evaluate("window.notReloaded") is True


def test_an_agent_page_shows_its_transcript_as_a_conversation(
    watched: Watched, site: Site, tmp_path: Path
) -> None:
    page = watched.page
    log_in(page, "/console/agents?label.campaign=renewals")
    page.click(f"text={seed.STORY_NAME}")
    page.wait_for_url(f"**/console/agents/{site.seeded.story_agent_id}?app_id={APP_ID}")
    transcript = page.locator("[data-transcript]").inner_text()
    for line in site.seeded.story_lines:
        assert line in transcript
    timeline = page.locator(".timeline").inner_text()
    for kind in (
        "IDLE → RUNNING",
        "RUNNING → STOPPED",
        "metrics, turn 1",
        "error tts 429",
        "turn 6",
    ):
        assert kind in timeline
    assert page.locator("table.turns tbody tr").count() == 6
    raw = page.locator("details.raw").first
    raw.locator("summary").click()
    assert '"agent_id"' in raw.locator("pre").inner_text()
    raw.locator("summary").click()
    shoot(page, "agent", tmp_path)


def test_new_agents_appear_in_the_list_without_a_reload(watched: Watched, site: Site) -> None:
    page = watched.page
    log_in(page, "/console/agents")
    page.evaluate(OBSERVE)
    accepted = {}
    for number in range(30):
        agent_id = f"arriving-{number:02d}"
        accepted[agent_id] = site.join(agent_id)
        page.wait_for_timeout(150)  # paced like separate arrivals, not one burst
    counted = "[Object.keys(window.shownAt).length, Object.keys(window.streamedAt).length]"
    poll(lambda: page.evaluate(counted) == [30, 30], timeout=20)
    shown = page.evaluate("window.shownAt")
    streamed = page.evaluate("window.streamedAt")
    assert page.evaluate("window.notReloaded") is True
    assert set(shown) == set(accepted)
    row_delays = [shown[a] - accepted[a] for a in accepted]
    event_delays = [streamed[a] - accepted[a] for a in accepted]
    print(
        f"webhook accepted -> event in the browser: {describe(event_delays)};"
        f" -> row shown in the list: {describe(row_delays)}"
    )
    assert statistics.median(row_delays) < 3000
    first_row = page.locator("tbody[data-live-rows] tr").first
    assert first_row.get_attribute("data-agent-id") == "arriving-29"


def describe(delays: list[float]) -> str:
    ordered = sorted(delays)
    p95 = ordered[max(int(len(ordered) * 0.95) - 1, 0)]
    return f"p50 {statistics.median(ordered):.0f} ms, p95 {p95:.0f} ms (n={len(ordered)})"


# Records when each new agent's event arrives on a stream of its own, and when its row appears.
OBSERVE = """
() => {
  window.notReloaded = true;
  window.shownAt = {};
  window.streamedAt = {};
  const before = new Set(Array.from(document.querySelectorAll("tr[data-agent-id]"), r => r.dataset.agentId));
  const body = document.querySelector("tbody[data-live-rows]");
  new MutationObserver(() => {
    body.querySelectorAll("tr[data-agent-id]").forEach(row => {
      const id = row.dataset.agentId;
      if (!before.has(id) && !(id in window.shownAt)) { window.shownAt[id] = Date.now(); }
    });
  }).observe(body, {childList: true, subtree: true});
  const source = new EventSource("/console/stream");
  source.addEventListener("agent", message => {
    const id = JSON.parse(message.data).agent_id;
    if (!(id in window.streamedAt)) { window.streamedAt[id] = Date.now(); }
  });
  return new Promise(resolve => { source.onopen = () => resolve(true); });
}
"""


def test_logging_out_ends_the_session(watched: Watched) -> None:
    page = watched.page
    log_in(page)
    page.click("form.logout button")
    page.wait_for_url("**/console/login")
    page.goto("/console/agents")
    assert "/console/login?next=%2Fconsole%2Fagents" in page.url


def test_the_overview_shows_webhook_health_and_top_errors_as_they_were_sent(
    watched: Watched, second_app: Sent
) -> None:
    page = watched.page
    log_in(page)
    card = f"[data-pcu-app='{SECOND_APP}']"

    def figures() -> dict[str, str]:
        page.reload()
        return {
            name: page.locator(f"{card} [data-{name}]").inner_text()
            for name in ("webhooks-accepted", "webhooks-duplicate", "webhooks-rejected")
        }

    expected = {
        "webhooks-accepted": str(second_app.accepted),
        "webhooks-duplicate": str(second_app.duplicates),
        "webhooks-rejected": str(sum(second_app.rejected.values())),
    }
    poll(lambda: figures() == expected, timeout=20, interval=0.3)
    page.wait_for_selector("#live[data-live='on']")
    for reason, count in second_app.rejected.items():
        shown = page.locator(f"{card} [data-rejected-reason='{reason}']").inner_text()
        assert int(shown) == count
    counted: dict[tuple[str, str], set[str]] = {}
    totals: dict[tuple[str, str], int] = {}
    for agent_id, module, code, _ in second_app.errors:
        counted.setdefault((module, str(code)), set()).add(agent_id)
        totals[(module, str(code))] = totals.get((module, str(code)), 0) + 1
    rows = page.locator(f"{card} [data-top-errors] tbody tr")
    shown_rows = {
        (row.get_attribute("data-error-module"), row.get_attribute("data-error-code")): (
            int(row.locator("[data-error-count]").inner_text()),
            int(row.locator("[data-error-agents]").inner_text()),
        )
        for row in rows.all()
    }
    assert shown_rows == {key: (totals[key], len(counted[key])) for key in totals}
    first = rows.first
    assert (first.get_attribute("data-error-module"), first.get_attribute("data-error-code")) == (
        "asr",
        "1001",
    )


def test_the_errors_page_lists_the_errors_sent_and_leads_to_their_agents(
    watched: Watched, second_app: Sent
) -> None:
    page = watched.page
    log_in(page)
    page.goto(f"/console/errors?app_id={SECOND_APP}")
    messages = page.locator("table.errors td.message").all_inner_texts()
    # Newest first: sent in order, one after another.
    assert messages == [message for *_, message in reversed(second_app.errors)]
    page.goto(f"/console/errors?app_id={SECOND_APP}&module=asr&code=1001")
    assert page.locator("table.errors tbody tr[data-error-agent]").count() == 3
    page.click("text=name-second-b")
    page.wait_for_url(f"**/console/agents/second-b?app_id={SECOND_APP}")
    assert "microphone muted" in page.locator("table.errors").inner_text()


@pytest.mark.parametrize(
    ("token", "mine", "other"),
    [(SCOPED_TOKEN, APP_ID, SECOND_APP), (SECOND_SCOPED_TOKEN, SECOND_APP, APP_ID)],
)
def test_an_apps_own_token_sees_nothing_of_another_app(
    watched: Watched, site: Site, second_app: Sent, token: str, mine: str, other: str
) -> None:
    page = watched.page
    log_in(page, token=token)
    assert page.locator("[data-pcu-app]").evaluate_all(
        "cards => cards.map(c => c.dataset.pcuApp)"
    ) == [mine]
    for path in ("/console", "/console/agents", "/console/errors", "/console?window=30d"):
        page.goto(path)
        text = page.content()
        assert other not in text, path
        assert mine in text, path
    page.goto("/console/errors")
    assert page.locator("select[name=app_id] option").all_inner_texts() == ["all", mine]
    # Another app's agent, its errors and its rows, asked for by URL: not found, or nothing.
    others_agent = second_app.agents[0] if other == SECOND_APP else site.seeded.story_agent_id
    request = page.context.request
    for path in (
        f"/console/agents/{others_agent}?app_id={other}",
        f"/console/agents/{others_agent}",
        f"/console/errors?app_id={other}",
    ):
        answer = request.get(f"{site.url}{path}")
        assert answer.status == 404, path
        assert other not in answer.text().replace(others_agent, ""), path
    rows = request.get(f"{site.url}/console/fragments/agent-rows?app_id={other}")
    assert others_agent not in rows.text()
