"""Rollout stage edge cases over real HTTP: stages that hold no device, rolled-back installs counted
against the error threshold, and stage counts that follow enrolments while the membership is cached."""

from __future__ import annotations

import time
from itertools import count
from typing import Any

from server.rollouts.stages import bucket
from tests.conftest import ZOO
from tests.server.factories import Car, create_rollout, show_rollout
from tests.support.live_server import LiveServer

_lines = count(1)


def _line(server: LiveServer, cars: int, tags: dict[str, str]) -> tuple[str, list[Car]]:
    """A fresh line (v1 stable, v2 published) and ``cars`` cars running v1 that have polled it."""
    name = f"edge-{next(_lines)}"
    v1 = server.publish(ZOO / "v1.onnx", line=name, codecs="lossless")
    server.publish(ZOO / "v2.onnx", line=name, codecs="lossless")
    fleet = []
    for i in range(cars):
        car = Car(server, f"{name}-car-{i:02d}", tags)
        car.version, car.model_sha256 = 1, v1["packages"]["lossless"]["model_sha256"]
        car.package_sha256 = v1["packages"]["lossless"]["sha256"]
        assert car.poll(name) is None
        fleet.append(car)
    return name, fleet


def _wait(server: LiveServer, rollout_id: int, done: Any, timeout_s: float = 10.0) -> dict[str, Any]:
    """The rollout once ``done(rollout)`` holds (the background tick evaluates every 0.2 s), or the last seen."""
    deadline = time.monotonic() + timeout_s
    shown = show_rollout(server, rollout_id)
    while not done(shown) and time.monotonic() < deadline:
        time.sleep(0.1)
        shown = show_rollout(server, rollout_id)
    return shown


def _next_rollout_id(server: LiveServer) -> int:
    return max((r["id"] for r in server.admin().get("/api/v1/rollouts").json()), default=0) + 1


def test_a_rollout_whose_stages_hold_no_device_and_need_none_completes_after_the_soak(server: LiveServer) -> None:
    # min_installed 0 on the canary too: by default an empty canary waits (tests/server/test_rollout_safety.py)
    line, cars = _line(server, 2, {"region": "eu"})
    stages = [{"percent": p, "min_soak_s": 0.3, "success_threshold_pct": 90, "min_installed": 0} for p in (10, 50, 100)]
    r = create_rollout(server, line=line, version=2, selector={"region": "mars"}, stages=stages)
    assert [s["assigned"] for s in r["stages"]] == [0, 0, 0]
    shown = _wait(server, r["id"], lambda x: x["state"] != "running")
    assert shown["state"] == "completed", shown
    assert "no device in this stage" in shown["reason"]
    assert [x for x in server.admin().get("/api/v1/lines").json() if x["name"] == line][0]["stable_version"] == 2


def test_an_empty_middle_stage_advances_and_the_next_stage_gets_its_offers(server: LiveServer) -> None:
    line, cars = _line(server, 2, {"region": "eu"})
    rid = _next_rollout_id(server)  # the stage percents are chosen around these two cars' buckets
    low, high = sorted(cars, key=lambda c: bucket(rid, c.device_id))
    b_low, b_high = bucket(rid, low.device_id), bucket(rid, high.device_id)
    assert b_high - b_low > 1e-6
    gap = (b_high - b_low) / 3
    percents = [b_low + gap, b_low + 2 * gap, 100.0]  # stage 0: low, stage 1: nobody, stage 2: high
    stages = [{"percent": p, "min_soak_s": 0.3, "success_threshold_pct": 100} for p in percents]
    r = create_rollout(server, line=line, version=2, stages=stages)
    assert r["id"] == rid
    assert [s["assigned"] for s in r["stages"]] == [1, 0, 1]
    assert high.poll(line) is None  # stage 2 is not reached yet
    low.install(low.poll(line), download=False)
    shown = _wait(server, rid, lambda x: x["current_stage"] == 2)
    assert shown["current_stage"] == 2 and shown["state"] == "running", shown
    offer = high.poll(line)
    assert offer is not None and offer["target_version"] == 2
    high.install(offer, download=False)
    assert _wait(server, rid, lambda x: x["state"] != "running")["state"] == "completed"


def test_a_manual_stage_with_no_device_waits_for_the_operator(server: LiveServer) -> None:
    line, _ = _line(server, 1, {"region": "eu"})
    r = create_rollout(server, line=line, version=2, selector={"region": "mars"},
                stages=[{"percent": 50, "min_soak_s": 0}, {"percent": 100, "min_soak_s": 0}])
    time.sleep(1.0)  # five background ticks
    shown = show_rollout(server, r["id"])
    assert (shown["state"], shown["current_stage"]) == ("running", 0)
    advanced = server.admin().post(f"/api/v1/rollouts/{r['id']}/advance").json()
    assert advanced["current_stage"] == 1


def test_installs_rolled_back_by_the_cars_count_against_the_error_threshold(server: LiveServer) -> None:
    line, cars = _line(server, 4, {"region": "eu"})
    r = create_rollout(server, line=line, version=2, error_threshold_count=2,
                stages=[{"percent": 100, "min_soak_s": 3600, "success_threshold_pct": 100}])
    offers = [car.poll(line) for car in cars]
    for car, offer in zip(cars, offers, strict=True):
        car.install(offer, download=False)
    assert show_rollout(server, r["id"])["state"] == "running"  # installed, soaking
    for car, offer in list(zip(cars, offers, strict=True))[:2]:
        resp = car.report(offer, "rolled_back", reason="health window: 5 of 5 live inferences failed",
                          running_version=1, running_model_sha256="0" * 64)
        assert resp.status_code == 200, resp.text
    shown = show_rollout(server, r["id"])
    assert shown["state"] == "halted", shown
    assert "2 of 4 devices failed or rolled back" in shown["reason"]
    assert shown["stages"][0]["counts"] == {"installed": 2, "rolled_back": 2}


def test_stage_counts_follow_cars_that_enrol_after_the_rollout_started(server: LiveServer) -> None:
    line, _ = _line(server, 3, {"region": "eu"})
    r = create_rollout(server, line=line, version=2, stages=[{"percent": 100}])
    assert r["stages"][0]["assigned"] == 3
    Car(server, f"{line}-late", {"region": "eu"}).poll(line)  # a new car joins the line
    assert show_rollout(server, r["id"])["stages"][0]["assigned"] == 4
