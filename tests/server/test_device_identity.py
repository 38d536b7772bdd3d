"""Device identity (issue 15, finding 2): one car cannot take another's id; keys, proofs, scoped tokens,
revocation, audit, enrolment rate limits, and rollouts that count only installs the server saw evidence of.

Real server, real HTTP, real SQLite (or PostgreSQL with DATABASE_URL); cars speak the protocol with httpx and
sign with their own Ed25519 keys (``tests/support/device_keys.py``).
"""

from __future__ import annotations

import itertools
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.server.factories import Car, create_rollout, show_rollout, stored_state
from tests.support.device_keys import DeviceKey
from tests.support.live_server import LiveServer, run_live_server

ZOO = Path(__file__).resolve().parents[2] / "models" / "zoo"
POLL = {"line": "road-signs", "current_version": 0}
_ids = itertools.count(1)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory):
    with run_live_server(tmp_path_factory.mktemp("identity")) as srv:
        srv.publish(ZOO / "v1.onnx")
        yield srv


def _id(name: str) -> str:
    return f"{name}-{next(_ids)}"


def _enroll(server: LiveServer, device_id: str, key: DeviceKey | None, token: str | None = None,
            tags: dict[str, str] | None = None, proof: dict[str, Any] | None = None) -> httpx.Response:
    body: dict[str, Any] = {"device_id": device_id, "tags": tags or {}}
    if key is not None:
        body["public_key"] = key.public_b64
    if proof is not None:
        body["proof"] = proof
    client = server.device(token) if token else server.anonymous()
    return client.post("/api/v1/devices/enroll", json=body)


def _device(server: LiveServer, device_id: str) -> dict[str, Any]:
    r = server.admin().get(f"/api/v1/devices/{device_id}")
    assert r.status_code == 200, r.text
    return r.json()


def _audit(server: LiveServer, device_id: str) -> list[dict[str, Any]]:
    rows = server.admin().get("/api/v1/audit", params={"limit": 10000}).json()
    return [r for r in reversed(rows) if r["detail"].get("device_id") == device_id]


def test_takeover_of_an_enrolled_id_is_refused_and_changes_nothing(server: LiveServer) -> None:
    car_id, real = _id("car-victim"), DeviceKey()
    r = _enroll(server, car_id, real, server.enrollment_token, {"region": "eu"})
    assert r.status_code == 201, r.text
    token = r.json()["device_token"]
    assert server.admin().patch(f"/api/v1/devices/{car_id}", json={"tags": {"region": "eu", "ring": "canary"}}
                                ).status_code == 200
    before = {k: v for k, v in stored_state(server).items() if k != "audit_log"}
    for impostor in (DeviceKey(), real, None):  # another key, the same public key (no proof), no key at all
        r = _enroll(server, car_id, impostor, server.enrollment_token, {"region": "us"})
        assert r.status_code == 409, r.text
        assert r.json()["error"] == "device_exists" and "reauthorize" in r.json()["detail"]
    assert {k: v for k, v in stored_state(server).items() if k != "audit_log"} == before
    assert server.device(token).post("/api/v1/device/poll", json=POLL).status_code == 200  # the real car carries on
    assert _device(server, car_id)["tags"] == {"region": "eu", "ring": "canary"}
    refused = [a for a in _audit(server, car_id) if a["action"] == "device.enroll" and
               a["detail"]["outcome"] == "refused"]
    assert len(refused) == 3


