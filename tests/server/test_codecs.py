"""Publishing with the lossy codecs: the fidelity gate, small deltas, and on-demand deltas made once."""

from __future__ import annotations

import hashlib
import threading
from pathlib import Path

from models import codec
from tests.server.factories import Car, stored_state
from tests.support.live_server import LiveServer

ZOO = Path(__file__).resolve().parents[2] / "models" / "zoo"


def test_fidelity_gate_refusal_is_422_and_stores_nothing(live_server: LiveServer) -> None:
    before = stored_state(live_server)
    r = live_server.admin().post("/api/v1/lines/road-signs/versions",
                                 files={"file": ("m.onnx", (ZOO / "v1.onnx").read_bytes()),
                                        "probe": ("probe.npz", (ZOO / "probe.npz").read_bytes())},
                                 data={"codecs": "int8", "min_agreement": "1.0"})
    assert r.status_code == 422 and r.json()["error"] == "fidelity_gate"
    assert "int8" in r.json()["detail"] and "256 calibration images" in r.json()["detail"]
    assert stored_state(live_server) == before  # not even the line was created
    assert live_server.admin().get("/api/v1/lines").json() == []


def test_lossy_codec_packages_are_small_and_their_deltas_smaller(live_server: LiveServer) -> None:
    # int8 stands for the lossy codecs here: it packs in a fraction of a second ("deep" takes seconds per
    # version and is measured by the codec's own tests and bench/codec.py)
    v1 = live_server.publish(ZOO / "v1.onnx", codecs="int8", probe=ZOO / "probe.npz", min_agreement=0.9)
    v2 = live_server.publish(ZOO / "v2.onnx", codecs="int8")  # gated on the line's images, kept from v1
    source = (ZOO / "v2.onnx").stat().st_size
    p1, p2 = v1["packages"]["int8"], v2["packages"]["int8"]
    assert p2["bytes"] <= 0.3 * source
    assert p2["fidelity"]["status"] == "measured" and 0.9 <= p2["fidelity"]["top1_agreement"] <= 1.0
    assert p2["delta_from_previous"] < 0.1 * p2["bytes"]
    car = Car(live_server, "lossy-car")
    car.version, car.model_sha256, car.package_sha256 = 1, p1["model_sha256"], p1["sha256"]
    r = live_server.admin().post("/api/v1/rollouts", json={"line": "road-signs", "version": 2})
    assert r.status_code == 201 and r.json()["codec"] == "int8"
    offer = car.poll()
    assert offer["codec"] == "int8" and offer["delta"]["size"] == p2["delta_from_previous"]
    got = car.http.get(offer["delta"]["url"]).content
    base = live_server.admin().get(f"/api/v1/artifacts/{p1['sha256']}").content
    rebuilt = codec.patch(base, got)
    assert hashlib.sha256(rebuilt).hexdigest() == p2["sha256"]


def test_on_demand_delta_from_an_old_base_is_made_once_under_concurrent_polls(live_server: LiveServer) -> None:
    v1 = live_server.publish(ZOO / "v1.onnx")
    live_server.publish(ZOO / "v2.onnx")
    live_server.publish(ZOO / "v3.onnx")
    live_server.admin().post("/api/v1/rollouts", json={"line": "road-signs", "version": 3})
    pkg = v1["packages"]["lossless"]
    cars = [Car(live_server, f"old-{i}") for i in range(6)]
    for car in cars:
        car.version, car.model_sha256, car.package_sha256 = 1, pkg["model_sha256"], pkg["sha256"]
    deltas_before = stored_state(live_server)["deltas"]
    offers: list[dict] = []
    barrier = threading.Barrier(len(cars))

    def poll(car: Car) -> None:
        barrier.wait()
        offers.append(car.poll())

    threads = [threading.Thread(target=poll, args=(c,)) for c in cars]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(offers) == len(cars) and all(o["target_version"] == 3 for o in offers)
    assert len({o["delta"]["sha256"] for o in offers}) == 1  # v1 -> v3 was not precomputed: made on demand
    assert offers[0]["delta"]["base_package_sha256"] == pkg["sha256"]
    assert stored_state(live_server)["deltas"] == deltas_before + 1  # once, not six times


def test_publish_precomputes_deltas_from_the_versions_the_fleet_runs(live_server: LiveServer) -> None:
    v1 = live_server.publish(ZOO / "v1.onnx")
    live_server.publish(ZOO / "v2.onnx")
    car = Car(live_server, "fleet-car")
    pkg = v1["packages"]["lossless"]
    car.version, car.model_sha256, car.package_sha256 = 1, pkg["model_sha256"], pkg["sha256"]
    assert car.poll() is None  # it runs the stable v1; now the server knows the fleet runs v1
    deltas = stored_state(live_server)["deltas"]
    v3 = live_server.publish(ZOO / "v3.onnx")
    assert stored_state(live_server)["deltas"] == deltas + 2  # v2 -> v3 (predecessor) and v1 -> v3 (fleet)
    live_server.admin().post("/api/v1/rollouts", json={"line": "road-signs", "version": 3})
    offer = car.poll()
    assert offer["delta"]["base_package_sha256"] == pkg["sha256"]
    assert stored_state(live_server)["deltas"] == deltas + 2  # nothing made at poll time
    assert offer["package"]["sha256"] == v3["packages"]["lossless"]["sha256"]
