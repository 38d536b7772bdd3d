"""Fixtures for the dashboard browser tests: one populated registry and one headless Chromium per module.

Chromium is Debian's package (``make test`` installs it); Playwright only
drives it, it never downloads a browser.  Every page a test opens records
console errors and uncaught exceptions; ``page`` fails the test if any
appear.  Screenshots go to ``test-artifacts/dashboard/`` (gitignored).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.dashboard.scenario import Scenario, populate
from tests.support.live_server import LiveServer, run_live_server

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "dashboard"
LAPTOP = {"width": 1366, "height": 900}
TABLET = {"width": 800, "height": 1100}
STUCK_AFTER_S = 1.0


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    with run_live_server(tmp_path_factory.mktemp("dashboard"), dashboard_refresh_s=0.5, dashboard_fleet_counts_s=0,
                         dashboard_stuck_after_s=STUCK_AFTER_S) as srv:
        yield srv


@pytest.fixture(scope="module")
def scenario(server: LiveServer) -> Scenario:
    return populate(server)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: run `make test` (it installs Debian's chromium package) "
                    "or `apt-get install -y chromium`")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield b
        b.close()


class ConsoleErrors(list):
    """Console errors and page exceptions seen by one page; ``allow`` drops an expected one."""

    def allow(self, fragment: str) -> None:
        self[:] = [e for e in self if fragment not in e]


@pytest.fixture
def console() -> ConsoleErrors:
    return ConsoleErrors()


def _new_page(browser: Any, console: ConsoleErrors, viewport: dict[str, int]) -> Any:
    context = browser.new_context(viewport=viewport)
    page = context.new_page()
    page.set_default_timeout(10_000)
    page.on("console", lambda m: console.append(f"console: {m.text}") if m.type == "error" else None)
    page.on("pageerror", lambda e: console.append(f"exception: {e}"))
    return page


@pytest.fixture
def anonymous_page(browser: Any, console: ConsoleErrors) -> Iterator[Any]:
    """A page in a fresh browser context (no session cookie)."""
    page = _new_page(browser, console, LAPTOP)
    yield page
    page.context.close()
    assert list(console) == [], "the page logged errors"


def login(page: Any, server: LiveServer) -> None:
    page.goto(f"{server.url}/dashboard/login")
    page.fill("#token", server.admin_token)
    page.click("button[type=submit]")
    page.wait_for_url("**/dashboard/rollouts")


@pytest.fixture
def page(browser: Any, console: ConsoleErrors, server: LiveServer, scenario: Scenario) -> Iterator[Any]:
    """A logged-in laptop-sized page on the populated server."""
    p = _new_page(browser, console, LAPTOP)
    login(p, server)
    yield p
    p.context.close()
    assert list(console) == [], "the page logged errors"


def screenshot(page: Any, name: str) -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path
