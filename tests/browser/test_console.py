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

from tests.browser import seed
from tests.factories import (
    APP_ID,
    READ_TOKEN,
    Sql,
    deliver,
    environment,
    payload,
    poll,
    reader_headers,
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
    env = environment(
        create_database(),
        CONSOLE_SESSION_KEY=KEY,
        HISTORY_GRACE_S="1",
        SHUTDOWN_DRAIN_S="0",
    )
    log_dir = tmp_path_factory.mktemp("browser")
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


def log_in(page: Any, path: str = "/console") -> None:
    page.goto(path)
    assert "/console/login" in page.url
    page.fill("#token", READ_TOKEN)
    page.click("button[type=submit]")
    page.wait_for_url(f"**{path}")
    page.wait_for_selector("#live[data-live='on']")


def shoot(page: Any, name: str, tmp_path: Path) -> None:
    page.screenshot(path=str(tmp_path / f"{name}.png"), full_page=True)
    if os.environ.get("UPDATE_SCREENSHOTS"):
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=True)


def test_the_overview_shows_the_live_count_the_api_reports_and_keeps_it_live(
    watched: Watched, site: Site, tmp_path: Path
) -> None:
    page = watched.page
    log_in(page)
    shown = page.locator(f"[data-pcu-app='{APP_ID}'] [data-pcu-current]")
    assert int(shown.inner_text()) == site.pcu()["current"] > 0
    assert page.locator(".chart .peak").count() == 1
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
