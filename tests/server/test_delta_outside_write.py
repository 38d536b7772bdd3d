"""An on-demand transfer delta is made outside the write transaction (issue 15, finding 6).

On SQLite the registry has one write slot.  A poll whose offer needs a delta nobody has made yet used to
compute it (materialize both packages, diff, entropy-code) inside its write transaction, so every other
write (another car's enrolment, reports) waited for the codec.  These tests time a real on-demand delta
and another car's enrolment made while it is being computed.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path

import httpx

from tests.support.live_server import LiveServer

ZOO = Path(__file__).resolve().parents[2] / "models" / "zoo"


def test_another_cars_enrolment_is_not_held_up_by_an_on_demand_delta(
        live_server_factory: Callable[..., LiveServer]) -> None:
    srv = live_server_factory(fleet_delta_bases=0, default_codecs="lossless")  # v1 -> v3 is made on demand
    v1 = srv.publish(ZOO / "v1.onnx")
    srv.publish(ZOO / "v2.onnx")
    srv.publish(ZOO / "v3.onnx")
    r = srv.admin().post("/api/v1/rollouts", json={"line": "road-signs", "version": 3})
    assert r.status_code == 201, r.text
    car = srv.device(srv.enroll("car-old")["device_token"])
    poll = {"line": "road-signs", "current_version": 1, "current_model_sha256": v1["packages"]["lossless"]["model_sha256"],
            "current_package_sha256": v1["packages"]["lossless"]["sha256"]}
    timings: dict[str, float] = {}

    def slow_poll() -> None:
        start = time.perf_counter()
        answer = car.post("/api/v1/device/poll", json=poll)
        timings["poll"] = time.perf_counter() - start
        assert answer.status_code == 200 and answer.json()["offer"]["signed"]["delta"] is not None, answer.text

    poller = threading.Thread(target=slow_poll)
    poller.start()
    time.sleep(0.15)  # the poll is now computing the delta
    enrol_latencies = []
    with httpx.Client(base_url=srv.url, headers={"Authorization": f"Bearer {srv.enrollment_token}"},
                      timeout=60) as fleet:
        for i in range(3):
            start = time.perf_counter()
            assert fleet.post("/api/v1/devices/enroll", json={"device_id": f"car-new-{i}"}).status_code == 201
            enrol_latencies.append(time.perf_counter() - start)
    poller.join()
    assert timings["poll"] > 0.3, f"the delta took {timings['poll']:.2f} s: too fast to show anything"
    assert max(enrol_latencies) < timings["poll"] / 4, (
        f"enrolments took {[round(t, 3) for t in enrol_latencies]} s while a {timings['poll']:.2f} s delta was made")
