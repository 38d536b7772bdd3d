"""The Fleet page at scale (issue 21) in real headless Chromium: 100 cars a page by device id with next/previous
links, a filter form (line, version, tag, drifting, search) that keeps its filters across pages, and cards that
count the whole fleet, not the page."""

from __future__ import annotations

from typing import Any

from tests.conftest import ZOO
from tests.dashboard.conftest import LAPTOP, ConsoleErrors, _new_page, login, screenshot
from tests.server.factories import Car
from tests.support.live_server import LiveServer

CARS = 130  # one full page of 100 and a second one of 30


def _ids(page: Any) -> list[str]:
    return [r.get_attribute("data-device") for r in page.locator("#devices-table tbody tr").all()]


def test_fleet_page_pages_by_device_id_and_filters_keep_across_pages(server: LiveServer, browser: Any,
                                                                     console: ConsoleErrors) -> None:
    names = [f"fp-{i:03d}" for i in range(CARS)]
    for i, name in enumerate(names):
        server.enroll(name, {"region": "eu" if i % 2 else "us"})
    polled_line = "fleet-line"
    server.publish(ZOO / "v1.onnx", line=polled_line, codecs="lossless")
    Car(server, "fp-zz-polled", {"region": "eu"}).poll(polled_line)  # the one car with a line
    page = _new_page(browser, console, LAPTOP)
    try:
        login(page, server)
        page.goto(f"{server.url}/dashboard/fleet")
        assert page.locator("[data-live='fleet.devices']").get_attribute("data-value") == str(CARS + 1)
        assert _ids(page) == names[:100]  # the first 100 by id; the card counts all of them
        assert page.locator("#fleet-prev").count() == 0
        page.click("#fleet-next")
        page.wait_for_url("**/dashboard/fleet?*after=fp-099*")
        assert _ids(page) == names[100:] + ["fp-zz-polled"]
        assert page.locator("#fleet-next").count() == 0
        page.click("#fleet-prev")
        page.wait_for_url("**/dashboard/fleet?*before=fp-100*")
        assert _ids(page) == names[:100]
        assert page.locator("#fleet-prev").count() == 0
        screenshot(page, "fleet-paged")

        page.fill("#fleet-filters input[name='tag']", "region=eu")
        page.fill("#fleet-filters input[name='q']", "FP-1")
        page.click("#fleet-filters button[type='submit']")
        page.wait_for_url("**/dashboard/fleet?*q=FP-1*")
        want = [n for i, n in enumerate(names) if i % 2 and n.startswith("fp-1")]
        assert _ids(page) == want and page.locator("#fleet-next").count() == 0
        api = server.admin().get("/api/v1/devices", params={"tag": "region=eu", "q": "FP-1"}).json()
        assert [d["device_id"] for d in api] == want  # the page and the API agree

        page.fill("#fleet-filters input[name='tag']", "")
        page.fill("#fleet-filters input[name='q']", "")
        page.fill("#fleet-filters input[name='line']", polled_line)
        page.click("#fleet-filters button[type='submit']")
        page.wait_for_url(f"**/dashboard/fleet?line={polled_line}*")
        assert _ids(page) == ["fp-zz-polled"]
        assert page.locator(f"#by-version [data-line='{polled_line}'] .hbar-value").inner_text() == "1"

        page.goto(f"{server.url}/dashboard/fleet?q=nobody-has-this")
        assert _ids(page) == [] and "No device matches" in page.locator("main").inner_text()
    finally:
        page.context.close()
    assert list(console) == []
