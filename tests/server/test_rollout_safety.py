"""Rollout safety rules over real HTTP (issue 21 item 3): a canary that drew no car does not advance (it waits
for the operator and says why), per-stage ``min_installed`` is validated and honoured, and a car stuck
mid-update past the rollout's in-progress timeout counts toward the error threshold (shadow cars at
``verified`` never do)."""

from __future__ import annotations

import time
from collections.abc import Callable
from itertools import count
from typing import Any

from server.rollouts.stages import stage_of
from tests.conftest import ZOO
from tests.server.factories import Car, create_rollout, show_rollout, stored_state
from tests.support.live_server import LiveServer

_lines = count(1)


def _line(server: LiveServer, cars: int, tags: dict[str, str] | None = None) -> tuple[str, list[Car]]:
    """A fresh line (v1 stable, v2 published) and ``cars`` cars running v1 that have polled it."""
    name = f"safety-{next(_lines)}"
    v1 = server.publish(ZOO / "v1.onnx", line=name, codecs="lossless")
    server.publish(ZOO / "v2.onnx", line=name, codecs="lossless")
    fleet = []
    for i in range(cars):
        car = Car(server, f"{name}-car-{i:02d}", tags or {"region": "eu"})
        car.version, car.model_sha256 = 1, v1["packages"]["lossless"]["model_sha256"]
        car.package_sha256 = v1["packages"]["lossless"]["sha256"]
        assert car.poll(name) is None
        fleet.append(car)
    return name, fleet


def _wait(server: LiveServer, rollout_id: int, done: Callable[[dict[str, Any]], bool],
          timeout_s: float = 10.0) -> dict[str, Any]:
    """The rollout once ``done(rollout)`` holds (the background tick evaluates every 0.2 s), or the last seen."""
    deadline = time.monotonic() + timeout_s
    shown = show_rollout(server, rollout_id)
    while not done(shown) and time.monotonic() < deadline:
        time.sleep(0.1)
        shown = show_rollout(server, rollout_id)
    return shown


def test_an_empty_canary_does_not_advance_and_the_rollout_says_why(server: LiveServer) -> None:
    line, _ = _line(server, 2)
    stages = [{"percent": p, "min_soak_s": 0.1, "success_threshold_pct": 90} for p in (10, 50, 100)]
    r = create_rollout(server, line=line, version=2, selector={"region": "mars"}, stages=stages)
    assert [s["min_installed"] for s in r["stages"]] == [1, 0, 0]
    shown = _wait(server, r["id"], lambda x: x["reason"] is not None and "waits" in x["reason"])
    time.sleep(0.6)  # three more ticks: still waiting
    shown = show_rollout(server, r["id"])
    assert (shown["state"], shown["current_stage"]) == ("running", 0), shown
    assert "0 installed of the 1 it needs" in shown["reason"] and "ota rollout advance" in shown["reason"]
    # the operator decides: advanced by hand, the empty later stages (min 0) advance after their soak
    assert server.admin().post(f"/api/v1/rollouts/{r['id']}/advance").json()["current_stage"] == 1
    assert _wait(server, r["id"], lambda x: x["state"] != "running")["state"] == "completed"


def test_a_canary_advances_once_its_minimum_of_cars_installed(server: LiveServer) -> None:
    line, cars = _line(server, 3)
    r = create_rollout(server, line=line, version=2, stages=[
        {"percent": 100, "min_soak_s": 0, "success_threshold_pct": 10, "min_installed": 2}])
    offers = [car.poll(line) for car in cars]
    cars[0].install(offers[0], download=False)
    shown = _wait(server, r["id"], lambda x: x["reason"] is not None and "waits" in x["reason"])
    assert shown["state"] == "running" and "1 installed of the 2 it needs" in shown["reason"], shown
    cars[1].install(offers[1], download=False)
    shown = _wait(server, r["id"], lambda x: x["state"] != "running")
    assert shown["state"] == "completed" and "2 of 3 installed" in shown["reason"], shown


