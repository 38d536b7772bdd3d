"""The rollout page's model-quality section (issue 18) in real headless Chromium: a rollout created with a
shadow stage and gates, two cars that shadow it and report summaries in which the candidate disagrees on
fog, the verdict and the failing gate named, and the charts drawn (agreement with its gate line, latency,
class distribution labelled with the line's classes).  Needs the registry side of issue 18 (rollout
``shadow``/``gates``, ``quality`` on reports and on ``GET /rollouts/{id}``)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest

from protocol.quality import ModelStats, QualitySummary
from tests.conftest import ZOO
from tests.dashboard.conftest import ConsoleErrors, _new_page, login, screenshot
from tests.server.factories import Car, create_rollout
from tests.support.live_server import LiveServer, run_live_server

LINE = "quality-signs"
GATES = ["agreement>=0.97", "min_frames=500"]


@pytest.fixture(scope="module")
def shadowed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LiveServer, dict[str, Any]]]:
    with run_live_server(tmp_path_factory.mktemp("dash-quality"), dashboard_refresh_s=0.5) as srv:
        srv.publish(ZOO / "v1.onnx", line=LINE)
        srv.publish(ZOO / "v2.onnx", line=LINE)
        cars = [Car(srv, f"shadow-{i}", {"region": "eu"}) for i in range(2)]
        for car in cars:  # v1, the stable version, everywhere first: v2 is compared with it
            car.install(car.poll(LINE))
            assert car.poll(LINE) is None
        rollout = create_rollout(srv, line=LINE, version=2, stages=[{"percent": 100}],
                                 shadow={"percent": 100, "min_s": 0, "sample_every": 2, "max_cpu_share": 0.25},
                                 gates=GATES)
        for seq, car in enumerate(cars, start=1):
            offer = car.poll(LINE)
            assert offer is not None and offer["target_version"] == 2, offer
            for state in ("downloading", "downloaded"):
                assert car.report(offer, state).status_code == 200
            # the summary rides on a report, as the agent sends it: here the car's "verified"
            car.seq += 1
            verified = car.key.signed_report({"seq": car.seq, "rollout_id": offer["rollout_id"], "state": "verified",
                                              "manifest_version": offer["manifest_version"],
                                              "target_version": offer["target_version"]})
            r = car.http.post("/api/v1/device/reports", json={"reports": [verified],
                                                              "quality": [_summary(rollout["id"], seq)]})
            assert r.status_code == 200 and r.json().get("quality_accepted") == [seq], r.text
        deadline = time.monotonic() + 10
        while (shown := srv.admin().get(f"/api/v1/rollouts/{rollout['id']}").json())["state"] != "halted":
            assert time.monotonic() < deadline, shown
            time.sleep(0.2)
        yield srv, shown


def _summary(rollout_id: int, seq: int) -> dict[str, Any]:
    """300 frames, 270 in agreement: the candidate answered class 3 on the 30 where the baseline said 2."""
    cand, base = ModelStats(), ModelStats()
    for i in range(300):
        label = i % 10
        base.record(label, 0.9, 1.0)
        cand.record(3 if label in (2, 3) else label, 0.85, 1.2)
    agree = sum(1 for i in range(300) if i % 10 != 2)
    return QualitySummary("shadow", LINE, rollout_id, 2, 1, seq=seq, frames=300, agree=agree, sampled=300,
                          candidate=cand, baseline=base).to_dict()


@pytest.fixture
def quality_page(browser: Any, console: ConsoleErrors, shadowed: tuple[LiveServer, dict[str, Any]]) -> Iterator[Any]:
    server, _ = shadowed
    p = _new_page(browser, console, {"width": 1366, "height": 900})
    login(p, server)
    yield p
    p.context.close()
    assert list(console) == [], "the page logged errors"


def test_the_rollout_page_shows_the_shadow_verdict_the_failing_gate_and_the_quality_charts(
        quality_page: Any, shadowed: tuple[LiveServer, dict[str, Any]]) -> None:
    server, rollout = shadowed
    page = quality_page
    page.goto(f"{server.url}/dashboard/rollouts/{rollout['id']}")
    section = page.locator("#quality")
    assert section.is_visible()
    verdict = rollout["quality"]["verdict"]
    assert verdict["passed"] is False and verdict["failing"] == "agreement>=0.97"
    assert page.locator("#quality-failing").inner_text().strip() == verdict["failing"]
    for gate in GATES:
        assert gate in page.locator("#quality-verdict").inner_text()
    shadow_row = page.locator("tr[data-stage='0']").inner_text()
    assert "shadow" in shadow_row and "when its quality gates pass" in shadow_row
    # agreement over time with the gate drawn (a canvas by uPlot), latency, class distribution by label
    for chart in ("chart-agreement", "chart-latency", "chart-classes"):
        assert page.locator(f"[data-chart={chart}] canvas").count() >= 1, chart
    legend = page.locator("[data-chart=chart-classes]").inner_text()
    assert "candidate" in legend and "baseline" in legend
    screenshot(page, "rollout-quality")

