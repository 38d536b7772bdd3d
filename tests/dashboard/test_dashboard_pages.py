"""The dashboards in real headless Chromium against a real registry populated by a small rollout over HTTP.

Each page's numbers are read from the DOM (``data-value`` holds the raw
figure next to the human-readable text) and compared with the admin JSON
API.  The live-refresh test runs last in this module because it changes
the data: a car installs while the rollout page is open.
"""

from __future__ import annotations

import time
from typing import Any

import httpx

from server.dashboard.format import human_bytes, percent
from tests.dashboard.conftest import STUCK_AFTER_S, TABLET, ConsoleErrors, _new_page, screenshot
from tests.dashboard.scenario import Scenario
from tests.support.live_server import LiveServer


def _api(server: LiveServer, path: str, **params: Any) -> Any:
    r = server.admin().get(f"/api/v1{path}", params=params)
    assert r.status_code == 200, r.text
    return r.json()


def _value(page: Any, selector: str) -> str:
    el = page.locator(selector)
    assert el.count() == 1, f"{selector}: {el.count()} matches"
    return el.get_attribute("data-value")


def _text(page: Any, selector: str) -> str:
    return page.locator(selector).inner_text().strip()


def _sum_counts(rollout: dict[str, Any], state: str) -> int:
    return sum(s["counts"].get(state, 0) for s in rollout["stages"])


def test_unauthenticated_requests_are_sent_to_the_login_page_and_wrong_tokens_refused(
        server: LiveServer, scenario: Scenario, anonymous_page: Any, console: ConsoleErrors) -> None:
    anon = httpx.Client(base_url=server.url)
    try:
        for path in ("/dashboard/rollouts", f"/dashboard/rollouts/{scenario.rollout_id}", "/dashboard/bandwidth",
                     "/dashboard/fleet", "/dashboard/fleet/car-000", "/dashboard/models"):
            r = anon.get(path)
            assert r.status_code == 303 and r.headers["location"].startswith("/dashboard/login?next="), path
        r = anon.get("/dashboard/live.json")
        assert r.status_code == 401 and r.json()["error"] == "unauthorized"
        with httpx.Client(base_url=server.url, cookies={"ota_dash": "9999999999.00"}) as forged:
            assert forged.get("/dashboard/fleet").status_code == 303
        # a login link may only lead back into the dashboard
        r = anon.post("/dashboard/login", data={"token": server.admin_token, "next": "https://evil.example/"})
        assert r.status_code == 303 and r.headers["location"] == "/dashboard/rollouts"
    finally:
        anon.close()

    page = anonymous_page
    page.goto(f"{server.url}/dashboard/fleet")
    assert "/dashboard/login" in page.url
    page.fill("#token", "not-the-token")
    page.keyboard.press("Enter")
    assert "not the admin token" in _text(page, "#login-error")
    console.allow("status of 401")  # the refused login answers 401, which Chromium logs
    screenshot(page, "login-refused")
    page.fill("#token", server.admin_token)
    page.keyboard.press("Enter")
    page.wait_for_url("**/dashboard/fleet")  # back where the operator wanted to go
    page.click("text=Log out")
    page.wait_for_url("**/dashboard/login")
    page.goto(f"{server.url}/dashboard/models")
    assert "/dashboard/login" in page.url