def test_reenrolment_by_key_proof_rotates_the_token_without_the_enrolment_token_and_replay_is_refused(
        server: LiveServer) -> None:
    car_id, old_key, new_key = _id("car-proof"), DeviceKey(), DeviceKey()
    first = _enroll(server, car_id, old_key, server.enrollment_token, {"region": "eu"})
    assert first.status_code == 201, first.text
    proof = old_key.proof(car_id, new_key.public_b64)
    r = _enroll(server, car_id, new_key, None, {"region": "us"}, proof)  # no enrolment token: the key is the credential
    assert r.status_code == 201, r.text
    assert server.device(first.json()["device_token"]).post("/api/v1/device/poll", json=POLL).status_code == 401
    assert server.device(r.json()["device_token"]).post("/api/v1/device/poll", json=POLL).status_code == 200
    assert _device(server, car_id)["tags"] == {"region": "eu"}  # a re-enrolment does not rewrite tags
    keep = new_key.proof(car_id, new_key.public_b64)  # rotate the token, keep the key
    assert _enroll(server, car_id, new_key, None, {}, keep).status_code == 201
    replay = _enroll(server, car_id, new_key, None, {}, keep)
    assert replay.status_code == 401 and "newer" in replay.json()["detail"]
    assert _enroll(server, car_id, old_key, None, {}, proof).status_code == 401  # the replaced key proves nothing
    too_old = new_key.proof(car_id, new_key.public_b64, int(time.time() * 1000) - 6 * 60 * 1000)
    r = _enroll(server, car_id, new_key, None, {}, too_old)
    assert r.status_code == 401 and "clock" in r.json()["detail"]
    forged = {**new_key.proof(car_id, new_key.public_b64), "signature": DeviceKey().proof(car_id, "x")["signature"]}
    assert _enroll(server, car_id, new_key, None, {}, forged).status_code == 401
    outcomes = [a["detail"]["outcome"] for a in _audit(server, car_id) if a["action"] == "device.enroll"]
    assert outcomes.count("proof") == 2 and outcomes.count("refused") == 4 and outcomes[0] == "created"


def test_preauthorised_reenrolment_replaces_the_key_once(server: LiveServer) -> None:
    car_id, lost, new_key = _id("car-lost-key"), DeviceKey(), DeviceKey()
    assert _enroll(server, car_id, lost, server.enrollment_token, {"region": "eu"}).status_code == 201
    r = server.admin().post(f"/api/v1/devices/{car_id}/reauthorize", json={"valid_s": 600})
    assert r.status_code == 200, r.text
    assert _enroll(server, car_id, new_key, None, {}).status_code == 401  # still needs an enrolment token
    r = _enroll(server, car_id, new_key, server.enrollment_token, {"region": "us"})
    assert r.status_code == 201, r.text
    assert _device(server, car_id)["tags"] == {"region": "eu"}
    assert _enroll(server, car_id, DeviceKey(), server.enrollment_token).status_code == 409  # only once
    proof = new_key.proof(car_id, new_key.public_b64)  # the new key is the registered one now
    assert _enroll(server, car_id, new_key, None, {}, proof).status_code == 201
    assert server.admin().post("/api/v1/devices/nobody/reauthorize", json={}).status_code == 404
    assert server.anonymous().post(f"/api/v1/devices/{car_id}/reauthorize", json={}).status_code == 401
    actions = [(a["action"], a["detail"].get("outcome")) for a in _audit(server, car_id)]
    assert ("device.reauthorize", "ok") in actions and ("device.enroll", "reauthorized") in actions


def test_scoped_tokens_limit_uses_expire_are_revoked_and_force_their_tags(server: LiveServer) -> None:
    admin = server.admin()
    assert server.anonymous().post("/api/v1/enrollment-tokens", json={"name": "x"}).status_code == 401
    assert admin.post("/api/v1/enrollment-tokens", json={"name": "x", "max_uses": 0}).status_code == 422
    r = admin.post("/api/v1/enrollment-tokens", json={"name": "depot-7", "max_uses": 2, "tags": {"ring": "depot"}})
    assert r.status_code == 201, r.text
    scoped = r.json()
    a, b, c = _id("depot-a"), _id("depot-b"), _id("depot-c")
    assert _enroll(server, a, DeviceKey(), scoped["token"], {"ring": "prod", "region": "eu"}).status_code == 201
    assert _enroll(server, b, DeviceKey(), scoped["token"]).status_code == 201
    r = _enroll(server, c, DeviceKey(), scoped["token"])
    assert r.status_code == 401 and "used" in r.json()["detail"]
    assert _device(server, a)["tags"] == {"ring": "depot", "region": "eu"}  # the token's tags win
    assert _enroll(server, a, DeviceKey(), scoped["token"]).status_code in (401, 409)  # never a takeover
    listed = {t["id"]: t for t in admin.get("/api/v1/enrollment-tokens").json()}
    assert listed[scoped["id"]]["uses"] == 2 and "token" not in listed[scoped["id"]]

    short = admin.post("/api/v1/enrollment-tokens", json={"name": "short", "expires_in_s": 1}).json()
    time.sleep(1.2)
    r = _enroll(server, _id("late"), DeviceKey(), short["token"])
    assert r.status_code == 401 and "expired" in r.json()["detail"]

    revoked = admin.post("/api/v1/enrollment-tokens", json={"name": "leaked"}).json()
    assert admin.post(f"/api/v1/enrollment-tokens/{revoked['id']}/revoke").status_code == 200
    r = _enroll(server, _id("leak"), DeviceKey(), revoked["token"])
    assert r.status_code == 401 and "revoked" in r.json()["detail"]
    assert admin.post("/api/v1/enrollment-tokens/999999/revoke").status_code == 404
    rows = server.admin().get("/api/v1/audit", params={"limit": 10000}).json()
    assert {"token.create", "token.revoke"} <= {r["action"] for r in rows}