def test_an_explicit_zero_minimum_keeps_the_old_empty_stage_behaviour(server: LiveServer) -> None:
    line, _ = _line(server, 1)
    r = create_rollout(server, line=line, version=2, selector={"region": "mars"},
                       stages=[{"percent": 100, "min_soak_s": 0.1, "success_threshold_pct": 90, "min_installed": 0}])
    shown = _wait(server, r["id"], lambda x: x["state"] != "running")
    assert shown["state"] == "completed" and "no device in this stage" in shown["reason"]


def test_bad_safety_settings_are_refused_naming_the_field_and_store_nothing(server: LiveServer) -> None:
    line, _ = _line(server, 1)
    admin = server.admin()
    before = stored_state(server)
    for body, field in (({"stages": [{"percent": 100, "min_installed": -1}]}, "min_installed"),
                        ({"stages": [{"percent": 100, "min_installed": "many"}]}, "min_installed"),
                        ({"stages": [{"percent": 100, "min_installed": 10**9}]}, "min_installed"),
                        ({"in_progress_timeout_s": 0}, "in_progress_timeout_s"),
                        ({"in_progress_timeout_s": -5}, "in_progress_timeout_s"),
                        ({"in_progress_timeout_s": 1e12}, "in_progress_timeout_s")):
        resp = admin.post("/api/v1/rollouts", json={"line": line, "version": 2, **body})
        assert resp.status_code == 422 and field in resp.json()["detail"], (body, resp.text)
    assert stored_state(server) == before


def test_cars_stuck_mid_update_past_the_timeout_count_toward_the_error_threshold(server: LiveServer) -> None:
    line, cars = _line(server, 4)
    r = create_rollout(server, line=line, version=2, error_threshold_count=2, in_progress_timeout_s=0.5,
                       stages=[{"percent": 100, "min_soak_s": 3600, "success_threshold_pct": 100}])
    assert r["in_progress_timeout_s"] == 0.5
    offers = [car.poll(line) for car in cars]
    cars[0].install(offers[0], download=False)
    cars[1].install(offers[1], download=False)
    assert cars[2].report(offers[2], "downloading").status_code == 200  # stops there; car 3 never starts
    shown = _wait(server, r["id"], lambda x: x["state"] != "running")
    assert shown["state"] == "halted", shown
    assert "2 of 4 devices failed" in shown["reason"] and "2 stuck mid-update past 0.5 s" in shown["reason"]
    assert shown["stages"][0]["counts"] == {"installed": 2, "downloading": 1, "offered": 1, "stuck": 2}


def test_a_car_that_moves_on_in_time_is_not_stuck(server: LiveServer) -> None:
    line, cars = _line(server, 2)
    r = create_rollout(server, line=line, version=2, error_threshold_count=1, in_progress_timeout_s=3600,
                       stages=[{"percent": 100, "min_soak_s": 3600, "success_threshold_pct": 100}])
    offer = cars[0].poll(line)
    assert cars[0].report(offer, "downloading").status_code == 200
    time.sleep(0.5)
    shown = show_rollout(server, r["id"])
    assert shown["state"] == "running" and "stuck" not in shown["stages"][0]["counts"]


def test_shadow_cars_sitting_at_verified_are_never_stuck(server: LiveServer) -> None:
    line, cars = _line(server, 8)
    r = create_rollout(server, line=line, version=2, error_threshold_count=1, in_progress_timeout_s=0.3,
                       shadow={"percent": 50, "min_s": 3600}, gates=["min_frames=100000"])
    percents = [s["percent"] for s in r["stages"]]
    shadow = [c for c in cars if stage_of(r["id"], c.device_id, percents) == 0]
    assert shadow
    for car in shadow:
        offer = car.poll(line)
        assert offer is not None and offer["quality"]["mode"] == "shadow"
        for state in ("downloading", "downloaded", "verified"):
            assert car.report(offer, state).status_code == 200
    time.sleep(1.0)  # well past the timeout, five ticks
    shown = show_rollout(server, r["id"])
    assert shown["state"] == "running", shown
    assert shown["stages"][0]["counts"].get("verified") == len(shadow) and "stuck" not in shown["stages"][0]["counts"]