def test_rollouts_list_shows_the_state_progress_and_bytes_the_api_reports(
        server: LiveServer, scenario: Scenario, page: Any) -> None:
    page.goto(f"{server.url}/dashboard/rollouts")
    rollout = _api(server, f"/rollouts/{scenario.rollout_id}")
    acc = _api(server, f"/accounting/rollouts/{scenario.rollout_id}")
    key = f"rollout.{scenario.rollout_id}"
    row = f"tr[data-rollout='{scenario.rollout_id}']"
    assert _text(page, f"{row} [data-live='{key}.state']") == rollout["state"] == "running"
    assert int(_value(page, f"{row} [data-live='{key}.installed']")) == _sum_counts(rollout, "installed")
    assert int(_value(page, f"{row} [data-live='{key}.failed']")) == _sum_counts(rollout, "failed") == 1
    assert int(_value(page, f"{row} [data-live='{key}.assigned']")) == sum(s["assigned"] for s in rollout["stages"])
    bytes_cell = page.locator(f"{row} td").nth(8)
    assert int(bytes_cell.get_attribute("data-value")) == acc["totals"]["bytes_sent"]
    assert bytes_cell.inner_text().strip() == human_bytes(acc["totals"]["bytes_sent"])
    assert _value(page, "[data-live='rollouts.running']") == "1"
    assert _value(page, "[data-live='rollouts.halted']") == "1"
    halted = f"tr[data-rollout='{scenario.halted_rollout_id}']"
    assert _text(page, f"{halted} [data-live='rollout.{scenario.halted_rollout_id}.state']") == "halted"
    screenshot(page, "rollouts")


def test_rollout_page_shows_stages_history_failures_events_and_transfer_totals(
        server: LiveServer, scenario: Scenario, page: Any) -> None:
    page.goto(f"{server.url}/dashboard/rollouts/{scenario.rollout_id}")
    rollout = _api(server, f"/rollouts/{scenario.rollout_id}")
    acc = _api(server, f"/accounting/rollouts/{scenario.rollout_id}")
    key = f"rollout.{scenario.rollout_id}"
    for stage in rollout["stages"]:
        sk = f"{key}.stage{stage['position']}"
        assert int(_value(page, f"[data-live='{sk}.assigned']")) == stage["assigned"]
        for state in ("installed", "failed", "downloading", "offered", "pending"):
            assert int(_value(page, f"[data-live='{sk}.{state}']")) == stage["counts"].get(state, 0), (sk, state)
    totals = page.locator("#stage-totals tfoot td")
    assert int(totals.nth(4).get_attribute("data-value")) == acc["totals"]["bytes_sent"]
    assert int(totals.nth(5).get_attribute("data-value")) == acc["totals"]["delta_bytes"]
    assert float(totals.nth(9).get_attribute("data-value")) == acc["totals"]["savings_vs_package"]
    assert totals.nth(9).inner_text().strip() == percent(acc["totals"]["savings_vs_package"])
    largest = page.locator("#largest-table tbody tr")
    assert largest.count() == len(acc["largest"])
    assert "smoke test mismatch" in _text(page, "#failures-table")
    events = _text(page, "#events-table")
    assert "create" in events and "advance" in events
    assert page.locator("[data-chart='chart-states'] canvas").count() >= 1  # uPlot drew the history
    screenshot(page, "rollout")


def test_halted_rollout_page_shows_the_halt_with_its_reason(server: LiveServer, scenario: Scenario,
                                                            page: Any) -> None:
    page.goto(f"{server.url}/dashboard/rollouts/{scenario.halted_rollout_id}")
    rollout = _api(server, f"/rollouts/{scenario.halted_rollout_id}")
    assert rollout["state"] == "halted"
    events = _text(page, "#events-table")
    assert "halt" in events and "error threshold reached" in events and "auto" in events
    assert "not enough disk" in _text(page, "#failures-table")
    assert rollout["reason"] in _text(page, ".note")
    screenshot(page, "rollout-halted")


