"""A registry with nothing in it: every page says what to do next, and unknown ids get a readable 404."""

from __future__ import annotations

from typing import Any

from tests.dashboard.conftest import LAPTOP, ConsoleErrors, _new_page, login, screenshot
from tests.support.live_server import LiveServer


def test_empty_registry_pages_explain_the_next_step(live_server: LiveServer, browser: Any,
                                                    console: ConsoleErrors) -> None:
    page = _new_page(browser, console, LAPTOP)
    try:
        login(page, live_server)
        expected = {"rollouts": "ota rollout create", "bandwidth": "No bytes sent yet", "fleet": "ota agent",
                    "models": "ota publish"}
        for name, hint in expected.items():
            page.goto(f"{live_server.url}/dashboard/{name}")
            empty = page.locator(".empty").first.inner_text()
            assert hint in empty, (name, empty)
            screenshot(page, f"empty-{name}")
        r = page.goto(f"{live_server.url}/dashboard/rollouts/42")
        assert r is not None and r.status == 404
        assert "rollout 42 does not exist" in page.locator(".empty").inner_text()
        r = page.goto(f"{live_server.url}/dashboard/fleet/car-nope")
        assert r is not None and r.status == 404 and "not enrolled" in page.locator(".empty").inner_text()
        console.allow("status of 404")  # Chromium logs the 404 documents themselves
    finally:
        page.context.close()
    assert list(console) == []
