"""The Audit page in real headless Chromium (issue 21 item 5): the same rows as ``GET /api/v1/audit``, newest
first, filtered by its GET form; a refused publish and a refused login show as refused."""

from __future__ import annotations

from typing import Any

from tests.conftest import ZOO
from tests.dashboard.conftest import LAPTOP, ConsoleErrors, _new_page, login, screenshot
from tests.support.live_server import LiveServer


def _rows(page: Any) -> list[tuple[str, str, str]]:
    """(action, outcome, target) of every row on the page."""
    return [(r.get_attribute("data-action"), r.get_attribute("data-outcome"), r.locator("td").nth(3).inner_text())
            for r in page.locator("#audit tbody tr").all()]


def test_audit_page_lists_every_change_and_filters_by_outcome_and_action(live_server: LiveServer, browser: Any,
                                                                         console: ConsoleErrors) -> None:
    live_server.publish(ZOO / "v1.onnx", line="audit-page", codecs="lossless")
    bad = live_server.admin().post("/api/v1/lines/audit-page/versions", files={"file": ("m.onnx", b"nope")})
    assert bad.status_code == 400
    assert live_server.anonymous().post("/dashboard/login", data={"token": "wrong"}).status_code == 401
    page = _new_page(browser, console, LAPTOP)
    try:
        login(page, live_server)
        page.goto(f"{live_server.url}/dashboard/audit")
        assert page.locator("nav a[aria-current=page]").inner_text() == "Audit"
        rows = _rows(page)
        api = live_server.admin().get("/api/v1/audit").json()
        assert [(a["action"], a["outcome"]) for a in api] == [(r[0], r[1]) for r in rows]
        assert ("version.publish", "ok", "line:audit-page") in rows
        assert ("version.publish", "refused", "line:audit-page") in rows
        assert ("dashboard.login", "refused", "dashboard") in rows and ("dashboard.login", "ok", "dashboard") in rows
        screenshot(page, "audit")

        page.select_option("select[name=outcome]", "refused")
        page.click("#audit-filters button[type=submit]")
        page.wait_for_url("**/dashboard/audit?*outcome=refused*")
        assert sorted(r[0] for r in _rows(page)) == ["dashboard.login", "version.publish"]
        assert {r[1] for r in _rows(page)} == {"refused"}

        page.fill("input[name=action]", "version.*")
        page.click("#audit-filters button[type=submit]")
        page.wait_for_url("**/dashboard/audit?*action=version*")
        assert _rows(page) == [("version.publish", "refused", "line:audit-page")]

        page.goto(f"{live_server.url}/dashboard/audit?actor=nobody")
        assert "No audit entries match" in page.locator(".empty").inner_text()
        # a bad filter is refused; asked without navigating (a JSON answer shown as a page has no icon link, and
        # Chromium's own /favicon.ico request then logs a 404 now and then)
        r = page.request.get(f"{live_server.url}/dashboard/audit?outcome=maybe")
        assert r.status == 422
    finally:
        page.context.close()
    assert list(console) == []


def test_rollout_page_shows_the_canary_minimum(live_server: LiveServer, browser: Any, console: ConsoleErrors) -> None:
    live_server.publish(ZOO / "v1.onnx")
    live_server.publish(ZOO / "v2.onnx")
    r = live_server.admin().post("/api/v1/rollouts", json={"line": "road-signs", "version": 2, "stages": [
        {"percent": 10, "success_threshold_pct": 90}, {"percent": 100, "success_threshold_pct": 90}]})
    assert r.status_code == 201, r.text
    page = _new_page(browser, console, LAPTOP)
    try:
        login(page, live_server)
        page.goto(f"{live_server.url}/dashboard/rollouts/{r.json()['id']}")
        cells = page.locator("#stages-table [data-field=min-installed]")
        assert cells.count() == 1 and cells.inner_text() == "once 1 installed"  # the canary only
    finally:
        page.context.close()
    assert list(console) == []