def test_bandwidth_page_totals_largest_transfers_and_delta_matrix_match_the_api(
        server: LiveServer, scenario: Scenario, page: Any) -> None:
    page.goto(f"{server.url}/dashboard/bandwidth")
    transfers = _api(server, "/accounting/transfers", limit=10000)
    acc = _api(server, f"/accounting/rollouts/{scenario.rollout_id}")
    assert int(_value(page, "[data-live='bytes.sent']")) == sum(t["bytes_sent"] for t in transfers)
    row = page.locator(f"#per-rollout tr[data-rollout='{scenario.rollout_id}'] td")
    assert int(row.nth(4).get_attribute("data-value")) == acc["totals"]["devices_updated"]
    assert int(row.nth(5).get_attribute("data-value")) == acc["totals"]["bytes_sent"]
    assert int(row.nth(8).get_attribute("data-value")) == acc["totals"]["package_bytes_equivalent"]
    assert int(row.nth(9).get_attribute("data-value")) == acc["totals"]["fp32_bytes_equivalent"]
    halted = _api(server, f"/accounting/rollouts/{scenario.halted_rollout_id}")
    shown = [int(c.get_attribute("data-value")) for c in page.locator("#largest-table tbody tr td:nth-child(4)").all()]
    assert shown == sorted((d["bytes_sent"] for d in acc["largest"] + halted["largest"]), reverse=True)[:10]
    assert shown[0] == halted["totals"]["bytes_sent"] > 1_000_000  # the failed full download tops the list
    v2 = _api(server, "/lines/road-signs/versions/2")
    cell = page.locator("#matrix-road-signs-lossless td[data-from='1'][data-to='2']")
    assert int(cell.get_attribute("data-value")) == v2["packages"]["lossless"]["delta_from_previous"]
    assert page.locator("[data-chart='chart-rollout'] canvas").count() >= 1
    assert page.locator("[data-chart='chart-network'] canvas").count() >= 1
    assert "network=lte" in _text(page, "[data-chart='chart-network']")  # the chart's legend names the tag
    screenshot(page, "bandwidth")


def test_fleet_page_counts_versions_tags_drift_and_stuck_devices_like_the_inventory(
        server: LiveServer, scenario: Scenario, page: Any) -> None:
    time.sleep(STUCK_AFTER_S)  # the stuck car's last report must be older than the threshold
    page.goto(f"{server.url}/dashboard/fleet")
    devices = _api(server, "/devices")
    drifted = _api(server, "/devices", drift="true")
    assert int(_value(page, "[data-live='fleet.devices']")) == len(devices) == len(scenario.cars)
    assert int(_value(page, "[data-live='fleet.drifted']")) == len(drifted) == 1
    attention = _text(page, "#attention-table")
    assert scenario.drifted in attention and scenario.stuck in attention
    runs = [(r["line"], r["running_version"]) for d in devices for r in d["lines"]]
    for line, version in set(runs):
        assert _text(page, f"#by-version [data-line='{line}'][data-version='{version}'] .hbar-value") == str(
            runs.count((line, version)))
    assert page.locator("#devices-table tbody tr").count() == len(devices)
    screenshot(page, "fleet")
    lte = [d["device_id"] for d in devices if d["tags"].get("network") == "lte"]
    page.fill("#fleet-filters input[name='tag']", "network=lte")  # the tag bars became a filter (issue 21)
    page.click("#fleet-filters button[type='submit']")
    page.wait_for_url("**/dashboard/fleet?*tag=network%3Dlte*")
    assert [r.get_attribute("data-device") for r in page.locator("#devices-table tbody tr").all()] == lte


def test_device_page_lists_its_update_history_and_transfers(server: LiveServer, scenario: Scenario,
                                                             page: Any) -> None:
    page.goto(f"{server.url}/dashboard/fleet")
    page.click(f"#devices-table a:text-is('{scenario.failed}')")
    page.wait_for_url(f"**/dashboard/fleet/{scenario.failed}")
    device = _api(server, f"/devices/{scenario.failed}")
    rows = page.locator("#history-table tbody tr")
    assert rows.count() == len(device["updates"]) == 2  # v1 installed, v2 failed
    assert "failed" in _text(page, "#history-table") and "smoke test mismatch" in _text(page, "#history-table")
    mine = [t for t in _api(server, "/accounting/transfers", limit=10000) if t["device_id"] == scenario.failed]
    assert page.locator("#transfers-table tbody tr").count() == len(mine)
    screenshot(page, "device")


