"""Headless Chromium (Debian's `chromium`) driven by Playwright, never a downloaded browser.

Without Chromium the browser tests are skipped with a message saying so, and the run's summary
says it once more; in CI (`CI` set, as `.ci/run` does) a missing browser fails them instead, so
a machine without one cannot pass silently.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

CHROMIUM = Path(os.environ.get("CHROMIUM_PATH") or shutil.which("chromium") or "/usr/bin/chromium")
# No sandbox (CI runs as root), no GPU, and none of Chromium's own calls home: the tests check that
# nothing leaves the machine.
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-quic",
    "--no-first-run",
]
MISSING = "the browser tests did not run: Chromium is not installed (apt-get install chromium)"


def _missing() -> str | None:
    if not CHROMIUM.exists():
        return MISSING
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "the browser tests did not run: playwright is not installed (make install)"
    return None


# Per module, not per session: while Playwright's sync API is open, its event loop counts as
# running in this thread, and later tests that call asyncio.run() would fail.
@pytest.fixture(scope="module")
def chromium() -> Iterator[Any]:
    problem = _missing()
    if problem is not None:
        if os.environ.get("CI", "").lower() not in ("", "0", "false", "no"):
            pytest.fail(f"{problem}; CI must run them")
        pytest.skip(problem)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        yield browser
        browser.close()


def pytest_terminal_summary(terminalreporter: Any) -> None:
    skipped = terminalreporter.stats.get("skipped", [])
    if any("browser tests did not run" in str(report.longrepr) for report in skipped):
        terminalreporter.write_sep("!", "BROWSER TESTS DID NOT RUN", red=True, bold=True)
        terminalreporter.write_line(f"{MISSING}; CI fails instead of skipping.", red=True)
