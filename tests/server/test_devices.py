"""Enrollment, authentication, signed offers, artifact permissions, reports and drift over real HTTP."""

from __future__ import annotations

import base64
import hashlib
from pathlib import Path

import pytest

from server.security import canonical_json, verify_envelope
from tests.server.factories import Car, stored_state, wait_for_transfers
from tests.support.live_server import LiveServer, run_live_server

ZOO = Path(__file__).resolve().parents[2] / "models" / "zoo"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory):
    with run_live_server(tmp_path_factory.mktemp("devices")) as srv:
        srv.publish(ZOO / "v1.onnx")
        yield srv


def test_enroll_with_wrong_or_missing_token_is_401_and_stores_nothing(server: LiveServer) -> None:
    before = stored_state(server, audit=True)
    for client in (server.anonymous(), server.device("wrong"), server.admin()):
        r = client.post("/api/v1/devices/enroll", json={"device_id": "intruder", "tags": {}})
        assert r.status_code == 401, r.text
    after = stored_state(server, audit=True)
    assert after["audit_log"] == before["audit_log"] + 3  # each refusal is audited, nothing else is stored
    assert {k: v for k, v in after.items() if k != "audit_log"} == {k: v for k, v in before.items() if k != "audit_log"}


def test_enroll_with_malformed_body_is_422(server: LiveServer) -> None:
    client = server.device(server.enrollment_token)
    assert client.post("/api/v1/devices/enroll", json={"device_id": "../etc/passwd"}).status_code == 422
    assert client.post("/api/v1/devices/enroll", json={"tags": {}}).status_code == 422


def test_enrollment_returns_the_pinned_key_and_reauthorised_reenrollment_rotates_the_token(
        server: LiveServer) -> None:
    first = server.enroll("car-rotate", {"region": "eu"})
    assert base64.b64decode(first["public_key"]) == server.public_key
    assert first["key_id"] == hashlib.sha256(server.public_key).hexdigest()
    second = server.reenroll("car-rotate", {"region": "eu"})
    assert second["device_token"] != first["device_token"]
    old, new = server.device(first["device_token"]), server.device(second["device_token"])
    body = {"line": "road-signs", "current_version": 0}
    assert old.post("/api/v1/device/poll", json=body).status_code == 401
    assert new.post("/api/v1/device/poll", json=body).status_code == 200


def test_poll_without_or_with_wrong_token_is_401(server: LiveServer) -> None:
    before = stored_state(server)
    body = {"line": "road-signs", "current_version": 0}
    for client in (server.anonymous(), server.device("nope"), server.admin()):
        r = client.post("/api/v1/device/poll", json=body)
        assert r.status_code == 401
        assert set(r.json()) == {"error", "detail"}
    assert stored_state(server) == before


def test_offer_is_signed_with_the_enrollment_key_and_names_the_stable_version(server: LiveServer) -> None:
    car = Car(server, "car-signed", {"region": "eu"})
    r = car.http.post("/api/v1/device/poll", json={"line": "road-signs", "current_version": 0})
    envelope = r.json()["offer"]
    assert verify_envelope(envelope, base64.b64decode(car.enrollment["public_key"]))
    signed = envelope["signed"]
    assert signed["type"] == "offer" and signed["device_id"] == "car-signed"
    assert signed["target_version"] == 1 and signed["rollback"] is False and signed["rollout_id"] is None
    assert signed["contract"]["labels"][0] == "stop" and signed["contract"]["input_name"] == "input"
    assert signed["smoke"]["count"] == 3 and len(signed["smoke"]["expected"]) == 3
    assert signed["smoke"]["shape"] == [1, 3, 64, 64]
    tampered = {**envelope, "signed": {**signed, "target_version": 99}}
    assert not verify_envelope(tampered, server.public_key)
    assert canonical_json(signed) == canonical_json(dict(reversed(list(signed.items()))))


def test_smoke_expectations_match_onnxruntime_on_the_decoded_package(server: LiveServer) -> None:
    import numpy as np
    import onnxruntime as ort

    from models import codec
    from models.smoke import golden_inputs

    car = Car(server, "car-smoke")
    offer = car.poll()
    transfers = stored_state(server)["transfers"]
    package = car.http.get(offer["package"]["url"]).content
    wait_for_transfers(server, transfers + 1)
    sess = ort.InferenceSession(codec.unpack(package), providers=["CPUExecutionProvider"])
    smoke = offer["smoke"]
    for x, want in zip(golden_inputs(smoke["seed"], smoke["count"], smoke["shape"]), smoke["expected"], strict=True):
        got = sess.run(None, {smoke["input_name"]: x})[0].reshape(-1)
        assert np.allclose(got, want, atol=smoke["atol"])


def test_repeated_poll_returns_the_same_offer_and_writes_nothing(server: LiveServer) -> None:
    car = Car(server, "car-repeat")
    first = car.poll()
    before = stored_state(server)
    assert car.poll() == first
    assert stored_state(server) == before


def test_device_cannot_fetch_an_artifact_it_was_not_offered(server: LiveServer) -> None:
    offered = Car(server, "car-offered")
    stranger = Car(server, "car-stranger")
    offer = offered.poll()
    before = stored_state(server)
    r = stranger.http.get(offer["package"]["url"])
    assert r.status_code == 403 and r.json()["error"] == "forbidden"
    assert server.anonymous().get(offer["package"]["url"]).status_code == 401
    assert offered.http.get("/api/v1/artifacts/" + "0" * 64).status_code == 404
    assert offered.http.get("/api/v1/artifacts/..%2F..%2Fetc%2Fpasswd").status_code == 404
    assert stored_state(server) == before