def test_models_page_shows_sizes_per_codec_fidelity_and_publish_metadata(server: LiveServer, scenario: Scenario,
                                                                          page: Any) -> None:
    page.goto(f"{server.url}/dashboard/models")
    lines = _api(server, "/lines")
    assert page.locator("section.line").count() == len(lines) == 2
    for v in _api(server, "/lines/road-signs/versions") + _api(server, "/lines/speed-signs/versions"):
        row = f"#versions-{v['line']} tr[data-version='{v['version']}']"
        for codec, pkg in v["packages"].items():
            assert int(_value(page, f"{row} td[data-codec='{codec}'][data-field='bytes']")) == pkg["bytes"]
            agreement = _value(page, f"{row} td[data-codec='{codec}'][data-field='agreement']")
            assert float(agreement) == pkg["fidelity"]["top1_agreement"]
        assert v["notes"] in _text(page, row) and v["publisher"] in _text(page, row)
        c = v["contract"]
        shown = _text(page, f"{row} td[data-field='contract']")
        assert f"{c['height']}×{c['width']} {c['layout']}" in shown and f"{len(c['labels'])} labels" in shown
    screenshot(page, "models")


def test_tables_sort_from_the_keyboard_and_pages_fit_a_tablet(server: LiveServer, scenario: Scenario,
                                                              browser: Any, console: ConsoleErrors) -> None:
    from tests.dashboard.conftest import login

    page = _new_page(browser, console, TABLET)
    try:
        login(page, server)
        page.goto(f"{server.url}/dashboard/fleet")
        header = page.locator("#devices-table thead th", has_text="Device").locator("button")
        header.focus()
        page.keyboard.press("Enter")
        ids = [c.inner_text().split()[0] for c in page.locator("#devices-table tbody td:first-child").all()]
        assert ids == sorted(ids)
        page.keyboard.press("Enter")
        ids = [c.inner_text().split()[0] for c in page.locator("#devices-table tbody td:first-child").all()]
        assert ids == sorted(ids, reverse=True)
        assert page.locator("#devices-table thead th[aria-sort='descending']").count() == 1
        for name in ("rollouts", f"rollouts/{scenario.rollout_id}", "bandwidth", "fleet", "models"):
            page.goto(f"{server.url}/dashboard/{name}")
            overflow = page.evaluate("document.documentElement.scrollWidth - window.innerWidth")
            assert overflow <= 0, f"{name} scrolls sideways on a tablet by {overflow}px"
            screenshot(page, "tablet-" + name.replace("/", "-"))
    finally:
        page.context.close()
    assert list(console) == []


def test_live_refresh_updates_the_installed_count_after_a_report(server: LiveServer, scenario: Scenario,
                                                                 page: Any) -> None:
    page.goto(f"{server.url}/dashboard/rollouts/{scenario.rollout_id}")
    key = f"rollout.{scenario.rollout_id}.installed"
    before = int(_value(page, f".card [data-live='{key}']"))
    car = scenario.cars[scenario.spare]
    car.install(scenario.spare_offer)  # over HTTP, while the page stays open
    from playwright.sync_api import expect

    expect(page.locator(f".card [data-live='{key}']")).to_have_text(str(before + 1), timeout=10_000)
    rollout = _api(server, f"/rollouts/{scenario.rollout_id}")
    assert _sum_counts(rollout, "installed") == before + 1
    assigned = sum(s["assigned"] for s in rollout["stages"])
    progress = page.locator(f".card [data-live='rollout.{scenario.rollout_id}.progress']")
    expect(progress).to_have_text(percent((before + 1) / assigned))
    stage = next(s for s in rollout["stages"] if s["position"] == rollout["current_stage"])
    stage_cell = page.locator(f"[data-live='rollout.{scenario.rollout_id}.stage{stage['position']}.installed']")
    expect(stage_cell).to_have_text(str(stage["counts"]["installed"]))
    screenshot(page, "rollout-live")