def test_revoked_device_is_refused_at_once_everywhere_until_reauthorised(server: LiveServer) -> None:
    car_id, key = _id("car-stolen"), DeviceKey()
    r = _enroll(server, car_id, key, server.enrollment_token)
    token = r.json()["device_token"]
    http = server.device(token)
    offer = http.post("/api/v1/device/poll", json=POLL).json()["offer"]["signed"]
    assert http.post("/api/v1/device/poll", json=POLL).status_code == 200  # now answered from the poll cache
    assert server.admin().post(f"/api/v1/devices/{car_id}/revoke").status_code == 200
    assert http.post("/api/v1/device/poll", json=POLL).status_code == 401  # the very next poll
    assert http.get(offer["package"]["url"]).status_code == 401
    report = {"seq": 1, "rollout_id": offer["rollout_id"], "target_version": 1, "state": "downloading"}
    assert http.post("/api/v1/device/reports", json={"reports": [report]}).status_code == 401
    proof = key.proof(car_id, key.public_b64)
    assert _enroll(server, car_id, key, None, {}, proof).status_code == 401  # its key proves nothing any more
    assert _enroll(server, car_id, key, server.enrollment_token).status_code == 409
    assert _device(server, car_id)["revoked_at"] is not None
    assert server.admin().post(f"/api/v1/devices/{car_id}/reauthorize", json={}).status_code == 200
    back = _enroll(server, car_id, DeviceKey(), server.enrollment_token)
    assert back.status_code == 201, back.text
    assert server.device(back.json()["device_token"]).post("/api/v1/device/poll", json=POLL).status_code == 200
    assert _device(server, car_id)["revoked_at"] is None
    actions = [a["action"] for a in _audit(server, car_id)]
    assert "device.revoke" in actions


def test_decommissioned_device_leaves_the_inventory_and_the_rollout_counts(server: LiveServer) -> None:
    line = _id("decom-line")
    v1 = server.publish(ZOO / "v1.onnx", line=line)
    server.publish(ZOO / "v2.onnx", line=line)
    cars = []
    for i in range(3):
        car = Car(server, f"{line}-car-{i}")
        car.version, car.model_sha256 = 1, v1["packages"]["lossless"]["model_sha256"]
        assert car.poll(line) is None
        cars.append(car)
    r = create_rollout(server, line=line, version=2)
    assert show_rollout(server, r["id"])["stages"][0]["assigned"] == 3
    gone = cars[0].device_id
    assert server.admin().post(f"/api/v1/devices/{gone}/decommission").status_code == 200
    r2 = cars[0].http.post("/api/v1/device/poll", json={"line": line, "current_version": 1})
    assert r2.status_code == 401
    listed = {d["device_id"] for d in server.admin().get("/api/v1/devices").json()}
    assert gone not in listed and cars[1].device_id in listed
    deadline = time.monotonic() + 10  # rollout membership is cached for a few seconds
    while show_rollout(server, r["id"])["stages"][0]["assigned"] != 2:
        assert time.monotonic() < deadline, show_rollout(server, r["id"])
        time.sleep(0.2)
    assert _device(server, gone)["decommissioned_at"] is not None
    assert "device.decommission" in [a["action"] for a in _audit(server, gone)]


