"""A small real rollout for the dashboard tests, driven over HTTP against a live registry.

Two shipped versions (v1 stable, v2 rolled out in two stages), eight cars on
LTE, Wi-Fi and 3G that install v1 as full packages and then v2 as deltas.
Stage 1 (50%): all install except one that fails.  Stage 2 (after a manual
advance): one installs, one is left downloading (stuck once the fleet page's
threshold passes), the rest only hold the offer; one of those is the
``spare`` the live-refresh test installs while a page is open.  One updated
car then polls with its old version again, so the inventory flags drift.
A second line (two buses) has a rollout that halted on its error threshold
after a full-package download that then failed.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from server.rollouts.stages import stage_of
from tests.server.factories import Car
from tests.support.live_server import LiveServer

ZOO = Path(__file__).resolve().parents[2] / "models" / "zoo"
NETWORKS = ("lte", "lte", "wifi", "3g", "lte", "wifi", "3g", "lte")
STAGES = (50.0, 100.0)


@dataclass
class Scenario:
    rollout_id: int
    halted_rollout_id: int
    cars: dict[str, Car]
    failed: str
    stuck: str
    drifted: str
    spare: str
    spare_offer: dict[str, Any]


def populate(srv: LiveServer) -> Scenario:
    srv.publish(ZOO / "v1.onnx", notes="first release", publisher="ml-team")
    srv.publish(ZOO / "v2.onnx", notes="fog fine-tune", publisher="ml-team")
    cars = {}
    for i, net in enumerate(NETWORKS):
        car = Car(srv, f"car-{i:03d}", {"region": "eu", "network": net})
        car.install(car.poll())  # v1, the stable version: a full package, outside any rollout
        assert car.poll() is None  # the next poll says what it runs now, as the agent's would
        cars[car.device_id] = car
    r = srv.admin().post("/api/v1/rollouts", json={
        "line": "road-signs", "version": 2, "selector": {"region": "eu"}, "error_threshold_count": 3,
        "stages": [{"percent": p} for p in STAGES]})
    assert r.status_code == 201, r.text
    rollout_id = r.json()["id"]
    first = sorted(d for d in cars if stage_of(rollout_id, d, STAGES) == 0)
    second = sorted(d for d in cars if stage_of(rollout_id, d, STAGES) == 1)
    assert len(first) >= 2 and len(second) >= 4, (first, second)  # holds for these ids; keeps the story intact
    failed = first[0]
    for d in first:
        offer = cars[d].poll()
        assert offer is not None and offer["delta"] is not None
        if d == failed:
            cars[d].fail(offer, "smoke test mismatch: logits differ by 0.21")
        else:
            cars[d].install(offer)
            cars[d].poll()
    r = srv.admin().post(f"/api/v1/rollouts/{rollout_id}/advance")
    assert r.status_code == 200, r.text
    offers = {d: cars[d].poll() for d in second}
    cars[second[0]].install(offers[second[0]])
    cars[second[0]].poll()
    stuck = second[1]
    assert cars[stuck].report(offers[stuck], "downloading", bytes_received=0).status_code == 200
    drifted = first[1]
    cars[drifted].version = 1  # polls as if it were still on v1 after reporting v2 installed
    cars[drifted].model_sha256 = None
    cars[drifted].poll()
    halted = _halted_rollout(srv, cars)
    return Scenario(rollout_id, halted, cars, failed, stuck, drifted, second[-1], offers[second[-1]])


def _halted_rollout(srv: LiveServer, cars: dict[str, Car]) -> int:
    """A second line whose rollout halts: its first car downloads the full package, then fails."""
    line = "speed-signs"
    srv.publish(ZOO / "v3.onnx", line=line, notes="speed limits only", publisher="ml-team")
    srv.publish(ZOO / "v4.onnx", line=line, notes="night images", publisher="ml-team")
    buses = [Car(srv, f"bus-{i:03d}", {"region": "us", "network": "wifi"}) for i in range(2)]
    for bus in buses:
        bus.install(bus.poll(line))
        assert bus.poll(line) is None
        cars[bus.device_id] = bus
    r = srv.admin().post("/api/v1/rollouts", json={"line": line, "version": 2, "selector": {"region": "us"},
                                                   "error_threshold_count": 1, "stages": [{"percent": 100}]})
    assert r.status_code == 201, r.text
    offer = buses[0].poll(line)
    assert buses[0].report(offer, "downloading").status_code == 200
    full = buses[0].http.get(offer["package"]["url"])
    assert full.status_code == 200
    assert buses[0].report(offer, "failed", reason="not enough disk for the new slot",
                           bytes_received=len(full.content)).status_code == 200
    state = srv.admin().get(f"/api/v1/rollouts/{r.json()['id']}").json()["state"]
    assert state == "halted", state
    return r.json()["id"]