def test_unknown_line_is_404(server: LiveServer) -> None:
    car = Car(server, "car-lost")
    r = car.http.post("/api/v1/device/poll", json={"line": "no-such-line", "current_version": 0})
    assert r.status_code == 404


def test_reports_walk_the_state_machine_and_resent_seq_is_idempotent(server: LiveServer) -> None:
    car = Car(server, "car-reports")
    offer = car.poll()
    car.install(offer)
    detail = server.admin().get("/api/v1/devices/car-reports").json()
    assert detail["updates"][0]["state"] == "installed"
    assert detail["reported_version"] == 1
    before = stored_state(server)
    resent = {"seq": car.seq, "target_version": 1, "rollout_id": None, "state": "installed"}
    r = car.http.post("/api/v1/device/reports", json={"reports": [resent]})
    assert r.status_code == 200 and r.json()["accepted"] == [car.seq]
    assert stored_state(server) == before
    assert car.poll() is None  # runs its desired version: nothing to offer


def test_illegal_transition_is_409_and_changes_nothing(server: LiveServer) -> None:
    car = Car(server, "car-illegal")
    offer = car.poll()
    before = stored_state(server)
    r = car.report(offer, "installed")  # offered -> installed skips three states
    assert r.status_code == 409 and r.json()["error"] == "illegal_transition"
    assert stored_state(server) == before
    detail = server.admin().get("/api/v1/devices/car-illegal").json()
    assert detail["updates"][0]["state"] == "offered"


def test_batch_reports_accept_legal_ones_and_reject_illegal_ones_individually(server: LiveServer) -> None:
    car = Car(server, "car-batch")
    car.poll()
    reports = [{"seq": 1, "target_version": 1, "state": "downloading"},
               {"seq": 2, "target_version": 1, "state": "installed"},
               {"seq": 3, "target_version": 1, "state": "downloaded"}]
    r = car.http.post("/api/v1/device/reports", json={"reports": reports})
    assert r.status_code == 200
    assert r.json()["accepted"] == [1, 3]
    assert [x["seq"] for x in r.json()["rejected"]] == [2]


def test_report_for_an_offer_never_made_is_rejected(server: LiveServer) -> None:
    car = Car(server, "car-unoffered")
    before = stored_state(server)
    r = car.http.post("/api/v1/device/reports", json={"reports": [{"seq": 1, "target_version": 7,
                                                                    "state": "downloading"}]})
    assert r.status_code == 404
    assert stored_state(server) == before


def test_drift_is_flagged_when_a_car_reports_installed_but_polls_with_the_old_version(server: LiveServer) -> None:
    car = Car(server, "car-drift")
    offer = car.poll()
    car.install(offer)
    car.poll()
    assert server.admin().get("/api/v1/devices/car-drift").json()["drift"] is False
    car.version, car.model_sha256, car.package_sha256 = 0, None, None  # it silently runs nothing new
    car.poll()
    shown = server.admin().get("/api/v1/devices/car-drift").json()
    assert shown["drift"] is True and "reported installed version 1" in shown["drift_detail"]
    drifting = server.admin().get("/api/v1/devices", params={"drift": "true"}).json()
    assert [d["device_id"] for d in drifting] == ["car-drift"]


def test_inventory_lists_tags_and_last_seen(server: LiveServer) -> None:
    car = Car(server, "car-inventory", {"region": "us", "network": "lte"})
    car.poll()
    listed = server.admin().get("/api/v1/devices", params={"tag": "region=us"}).json()
    assert [d["device_id"] for d in listed] == ["car-inventory"]
    assert listed[0]["tags"] == {"region": "us", "network": "lte"} and listed[0]["last_seen_at"]
    assert server.device(car.enrollment["device_token"]).get("/api/v1/devices").status_code == 401
    assert server.admin().get("/api/v1/devices/ghost").status_code == 404


def test_operator_sets_a_device_poll_interval_and_tags(server: LiveServer) -> None:
    car = Car(server, "car-interval", {"region": "eu"})
    assert server.anonymous().patch("/api/v1/devices/car-interval", json={"poll_interval_s": 5}).status_code == 401
    r = server.admin().patch("/api/v1/devices/car-interval", json={"poll_interval_s": 300, "tags": {"region": "us"}})
    assert r.status_code == 200 and r.json()["poll_interval_s"] == 300 and r.json()["tags"] == {"region": "us"}
    answer = car.http.post("/api/v1/device/poll", json={"line": "road-signs", "current_version": 0}).json()
    assert answer["poll_interval_s"] == 300
    assert server.admin().patch("/api/v1/devices/car-interval", json={"poll_interval_s": 0}).status_code == 422
    assert server.admin().patch("/api/v1/devices/ghost", json={"poll_interval_s": 10}).status_code == 404
    audit = server.admin().get("/api/v1/audit").json()
    assert audit[0]["action"] == "device.update" and audit[0]["detail"]["device_id"] == "car-interval"


def test_concurrent_polls_of_one_device_create_one_offer_row(server: LiveServer) -> None:
    import threading

    car = Car(server, "car-twice")
    before = stored_state(server)["device_updates"]
    barrier = threading.Barrier(4)
    offers: list[dict] = []

    def poll() -> None:
        barrier.wait()
        offers.append(car.poll())

    threads = [threading.Thread(target=poll) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(offers) == 4 and all(o["target_version"] == 1 for o in offers)
    assert stored_state(server)["device_updates"] == before + 1