def test_phantom_canaries_reporting_installed_without_evidence_do_not_advance_the_stage(
        server: LiveServer) -> None:
    line = _id("phantom-line")
    v1 = server.publish(ZOO / "v1.onnx", line=line)
    server.publish(ZOO / "v2.onnx", line=line)

    def fleet(prefix: str, n: int, signs: bool) -> list[Car]:
        out = []
        for i in range(n):
            car = Car(server, f"{line}-{prefix}-{i:02d}", {"ring": "canary"}, signs=signs)
            car.version, car.model_sha256 = 1, v1["packages"]["lossless"]["model_sha256"]
            assert car.poll(line) is None
            out.append(car)
        return out

    phantoms, genuine = fleet("phantom", 20, signs=False), fleet("real", 2, signs=True)
    r = create_rollout(server, line=line, version=2, selector={"ring": "canary"},
                       stages=[{"percent": 100, "success_threshold_pct": 30}])
    for car in phantoms:
        car.install(car.poll(line), download=False)  # "installed", never downloaded a byte, unsigned
    shown = show_rollout(server, r["id"])
    assert shown["state"] == "running", shown
    assert shown["stages"][0]["counts"]["installed"] == 20
    assert shown["stages"][0]["counts"]["installed_unverified"] == 20
    for car in genuine:  # signed reports by their registered keys count
        car.install(car.poll(line), download=False)
    shown = show_rollout(server, r["id"])
    assert shown["stages"][0]["counts"]["installed_unverified"] == 20 and shown["state"] == "running"


def test_an_unsigned_install_counts_once_the_server_saw_the_whole_download(server: LiveServer) -> None:
    line = _id("evidence-line")
    v1 = server.publish(ZOO / "v1.onnx", line=line)
    server.publish(ZOO / "v2.onnx", line=line)
    cars = []
    for i in range(2):
        car = Car(server, f"{line}-car-{i}", signs=False)
        car.version, car.model_sha256 = 1, v1["packages"]["lossless"]["model_sha256"]
        assert car.poll(line) is None
        cars.append(car)
    r = create_rollout(server, line=line, version=2, stages=[{"percent": 100, "success_threshold_pct": 100}])
    for car in cars:
        car.install(car.poll(line), download=True)
    deadline = time.monotonic() + 10
    while show_rollout(server, r["id"])["state"] != "completed":
        assert time.monotonic() < deadline, show_rollout(server, r["id"])
        time.sleep(0.2)


def test_a_report_with_a_bad_signature_is_refused_and_changes_nothing(server: LiveServer) -> None:
    car = Car(server, _id("car-forger"))
    offer = car.poll()
    assert offer is not None
    before = stored_state(server)
    body = {"seq": 1, "rollout_id": offer["rollout_id"], "target_version": offer["target_version"],
            "state": "downloading", "signature": DeviceKey().sign({"seq": 1})}
    r = car.http.post("/api/v1/device/reports", json={"reports": [body]})
    assert r.status_code == 401 and "signature" in r.json()["detail"]
    assert stored_state(server) == before


def test_enrolment_is_rate_limited_per_client_address(live_server_factory: Any) -> None:
    srv = live_server_factory(enroll_burst=3, enroll_rate_per_s=0.01)
    statuses = [_enroll(srv, _id("burst"), DeviceKey(), "wrong-token").status_code for _ in range(3)]
    assert statuses == [401, 401, 401]
    r = _enroll(srv, _id("burst"), DeviceKey(), srv.enrollment_token)
    assert r.status_code == 429, r.text
    assert int(r.headers["Retry-After"]) >= 1 and r.json()["error"] == "rate_limited"
    assert stored_state(srv)["devices"] == 0


def test_a_device_enrolled_before_keys_existed_may_sign_its_reports_and_they_count_as_unsigned(
        server: LiveServer) -> None:
    car_id = _id("car-legacy")
    http = server.device(server.enroll(car_id)["device_token"])  # no public_key: as enrolled before issue 15
    offer = http.post("/api/v1/device/poll", json=POLL).json()["offer"]["signed"]
    report = DeviceKey().signed_report({"seq": 1, "rollout_id": offer["rollout_id"],
                                        "target_version": offer["target_version"], "state": "downloading"})
    r = http.post("/api/v1/device/reports", json={"reports": [report]})
    assert r.status_code == 200 and r.json()["accepted"] == [1], r.text
    assert _device(server, car_id)["public_key"] is None
